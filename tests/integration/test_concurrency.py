"""Concurrency against one server with 3 workers (so requests land in different processes):
- 20 clients push the same blob at once, by every upload method, and the same image to the same tag;
- a tag moves under concurrent PUTs while readers follow it: every read is a whole manifest;
- 200 clients pull at once, each on its own connection: zero errors, every byte checked.
Bounded in count and time, against 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import os
import threading

import httpx
import pytest

from tests.support import OCI_MANIFEST, make_image, push_image, sha256, start_server


@pytest.fixture(scope="module")
def busy_server(tmp_path_factory):
    base = tmp_path_factory.mktemp("concurrency")
    server = start_server(str(base / "data"), str(base / "server.log"), REGISTRY_WORKERS="3")
    yield server
    server.stop()


def run_together(count: int, work) -> list:
    """Start `count` threads on `work(i)` behind one barrier; return their results (or exceptions)."""
    barrier = threading.Barrier(count)
    results: list = [None] * count

    def one(i: int) -> None:
        barrier.wait(10)
        try:
            results[i] = work(i)
        except Exception as e:  # collected and asserted on below
            results[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
        assert not t.is_alive()
    return results


def test_twenty_clients_push_the_same_blob_at_once(busy_server):
    data = os.urandom(3 << 20)
    digest = sha256(data)

    def push(i: int) -> int:
        with httpx.Client(base_url=busy_server.url, timeout=60) as client:
            repo = "same/blob" if i % 2 else f"same/blob{i}"
            how = i % 3
            if how == 0:
                return client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, content=data).status_code
            location = client.post(f"/v2/{repo}/blobs/uploads/").headers["Location"]
            if how == 2:
                half = len(data) // 2
                r = client.patch(location, content=data[:half], headers={"Content-Range": f"0-{half - 1}"})
                location = r.headers["Location"]
                return client.put(location, params={"digest": digest}, content=data[half:]).status_code
            return client.put(location, params={"digest": digest}, content=data).status_code

    results = run_together(20, push)
    assert results == [201] * 20, results
    with httpx.Client(base_url=busy_server.url, timeout=60) as client:
        for repo in ["same/blob", *[f"same/blob{i}" for i in range(0, 20, 2)]]:
            assert client.get(f"/v2/{repo}/blobs/{digest}").content == data
    blob_dir = os.path.join(busy_server.storage_root, "docker", "registry", "v2", "blobs", "sha256", digest[7:9],
                            digest[7:])
    assert os.listdir(blob_dir) == ["data"]  # one copy, no temporary files left
    uploads = [d for d, dirs, _ in os.walk(busy_server.storage_root) if d.endswith("_uploads") and os.listdir(d)]
    assert uploads == [], f"sessions left behind: {uploads}"

    image = make_image("same-image", layers=2, layer_size=200_000)

    def push_image_to_one_tag(i: int) -> int:
        with httpx.Client(base_url=busy_server.url, timeout=60) as client:
            return push_image(client, "same/image", image, "latest").status_code

    assert run_together(20, push_image_to_one_tag) == [201] * 20
    r = httpx.get(f"{busy_server.url}/v2/same/image/manifests/latest", headers={"Accept": OCI_MANIFEST})
    assert r.content == image.manifest


def test_a_tag_moves_under_concurrent_puts_and_reads(busy_server):
    images = [make_image(f"mover-{i}", layers=1, layer_size=1000) for i in range(8)]
    with httpx.Client(base_url=busy_server.url, timeout=60) as client:
        for image in images:
            push_image(client, "moving/app", image)
    manifests = {sha256(image.manifest): image.manifest for image in images}
    stop = threading.Event()
    reads: list[int] = []

    def reader(i: int) -> str | None:
        with httpx.Client(base_url=busy_server.url, timeout=60) as client:
            while not stop.is_set():
                r = client.get("/v2/moving/app/manifests/moving", headers={"Accept": OCI_MANIFEST})
                if r.status_code == 404:
                    continue  # before the first PUT
                if r.status_code != 200 or sha256(r.content) != r.headers["Docker-Content-Digest"] \
                        or manifests.get(sha256(r.content)) != r.content:
                    return f"bad read: {r.status_code} {r.headers.get('Docker-Content-Digest')}"
                reads.append(1)
        return None

    def writer(i: int) -> list[int]:
        with httpx.Client(base_url=busy_server.url, timeout=60) as client:
            return [client.put("/v2/moving/app/manifests/moving", content=images[i].manifest,
                               headers={"Content-Type": OCI_MANIFEST}).status_code for _ in range(25)]

    readers = [threading.Thread(target=lambda i=i: failures.append(reader(i))) for i in range(4)]
    failures: list[str | None] = []
    for t in readers:
        t.start()
    try:
        results = run_together(8, writer)
    finally:
        stop.set()
        for t in readers:
            t.join(60)
    assert all(r == [201] * 25 for r in results), results
    assert failures == [None] * 4, failures
    assert len(reads) > 50
    r = httpx.get(f"{busy_server.url}/v2/moving/app/manifests/moving", headers={"Accept": OCI_MANIFEST})
    assert r.status_code == 200 and manifests[sha256(r.content)] == r.content
    assert httpx.get(f"{busy_server.url}/v2/moving/app/tags/list").json()["tags"] == ["moving"]


def test_two_hundred_clients_pull_at_once(busy_server):
    image = make_image("popular", layers=3, layer_size=300_000)
    with httpx.Client(base_url=busy_server.url, timeout=60) as client:
        push_image(client, "popular/app", image, "v1")

    async def one_client() -> int:
        async with httpx.AsyncClient(base_url=busy_server.url, timeout=120) as client:
            r = await client.get("/v2/popular/app/manifests/v1", headers={"Accept": OCI_MANIFEST})
            assert r.status_code == 200 and r.content == image.manifest
            for blob in image.blobs():
                r = await client.get(f"/v2/popular/app/blobs/{sha256(blob)}")
                assert r.status_code == 200 and r.content == blob
            return 1 + len(image.blobs())

    async def everyone() -> list:
        return await asyncio.gather(*(one_client() for _ in range(200)), return_exceptions=True)

    results = asyncio.run(everyone())
    errors = [r for r in results if not isinstance(r, int)]
    assert errors == [], errors[:3]
    print(f"200 clients, {sum(results)} requests, 0 errors")
