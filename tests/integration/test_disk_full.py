"""A real full disk: the registry's storage on a 32 MiB tmpfs, filled up by a push and by a file.

The client gets a 503 with an OCI error that says the disk is full; nothing partial becomes visible;
reads go on; and when space returns, the same pushes succeed. Needs root (mount); required in CI."""

from __future__ import annotations

import os
import subprocess

import httpx
import pytest

from tests.support import IN_CI, OCI_MANIFEST, make_image, push_image, sha256, start_server


@pytest.fixture
def small_disk(tmp_path):
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        message = f"cannot mount a small tmpfs here: {done.stderr.strip()}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield str(mount_point)
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def oci_error(r: httpx.Response) -> str:
    assert r.headers["content-type"].startswith("application/json"), r.text
    return r.json()["errors"][0]["message"]


def test_full_disk_fails_cleanly_and_recovers(small_disk, tmp_path):
    root = os.path.join(small_disk, "data")
    server = start_server(root, str(tmp_path / "server.log"), REGISTRY_WORKERS="2")
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            kept = make_image("kept")
            push_image(client, "disk/app", kept, "v1")

            # 1. A blob larger than the disk: refused with 503, nothing of it visible, space given back.
            big = os.urandom(48 << 20)
            r = client.post("/v2/disk/app/blobs/uploads/")
            location = r.headers["Location"]
            r = client.put(location, params={"digest": sha256(big)}, content=big)
            assert r.status_code == 503 and "disk is full" in oci_error(r)
            assert client.head(f"/v2/disk/app/blobs/{sha256(big)}").status_code == 404
            assert client.get(location).status_code == 404  # the session was dropped with its bytes
            free = os.statvfs(small_disk)
            assert free.f_bavail * free.f_frsize > 24 << 20, "the failed upload's bytes were not freed"

            # 2. The disk filled by something else: a small push fails whole, reads go on.
            filler = os.path.join(small_disk, "filler")
            with open(filler, "wb") as f:
                try:
                    while True:
                        f.write(b"\0" * (1 << 20))
                        f.flush()
                except OSError:
                    pass
            lost = make_image("lost")
            for blob in lost.blobs():
                r = client.post("/v2/disk/app/blobs/uploads/", params={"digest": sha256(blob)}, content=blob)
                assert r.status_code == 503, r.text
                assert "disk is full" in oci_error(r)
                assert client.head(f"/v2/disk/app/blobs/{sha256(blob)}").status_code == 404
            r = client.put("/v2/disk/app/manifests/v1", content=kept.manifest, headers={"Content-Type": OCI_MANIFEST})
            assert r.status_code in (201, 503)  # re-tagging the same manifest may need no new space
            for _ in range(5):
                r = client.get("/v2/disk/app/manifests/v1", headers={"Accept": OCI_MANIFEST})
                assert r.status_code == 200 and r.content == kept.manifest
                for blob in kept.blobs():
                    assert client.get(f"/v2/disk/app/blobs/{sha256(blob)}").content == blob
            assert client.get("/health/live").status_code == 200

            # 3. Space returns: the same pushes succeed and read back whole.
            os.unlink(filler)
            push_image(client, "disk/app", lost, "v2")
            r = client.put(client.post("/v2/disk/app/blobs/uploads/").headers["Location"],
                           params={"digest": sha256(big[: 8 << 20])}, content=big[: 8 << 20])
            assert r.status_code == 201
            assert client.get(f"/v2/disk/app/blobs/{sha256(big[: 8 << 20])}").content == big[: 8 << 20]
            assert client.get("/v2/disk/app/manifests/v2", headers={"Accept": OCI_MANIFEST}).content == lost.manifest
        log = server.log()
        assert "Traceback" not in log and '"status":500' not in log, log[-3000:]
    finally:
        server.stop()
