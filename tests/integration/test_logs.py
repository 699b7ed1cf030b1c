"""Ordinary traffic logs no WARNING or ERROR, and every response's headers are sane: an operator reads the
log for what went wrong, so what went right must not be there."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time

import httpx
import orjson
import pytest

from tests.support import (
    OCI_MANIFEST,
    REPO_ROOT,
    free_port,
    make_image,
    sha256,
    start_server,
    stop_process_group,
    wait_for_answer,
)


def test_ordinary_traffic_logs_no_warning_or_error(tmp_path):
    server = start_server(str(tmp_path / "data"), str(tmp_path / "server.log"), REGISTRY_FSYNC="false")
    responses: list[httpx.Response] = []
    try:
        with httpx.Client(base_url=server.url, timeout=30, event_hooks={"response": [responses.append]}) as c:
            image = make_image("logs", layers=3)
            config, first, second, third = image.config, *image.layers
            r = c.post("/v2/app/blobs/uploads/", params={"digest": sha256(config)}, content=config)
            assert r.status_code == 201
            # A chunked upload with a status check between chunks, as Docker and containerd do.
            start = c.post("/v2/app/blobs/uploads/")
            location = start.headers["Location"]
            assert c.patch(location, content=first[:100], headers={"Content-Range": "0-99"}).status_code == 202
            assert c.get(location).status_code == 204
            assert c.patch(location, content=first[100:]).status_code == 202
            assert c.put(location, params={"digest": sha256(first)}).status_code == 201
            # PUT with the last chunk, then a monolithic one.
            location = c.post("/v2/app/blobs/uploads/").headers["Location"]
            assert c.put(location, params={"digest": sha256(second)}, content=second).status_code == 201
            assert c.post("/v2/app/blobs/uploads/", params={"digest": sha256(third)}, content=third).status_code == 201
            assert c.put("/v2/app/manifests/v1", content=image.manifest,
                         headers={"Content-Type": OCI_MANIFEST}).status_code == 201
            # Docker's second push to another repository: HEAD, then mounts with an empty body.
            for blob in image.blobs():
                assert c.head(f"/v2/other/blobs/{sha256(blob)}").status_code == 404
                r = c.post("/v2/other/blobs/uploads/", params={"mount": sha256(blob), "from": "app"},
                           headers={"Content-Length": "0"})
                assert r.status_code == 201
            assert c.put("/v2/other/manifests/v1", content=image.manifest,
                         headers={"Content-Type": OCI_MANIFEST}).status_code == 201
            # Pulls, listings, a cancelled upload, deletions.
            assert c.get("/v2/").status_code == 200
            assert c.head("/v2/app/manifests/v1").status_code == 200
            assert c.get(f"/v2/app/manifests/{image.digest}").content == image.manifest
            for blob in image.blobs():
                assert c.get(f"/v2/app/blobs/{sha256(blob)}").content == blob
            assert c.get(f"/v2/app/blobs/{sha256(first)}", headers={"Range": "bytes=0-9"}).status_code == 206
            assert c.get("/v2/app/tags/list").json()["tags"] == ["v1"]
            assert c.get("/v2/_catalog").json()["repositories"] == ["app", "other"]
            assert c.get(f"/v2/app/referrers/{image.digest}").status_code == 200
            location = c.post("/v2/app/blobs/uploads/").headers["Location"]
            assert c.delete(location).status_code == 204
            assert c.delete("/v2/other/manifests/v1").status_code == 202
            assert c.delete(f"/v2/other/manifests/{image.digest}").status_code == 202
            assert c.delete(f"/v2/other/blobs/{sha256(config)}").status_code == 202
            # Ordinary misses a client makes on purpose are not problems either.
            assert c.get("/v2/app/manifests/missing").status_code == 404
            assert c.head(f"/v2/app/blobs/{sha256(b'nothing')}").status_code == 404
    finally:
        server.stop()
    for r in responses:
        for key, value in r.headers.items():
            assert value != "None", f"{r.request.method} {r.request.url}: header {key}: None"
        if r.status_code == 204:
            assert "content-length" not in r.headers, f"{r.request.method} {r.request.url}: 204 with a length"
    problems = []
    access = []
    for line in server.log().splitlines():
        record = orjson.loads(line)
        if record["level"] in ("WARNING", "ERROR", "CRITICAL"):
            problems.append(line)
        if record.get("message") == "request":
            access.append(record)
    assert problems == []
    mounts = [a for a in access if a["method"] == "POST" and "mount=" in a.get("query", "")]
    assert len(mounts) == len(image.blobs())  # the access line tells a mount from a plain POST


def test_duration_counts_from_the_request_s_first_byte(tmp_path):
    """A request's logged duration starts when its first bytes arrive, not when its handler starts: time
    spent waiting (a slow client's headers here, a busy event loop elsewhere) is part of what the client
    waited for. Idle time between requests on a kept-alive connection is not."""
    import socket
    import time

    server = start_server(str(tmp_path / "data"), str(tmp_path / "server.log"), REGISTRY_WORKERS="1")
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(b"GET /v2/?slow HTTP/1.1\r\n")
            time.sleep(0.6)
            s.sendall(b"Host: x\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
            time.sleep(0.6)  # idle on the same connection
            s.sendall(b"GET /v2/?fast HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
    finally:
        server.stop()
    lines = [orjson.loads(line) for line in server.log().splitlines()]
    durations = {r.get("query"): r["duration_ms"] for r in lines if r.get("message") == "request"}
    assert durations["slow"] >= 500 and durations["fast"] < 300, durations


@pytest.mark.parametrize("storage", ["filesystem", "memory"])
def test_a_request_the_client_abandons_is_logged_as_499_timed_and_not_waited_for(tmp_path, storage):
    """A request whose client hangs up is logged as 499, with the time it lasted: an upload cut in the
    middle of its body, a download cut in the middle of the blob, sent with sendfile (a local file) or
    piece by piece (memory here; TLS does the same), where the hang-up cancels the request and it was
    logged as a 200. Its connection is gone by then, and what it was timed from went with it: the
    line said 0 ms. And nothing waits for the rest of the cut upload's body: its connection's task
    waited for ever (a task and its buffers kept per abandoned upload, until asyncio said at the stop
    that it destroyed it pending)."""
    import socket

    server = start_server(str(tmp_path / "data"), str(tmp_path / "server.log"), REGISTRY_WORKERS="1",
                          REGISTRY_FSYNC="false", REGISTRY_STORAGE=storage)
    linger = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # close with a reset, as a killed client does
    try:
        blob = os.urandom(32 << 20)
        assert httpx.post(f"{server.url}/v2/app/blobs/uploads/", params={"digest": sha256(blob)}, content=blob,
                          timeout=60).status_code == 201
        location = httpx.post(f"{server.url}/v2/app/blobs/uploads/").headers["Location"]
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(f"PATCH {location} HTTP/1.1\r\nHost: x\r\nX-Request-ID: cut-upload\r\n"
                      "Content-Length: 100000\r\n\r\n".encode() + b"x" * 1000)
            time.sleep(0.5)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(f"GET /v2/app/blobs/{sha256(blob)} HTTP/1.1\r\nHost: x\r\nX-Request-ID: cut-download\r\n"
                      "\r\n".encode())
            assert s.recv(100).startswith(b"HTTP/1.1 200")
            time.sleep(0.5)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        deadline = time.monotonic() + 5
        while server.log().count('"status":499') < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        server.stop()
    lines = [orjson.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    durations = {r["request_id"]: r["duration_ms"] for r in lines if r.get("status") == 499}
    assert set(durations) == {"cut-upload", "cut-download"}, durations
    assert all(ms >= 400 for ms in durations.values()), durations
    if storage == "filesystem":  # sent with sendfile: what went out before the hang-up is counted
        cut = next(r for r in lines if r.get("request_id") == "cut-download" and r.get("status") == 499)
        assert 0 < cut["bytes"] < len(blob), cut
    assert "Task was destroyed but it is pending" not in server.log()


def access_lines(chunks: list[bytes]) -> dict[str, list[int]]:
    """The statuses logged for each request id `burst-*`, from the complete lines read so far."""
    seen: dict[str, list[int]] = {}
    for line in b"".join(list(chunks)).split(b"\n")[:-1]:
        record = orjson.loads(line)  # a cut or interleaved line fails here
        if record.get("message") == "request" and record["request_id"].startswith("burst-"):
            seen.setdefault(record["request_id"], []).append(record["status"])
    return seen


def test_every_request_gets_one_whole_access_line_when_workers_answer_in_bursts(tmp_path):
    """Two workers writing to one pipe, 12 clients at once: a busy worker answers several requests in
    one turn of its event loop and writes their lines together at the end of the turn (logs.finish).
    Every request still gets exactly one access line, whole (never cut or interleaved with another
    worker's), with its own status, and the answers carry the id the line has."""
    port = free_port()
    env = {**os.environ, "PORT": str(port), "STORAGE_ROOT": str(tmp_path / "data"), "REGISTRY_HOST": "127.0.0.1",
           "REGISTRY_WORKERS": "2", "REGISTRY_FSYNC": "false", "PYTHONPATH": os.path.join(REPO_ROOT, "src")}
    process = subprocess.Popen([sys.executable, "-m", "entrypoints.cli", "serve"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: process.stdout.read1(65536), b"")))
    reader.start()
    url = f"http://127.0.0.1:{port}"
    expected: dict[str, int] = {}
    try:
        wait_for_answer(f"{url}/health/live", 20, "the server did not start")
        image = make_image("burst", layers=1)
        with httpx.Client(base_url=url, timeout=30) as c:
            for blob in image.blobs():
                r = c.post("/v2/app/blobs/uploads/", params={"digest": sha256(blob)}, content=blob)
                assert r.status_code == 201
            assert c.put("/v2/app/manifests/v1", content=image.manifest,
                         headers={"Content-Type": OCI_MANIFEST}).status_code == 201

        paths = ("/v2/app/manifests/v1", "/v2/app/manifests/nope", f"/v2/app/blobs/{sha256(image.layers[0])}",
                 "/v2/")

        def client(n: int) -> None:
            with httpx.Client(base_url=url, timeout=30) as c:
                for i in range(150):
                    rid = f"burst-{n}-{i}"
                    path = paths[i % 4]
                    r = c.head(path, headers={"X-Request-ID": rid, "Accept": OCI_MANIFEST})
                    assert r.headers["X-Request-ID"] == rid
                    expected[rid] = r.status_code

        threads = [threading.Thread(target=client, args=(n,)) for n in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(expected) == 12 * 150
        # Every line comes out while the server runs (at the end of its turn), not only when it stops.
        deadline = time.monotonic() + 10
        while len(access_lines(chunks)) < len(expected) and time.monotonic() < deadline:
            time.sleep(0.05)
        seen = access_lines(chunks)
    finally:
        stop_process_group(process)
        reader.join(10)
    missing = sorted(set(expected) - set(seen))
    assert missing == [], f"{len(missing)} requests have no access line, e.g. {missing[:5]}"
    assert {rid: statuses for rid, statuses in seen.items() if statuses != [expected[rid]]} == {}


def test_a_download_failing_before_its_first_byte_is_logged_with_the_status_sent(tmp_path):
    """A blob whose file cannot be read (here a directory where the file should be; a blob removed
    under the download, an I/O error) fails after the streamed answer is connected but before any of
    it went out: the client gets the error answer, and the access line and the metrics say so, not the
    200 that never left."""
    server = start_server(str(tmp_path / "data"), str(tmp_path / "server.log"), REGISTRY_WORKERS="1",
                          REGISTRY_FSYNC="false")
    try:
        blob = os.urandom(1000)
        assert httpx.post(f"{server.url}/v2/app/blobs/uploads/", params={"digest": sha256(blob)},
                          content=blob).status_code == 201
        hexdigest = sha256(blob)[7:]
        data = os.path.join(server.storage_root, "docker", "registry", "v2", "blobs", "sha256", hexdigest[:2],
                            hexdigest, "data")
        os.remove(data)
        os.mkdir(data)
        r = httpx.get(f"{server.url}/v2/app/blobs/{sha256(blob)}", headers={"X-Request-ID": "unreadable-blob"})
        assert r.status_code >= 500, r.text
        assert r.headers["X-Request-ID"] == "unreadable-blob"
        assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"
        metrics = httpx.get(f"{server.url}/metrics").text
    finally:
        server.stop()
    lines = [orjson.loads(line) for line in server.log().splitlines()]
    statuses = [a["status"] for a in lines if a.get("message") == "request" and a["request_id"] == "unreadable-blob"]
    assert statuses == [r.status_code]
    blob_gets = re.findall(r'registry_http_requests_total\{method="GET",route="blob",status="(\d+)"\} (\S+)', metrics)
    assert blob_gets == [(str(r.status_code), "1.0")]
