"""Blob bodies go out with sendfile, for fast and slow clients alike, from the first request on a fresh
connection, and an open download holds no body bytes in the server's memory. Checked from outside:
strace counts the server's sendfile calls and the bytes they sent; /proc gives its memory."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time

import httpx

from tests.support import require_tool, sha256, start_server

SIZE = 64 << 20


def _pids(server) -> list[int]:
    out = subprocess.run(["pgrep", "-g", str(server.process.pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            continue
    return total


class Trace:
    """strace attached to every process of the server, counting sendfile calls and the bytes they sent,
    and the bytes sent with write/writev of 64 KiB or more (a body going out piece by piece)."""

    def __init__(self, pids: list[int], path: str) -> None:
        args = ["strace", "-f", "-qq", "-e", "trace=sendfile,write,writev", "-o", path]
        for pid in pids:
            args += ["-p", str(pid)]
        self.path = path
        self.process = subprocess.Popen(args, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # attached

    def stop(self) -> tuple[int, int, int]:
        time.sleep(0.5)
        self.process.send_signal(signal.SIGINT)
        self.process.wait(10)
        calls = sent = piecewise = 0
        with open(self.path, errors="replace") as f:
            for line in f:
                m = re.search(r"= (\d+)$", line.strip())
                if not m:
                    continue
                if "sendfile" in line:  # "sendfile(" or, split by another thread, "<... sendfile resumed>"
                    calls += 1
                    sent += int(m.group(1))
                elif int(m.group(1)) >= 64 << 10:
                    piecewise += int(m.group(1))
        return calls, sent, piecewise


def _slow_reader(port: int, path: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return s


def test_downloads_use_sendfile_and_hold_no_body_in_memory(tmp_path):
    require_tool("strace")
    server = start_server(str(tmp_path / "data"), str(tmp_path / "server.log"), REGISTRY_FSYNC="false")
    try:
        blob = os.urandom(SIZE)
        digest = sha256(blob)
        path = f"/v2/big/blobs/{digest}"
        with httpx.Client(base_url=server.url, timeout=60) as c:
            assert c.post("/v2/big/blobs/uploads/", params={"digest": digest}, content=blob).status_code == 201
        pids = _pids(server)

        # One fast download on a fresh connection, as every `docker pull` of a layer makes.
        trace = Trace(pids, str(tmp_path / "fast.trace"))
        with httpx.Client(base_url=server.url, timeout=60) as c:
            assert c.get(path).content == blob
        calls, sent, piecewise = trace.stop()
        assert calls >= 1 and sent >= SIZE - (1 << 20), (calls, sent)
        assert piecewise == 0, f"{piecewise} body bytes went out through write()"

        # 40 slow readers, each with the download open and barely read.
        readers = 40
        before = _rss_kib(pids)
        trace = Trace(pids, str(tmp_path / "slow.trace"))
        sockets = [_slow_reader(server.port, path) for _ in range(readers)]
        try:
            for _ in range(5):
                for s in sockets:
                    s.recv(32 << 10)
                time.sleep(0.2)
            during = _rss_kib(pids)
        finally:
            for s in sockets:
                s.close()
        calls, sent, piecewise = trace.stop()
        assert calls >= readers and piecewise == 0, (calls, piecewise)
        # Piece by piece, each open download held about 2 MiB; with sendfile the kernel holds the data.
        assert during - before < readers * 512, f"memory grew by {during - before} KiB for {readers} downloads"
        with httpx.Client(base_url=server.url, timeout=60) as c:  # and the server is still well
            assert c.get(path, headers={"Range": "bytes=0-9"}).content == blob[:10]
    finally:
        server.stop()
