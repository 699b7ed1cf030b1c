"""Slow and idle clients, against a server with short timeouts (2 workers):
- 300 slowloris connections trickling header bytes do not slow other clients down, and are closed
  once REGISTRY_HEADER_TIMEOUT passes;
- idle connections, and ones that stop halfway through their headers, are closed;
- a slow but steady 2 GiB upload (SLOW_UPLOAD_BYTES) completes, though it takes many times the
  timeouts: they bound silence, not duration.
All traffic is to 127.0.0.1 and every loop is bounded in count and time."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import statistics
import time

import httpx
import pytest

from tests.support import start_server

UPLOAD_BYTES = int(os.environ.get("SLOW_UPLOAD_BYTES", str(2 << 30)))
TIMEOUTS = {"REGISTRY_HEADER_TIMEOUT": "2", "REGISTRY_KEEP_ALIVE_TIMEOUT": "1", "REGISTRY_REQUEST_TIMEOUT": "2",
            "REGISTRY_RESPONSE_TIMEOUT": "3", "REGISTRY_WORKERS": "2"}


@pytest.fixture
def slow_server(tmp_path):
    server = start_server(str(tmp_path / "data"), str(tmp_path / "server.log"), **TIMEOUTS)
    yield server
    server.stop()
    shutil.rmtree(tmp_path / "data", ignore_errors=True)


def closed_by_server(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_slowloris_does_not_starve_others_and_is_cut_off(slow_server):
    attackers = []
    for _ in range(300):
        s = socket.create_connection(("127.0.0.1", slow_server.port))
        s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        attackers.append(s)
    latencies = []
    started = time.monotonic()
    with httpx.Client(base_url=slow_server.url, timeout=10) as client:
        while time.monotonic() - started < 1.5:  # header timeout is 2 s: measure while all are alive
            for s in attackers:
                try:
                    s.send(b"a")
                except OSError:
                    pass
            t0 = time.monotonic()
            assert client.get("/v2/").status_code == 200
            latencies.append(time.monotonic() - t0)
            time.sleep(0.05)
    print(f"slowloris: 300 connections; {len(latencies)} requests from a normal client, "
          f"median {statistics.median(latencies) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms")
    assert max(latencies) < 0.5
    time.sleep(1.0)
    closed = sum(closed_by_server(s, within=3) for s in attackers)
    for s in attackers:
        s.close()
    assert closed == len(attackers), f"only {closed} of {len(attackers)} slowloris connections were closed"
    assert "REGISTRY_HEADER_TIMEOUT" in slow_server.log()
    assert httpx.get(f"{slow_server.url}/v2/").status_code == 200


def test_idle_and_stalled_connections_are_closed(slow_server):
    silent = socket.create_connection(("127.0.0.1", slow_server.port))
    after_one = socket.create_connection(("127.0.0.1", slow_server.port))
    after_one.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
    assert after_one.recv(65536).startswith(b"HTTP/1.1 200")
    stalled = socket.create_connection(("127.0.0.1", slow_server.port))
    stalled.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")  # and then nothing
    body_stalled = socket.create_connection(("127.0.0.1", slow_server.port))
    location = httpx.post(f"{slow_server.url}/v2/slow/app/blobs/uploads/").headers["Location"]
    body_stalled.sendall(f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n".encode() + b"x" * 10)
    started = time.monotonic()
    for s in (silent, after_one, stalled, body_stalled):
        assert closed_by_server(s, within=8), "a connection stayed open past its timeout"
        s.close()
    assert time.monotonic() - started < 8


def test_slow_but_steady_upload_completes(slow_server):
    """Pieces of 1 MiB with short pauses, and one pause of 1.5 s (under the 2-3 s silence limits): the
    upload takes several times every timeout and must still complete."""
    piece = os.urandom(1 << 20)
    pieces = UPLOAD_BYTES // len(piece)
    digest = hashlib.sha256()
    for _ in range(pieces):
        digest.update(piece)
    location = httpx.post(f"{slow_server.url}/v2/slow/big/blobs/uploads/").headers["Location"]
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", slow_server.port), timeout=60) as s:
        s.sendall(f"PUT {location}?digest=sha256:{digest.hexdigest()} HTTP/1.1\r\nHost: x\r\n"
                  f"Content-Type: application/octet-stream\r\nContent-Length: {pieces * len(piece)}\r\n\r\n".encode())
        for i in range(pieces):
            s.sendall(piece)
            time.sleep(1.5 if i == pieces // 2 else 6 / pieces)  # paced to take 7.5 s at the least
        answer = s.recv(65536)
    took = time.monotonic() - started
    print(f"slow upload: {pieces} MiB in {took:.1f} s")
    assert answer.startswith(b"HTTP/1.1 201"), answer[:300]
    assert took > 2 * 3  # twice the longest timeout: they bound silence, not duration
    r = httpx.head(f"{slow_server.url}/v2/slow/big/blobs/sha256:{digest.hexdigest()}")
    assert r.status_code == 200 and int(r.headers["Content-Length"]) == pieces * len(piece)
