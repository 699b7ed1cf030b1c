"""Garbage collection and repository deletion over HTTP and the CLI, on the filesystem store."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time

import httpx
import pytest

from tests.support import REPO_ROOT, make_image, push_image, sha256, start_server

from .test_cli import myregistry


def blob_path(root: str, digest: str) -> str:
    hex_ = digest.split(":")[1]
    return os.path.join(root, "docker", "registry", "v2", "blobs", "sha256", hex_[:2], hex_, "data")


def tree(root: str) -> dict[str, tuple[int, str, float]]:
    """Every file under root with its size, content hash and mtime."""
    out = {}
    for directory, _dirs, files in os.walk(root):
        for f in files:
            path = os.path.join(directory, f)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = (os.path.getsize(path), hashlib.sha256(fh.read()).hexdigest(),
                                                    os.stat(path).st_mtime)
    return out


@pytest.fixture
def gc_server(tmp_path):
    server = start_server(str(tmp_path / "data"), str(tmp_path / "log"), REGISTRY_GC_GRACE_SECONDS="0")
    yield server
    server.stop()


def populate(client: httpx.Client):
    keep, drop, untagged = make_image("gc-keep"), make_image("gc-drop"), make_image("gc-untagged")
    push_image(client, "gc/app", keep, "v1")
    push_image(client, "gc/app", drop, "v2")
    push_image(client, "gc/app", untagged)
    assert client.delete(f"/v2/gc/app/manifests/{drop.digest}").status_code == 202
    return keep, drop, untagged


def test_collect_over_http(gc_server):
    root = gc_server.storage_root
    with httpx.Client(base_url=gc_server.url, timeout=60) as client:
        keep, drop, untagged = populate(client)
        r = client.post("/v2/_gc")
        assert r.status_code == 200
        report = r.json()
        assert report["dry_run"] is False and report["manifests_removed"] == 0
        assert sorted(report["removed"]["blobs"]) == sorted({sha256(b) for b in drop.blobs()} | {drop.digest})
        assert report["bytes_freed"] == sum(len(b) for b in drop.blobs()) + len(drop.manifest)
        for blob in drop.blobs():
            assert not os.path.exists(blob_path(root, sha256(blob)))
        r = client.post("/v2/gc/app/_gc", params={"delete_untagged": "true"})
        assert r.json()["removed"]["manifests"] == [f"gc/app@{untagged.digest}"]
        assert client.get(f"/v2/gc/app/manifests/{untagged.digest}").status_code == 404
        for blob in keep.blobs():
            assert client.get(f"/v2/gc/app/blobs/{sha256(blob)}").content == blob
        assert client.post("/v2/BAD/_gc").status_code == 400


def test_dry_run_changes_nothing_and_predicts_the_real_run(gc_server):
    root = gc_server.storage_root
    with httpx.Client(base_url=gc_server.url, timeout=60) as client:
        populate(client)
        before = tree(root)
        dry = client.post("/v2/_gc", params={"dry_run": "1", "delete_untagged": "1"}).json()
        assert tree(root) == before, "a dry run changed the storage"
        real = client.post("/v2/_gc", params={"delete_untagged": "1"}).json()
    assert dry["dry_run"] and not real["dry_run"]
    assert sorted(dry["removed"]["blobs"]) == sorted(real["removed"]["blobs"]) != []
    assert dry["removed"]["manifests"] == real["removed"]["manifests"] != []
    assert (dry["bytes_freed"], dry["layer_links_removed"]) == (real["bytes_freed"], real["layer_links_removed"])


def test_a_second_collector_is_told_one_is_running(gc_server):
    holder = subprocess.Popen([sys.executable, "-c", f"""
import asyncio, sys, time
sys.path.insert(0, {os.path.join(REPO_ROOT, 'src')!r})
from adapters.filesystem import FilesystemLocks, Layout
async def main():
    async with FilesystemLocks(Layout({gc_server.storage_root!r})).collector():
        print("held", flush=True)
        sys.stdin.readline()  # held until the test says so, however slow the machine
