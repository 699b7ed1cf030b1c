"""Online collection under load: 20 clients push (the way real clients do: HEAD, then upload what is
missing, manifest last) and pull images with shared layers, and delete some, through two server
workers, while collections run back to back with a short grace. No push may fail, and every image
acknowledged and not deleted must pull byte-identical at the end."""

from __future__ import annotations

import os
import random
import threading
import time

import httpx

from tests.support import OCI_MANIFEST, make_image, sha256, start_server

CLIENTS, ROUNDS, GRACE = 20, 5, 5
SHARED = [os.urandom(20_000) for _ in range(3)]


def push(client: httpx.Client, repo: str, blobs: list[bytes], manifest: bytes, tag: str, style: int) -> None:
    for blob in blobs:
        digest = sha256(blob)
        if client.head(f"/v2/{repo}/blobs/{digest}").status_code == 200:
            continue
        if style == 0:
            r = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, content=blob)
        else:
            location = client.post(f"/v2/{repo}/blobs/uploads/").headers["Location"]
            if style == 1:
                location = client.patch(location, content=blob).headers["Location"]
                r = client.put(location, params={"digest": digest})
            else:
                r = client.put(location, params={"digest": digest}, content=blob)
        assert r.status_code == 201, f"blob upload failed: {r.status_code} {r.text}"
    r = client.put(f"/v2/{repo}/manifests/{tag}", content=manifest, headers={"Content-Type": OCI_MANIFEST})
    assert r.status_code == 201, f"manifest push failed: {r.status_code} {r.text}"


def image_for(client_no: int, round_no: int):
    """An image with one shared layer (from a pool of three) and one of its own."""
    base = make_image(f"stress-{client_no}-{round_no}", layers=1, layer_size=30_000)
    shared = SHARED[(client_no + round_no) % len(SHARED)]
    import json
    doc = json.loads(base.manifest)
    doc["layers"].insert(0, {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                             "digest": sha256(shared), "size": len(shared)})
    manifest = json.dumps(doc).encode()
    return manifest, [base.config, shared, *base.layers]


def pull_matches(client: httpx.Client, repo: str, tag: str, manifest: bytes, blobs: list[bytes]) -> None:
    r = client.get(f"/v2/{repo}/manifests/{tag}")
    assert r.status_code == 200 and r.content == manifest, f"{repo}:{tag} manifest: {r.status_code}"
    for blob in blobs:
        r = client.get(f"/v2/{repo}/blobs/{sha256(blob)}")
        assert r.status_code == 200 and r.content == blob, f"{repo}:{tag} blob {sha256(blob)}: {r.status_code}"


def test_pushes_survive_back_to_back_collections(tmp_path):
    server = start_server(str(tmp_path / "data"), str(tmp_path / "log"), REGISTRY_WORKERS="2",
                          REGISTRY_GC_GRACE_SECONDS=str(GRACE))
    acknowledged: dict[tuple[str, str], tuple[bytes, list[bytes]]] = {}
    errors: list[str] = []
    done = threading.Event()
    collections = {"runs": 0, "busy": 0, "blobs": 0, "manifests": 0}
    lock = threading.Lock()

    def client_loop(k: int) -> None:
        rng = random.Random(k)
        repo = "stress/shared" if k % 2 else f"stress/own-{k}"
        mine: list[tuple[str, str]] = []
        try:
            with httpx.Client(base_url=server.url, timeout=60) as c:
                for r in range(ROUNDS):
                    manifest, blobs = image_for(k, r)
                    tag = f"c{k}-r{r}"
                    push(c, repo, blobs, manifest, tag, style=rng.randrange(3))
                    with lock:
                        acknowledged[(repo, tag)] = (manifest, blobs)
                    pull_matches(c, repo, tag, manifest, blobs)
                    mine.append((repo, tag))
                    if len(mine) > 1 and rng.random() < 0.6:  # delete an older image: garbage appears
                        old = mine.pop(0)
                        old_manifest = acknowledged[old][0]
                        assert c.delete(f"/v2/{old[0]}/manifests/{sha256(old_manifest)}").status_code == 202
                        with lock:
                            # the same manifest bytes are unique per client and round, so nothing else is hit
                            del acknowledged[old]
        except Exception as e:  # noqa: BLE001 - every failure is reported below
            errors.append(f"client {k}: {e!r}")

    def collector_loop() -> None:
        with httpx.Client(base_url=server.url, timeout=120) as c:
            flip = False
            while not done.is_set():
                flip = not flip
                r = c.post("/v2/_gc", params={"delete_untagged": "1" if flip else "0"})
                if r.status_code == 429:
                    collections["busy"] += 1
                    continue
                if r.status_code != 200:
                    errors.append(f"collection: {r.status_code} {r.text[:300]}")
                    return
                report = r.json()
                collections["runs"] += 1
                collections["blobs"] += report["blobs_removed"]
                collections["manifests"] += report["manifests_removed"]

    try:
        threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(CLIENTS)]
        collector = threading.Thread(target=collector_loop)
        collector.start()
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(240)
        # keep collecting past the grace, so deleted images really go while nothing is pushed
        time.sleep(GRACE + 1)
        done.set()
        collector.join(120)
        elapsed = time.monotonic() - started
        assert not errors, "\n".join(errors[:10])
        assert collections["runs"] >= 3 and collections["blobs"] > 0, collections
        with httpx.Client(base_url=server.url, timeout=60) as c:
            final = c.post("/v2/_gc").json()
            for (repo, tag), (manifest, blobs) in acknowledged.items():
                pull_matches(c, repo, tag, manifest, blobs)
        print(f"\nstress: {CLIENTS} clients x {ROUNDS} rounds in {elapsed:.1f} s, {collections['runs']} "
              f"collections removed {collections['blobs']} blobs and {collections['manifests']} manifests, "
              f"{collections['busy']} refused as busy; final run removed {final['blobs_removed']} blobs; "
              f"{len(acknowledged)} images verified")
    finally:
        done.set()
        server.stop()
