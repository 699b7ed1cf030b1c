"""Upload sessions live on disk: they survive a restart and continue on any worker. Bodies stream: a
large push never sits in the server's memory."""

from __future__ import annotations

import hashlib
import json
import os

import httpx
import pytest

from tests.support import sha256, start_server


def test_session_survives_a_restart(tmp_path):
    root = str(tmp_path / "data")
    data = os.urandom(300_000)
    server = start_server(root, str(tmp_path / "a.log"))
    try:
        location = httpx.post(f"{server.url}/v2/restart/me/blobs/uploads/").headers["Location"]
        r = httpx.patch(f"{server.url}{location}", content=data[:100_000], headers={"Content-Range": "0-99999"})
        assert r.status_code == 202
    finally:
        server.stop()
    server = start_server(root, str(tmp_path / "b.log"))
    try:
        r = httpx.get(f"{server.url}{location}")
        assert r.status_code == 204 and r.headers["Range"] == "0-99999"
        r = httpx.patch(f"{server.url}{location}", content=data[100_000:], headers={"Content-Range": "100000-299999"})
        assert r.status_code == 202
        r = httpx.put(f"{server.url}{location}", params={"digest": sha256(data)})
        assert r.status_code == 201, r.text
        assert httpx.get(f"{server.url}/v2/restart/me/blobs/{sha256(data)}").content == data
    finally:
        server.stop()


def test_chunks_of_one_upload_on_different_workers(tmp_path):
    server = start_server(str(tmp_path / "data"), str(tmp_path / "log"), REGISTRY_WORKERS="2")
    try:
        uploads = []
        for i in range(12):
            data = os.urandom(50_000 + i)
            # a fresh connection per request, so the kernel spreads them over the workers
            location = httpx.post(f"{server.url}/v2/multi/worker/blobs/uploads/").headers["Location"]
            for start in range(0, len(data), 10_000):
                chunk = data[start:start + 10_000]
                r = httpx.patch(f"{server.url}{location}", content=chunk,
                                headers={"Content-Range": f"{start}-{start + len(chunk) - 1}"})
                assert r.status_code == 202, r.text
                location = r.headers["Location"]
            r = httpx.put(f"{server.url}{location}", params={"digest": sha256(data)})
            assert r.status_code == 201, r.text
            assert httpx.get(f"{server.url}/v2/multi/worker/blobs/{sha256(data)}").content == data
            uploads.append(location.rsplit("/", 1)[1])
        pids_per_upload = {}
        for line in server.log().splitlines():
            if '"myregistry.access"' not in line:
                continue
            entry = json.loads(line)
            for upload in uploads:
                if upload in entry["path"]:
                    pids_per_upload.setdefault(upload, set()).add(entry["pid"])
        crossed = [u for u, pids in pids_per_upload.items() if len(pids) > 1]
        assert crossed, "no upload had its requests served by more than one worker"
    finally:
        server.stop()


def _peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.parametrize("how", ["patch-streamed", "monolithic-post", "put-body"])
def test_large_blob_streams_through(tmp_path, how):
    """A 256 MiB blob pushed and pulled while the server's peak memory stays far below it."""
    size, block = 256 * 1024 * 1024, os.urandom(1024 * 1024)
    digest = hashlib.sha256()
    for _ in range(size // len(block)):
        digest.update(block)
    expected = "sha256:" + digest.hexdigest()

    def body():
        for _ in range(size // len(block)):
            yield block
    server = start_server(str(tmp_path / "data"), str(tmp_path / "log"))
    try:
        with httpx.Client(base_url=server.url, timeout=120) as c:
            repo = "big/blob"
            if how == "monolithic-post":
                r = c.post(f"/v2/{repo}/blobs/uploads/", params={"digest": expected}, content=body())
            else:
                location = c.post(f"/v2/{repo}/blobs/uploads/").headers["Location"]
                if how == "patch-streamed":
                    location = c.patch(location, content=body()).headers["Location"]
                    r = c.put(location, params={"digest": expected})
                else:
                    r = c.put(location, params={"digest": expected}, content=body())
            assert r.status_code == 201, r.text
            pulled = hashlib.sha256()
            with c.stream("GET", f"/v2/{repo}/blobs/{expected}") as r:
                assert r.status_code == 200 and int(r.headers["Content-Length"]) == size
                for chunk in r.iter_bytes():
                    pulled.update(chunk)
            assert "sha256:" + pulled.hexdigest() == expected
        peak = _peak_rss_mb(server.process.pid)
        print(f"peak RSS {peak:.0f} MB")
        assert peak < 150, f"server peaked at {peak:.0f} MB for a 256 MiB blob"
    finally:
        server.stop()