asyncio.run(main())
"""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        r = httpx.post(f"{gc_server.url}/v2/_gc")
        assert r.status_code == 429 and r.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
        cli = myregistry("gc", STORAGE_ROOT=gc_server.storage_root)
        assert cli.returncode != 0 and "already running" in cli.stderr
    finally:
        holder.communicate("go\n", timeout=10)
    assert httpx.post(f"{gc_server.url}/v2/_gc").status_code == 200


def test_delete_repository(gc_server):
    with httpx.Client(base_url=gc_server.url, timeout=60) as client:
        shared = make_image("shared")
        push_image(client, "del/me", shared, "v1")
        push_image(client, "del/me/nested", make_image("nested"), "v1")
        push_image(client, "del/other", shared, "v1")
        assert client.delete("/v2/del/me/_repository").status_code == 202
        assert client.get("/v2/del/me/tags/list").status_code == 404
        assert client.delete("/v2/del/me/_repository").status_code == 404
        catalog = client.get("/v2/_catalog").json()["repositories"]
        assert "del/me" not in catalog and {"del/me/nested", "del/other"} <= set(catalog)
        client.post("/v2/_gc")
        for blob in shared.blobs():  # still used by del/other
            assert client.get(f"/v2/del/other/blobs/{sha256(blob)}").content == blob
    result = myregistry("delete-repository", "del/other", STORAGE_ROOT=gc_server.storage_root)
    assert result.returncode == 0, result.stderr
    assert httpx.get(f"{gc_server.url}/v2/del/other/tags/list").status_code == 404


def populated_root(tmp_path):
    """A storage root with history (see populate) and no server running on it; and the dropped image."""
    root = str(tmp_path / "data")
    server = start_server(root, str(tmp_path / "log"))
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            _keep, drop, _ = populate(client)
    finally:
        server.stop()
    return root, drop


def test_cli_gc(tmp_path):
    root, drop = populated_root(tmp_path)
    held = myregistry("gc", "--dry-run", STORAGE_ROOT=root)  # default grace: everything is fresh
    assert held.returncode == 0 and "would remove 0 manifest(s), 0 blob(s)" in held.stdout
    result = myregistry("gc", "--grace", "0", "--json", STORAGE_ROOT=root)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert sorted(report["removed"]["blobs"]) == sorted({sha256(b) for b in drop.blobs()} | {drop.digest})
    summary = myregistry("gc", "--grace", "0", "--delete-untagged", STORAGE_ROOT=root)
    assert "removed 1 manifest(s)" in summary.stdout and "mark:" in summary.stderr


def test_periodic_collection(tmp_path):
    server = start_server(str(tmp_path / "data"), str(tmp_path / "log"), REGISTRY_GC_GRACE_SECONDS="0",
                          REGISTRY_GC_INTERVAL="0.5")
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            _keep, drop, _ = populate(client)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and os.path.exists(blob_path(server.storage_root, sha256(drop.layers[0]))):
            time.sleep(0.2)
        assert not os.path.exists(blob_path(server.storage_root, sha256(drop.layers[0])))
        # The report is logged when the whole run ends, a moment after its sweep removed the blob.
        while time.monotonic() < deadline and '"garbage collection"' not in server.log():
            time.sleep(0.1)
        assert '"garbage collection"' in server.log()
    finally:
        server.stop()


def test_plain_script_runs_the_use_case(tmp_path):
    root, drop = populated_root(tmp_path)
    result = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "examples", "collect_garbage.py"), root],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": os.path.join(REPO_ROOT, "src"),
                                 "REGISTRY_GC_GRACE_SECONDS": "0"})
    assert result.returncode == 0, result.stderr
    assert f"and {len(drop.blobs()) + 1} blobs" in result.stdout


def test_idle_uploads_are_purged_on_their_own_schedule(tmp_path):
    server = start_server(str(tmp_path / "data"), str(tmp_path / "log"), REGISTRY_UPLOAD_MAX_IDLE_SECONDS="1",
                          REGISTRY_UPLOAD_PURGE_INTERVAL="0.5")
    try:
        location = httpx.post(f"{server.url}/v2/idle/blobs/uploads/").headers["Location"]
        assert httpx.get(f"{server.url}{location}").status_code == 204
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and httpx.get(f"{server.url}{location}").status_code == 204:
            time.sleep(0.2)
        assert httpx.get(f"{server.url}{location}").status_code == 404
        while time.monotonic() < deadline and "idle upload session" not in server.log():
            time.sleep(0.1)  # logged when the purge ends, a moment after the session went
        assert "idle upload session" in server.log()
    finally:
        server.stop()
