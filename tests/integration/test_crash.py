"""Crash safety: SIGKILL the whole server (every worker) at random moments while clients push, restart
it, and check that nothing acknowledged was lost or corrupted.

Each round: 4 clients push images to their own repositories (monolithic POST, POST then PUT, chunked
PATCHes), and each also leaves an upload half done. At a random moment the process group gets SIGKILL.
After a restart:
- every manifest whose PUT was answered 201, in any round so far, pulls byte-identical by tag and by
  digest, and so do its config and layers;
- every tag the registry lists names a manifest that pulls whole, acknowledged or not;
- every blob file in the store hashes to the digest it is stored under (nothing half written is
  visible, whatever the kill interrupted);
- every half-done upload either resumes where the server says it stands and completes, or is gone (404).
The seed is printed; CRASH_ROUNDS and CRASH_SEED override the defaults."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import threading
import time

import httpx

from adapters.filesystem import Layout
from tests.support import OCI_MANIFEST, sha256, start_server

ROUNDS = int(os.environ.get("CRASH_ROUNDS", "12"))
CLIENTS = 4


def make_manifest(blobs: list[bytes]) -> bytes:
    config, layers = blobs[0], blobs[1:]
    return json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(config),
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(layer),
                    "size": len(layer)} for layer in layers]}).encode()


def upload(client: httpx.Client, repo: str, blob: bytes, how: int) -> None:
    if how == 0:
        r = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": sha256(blob)}, content=blob)
    else:
        r = client.post(f"/v2/{repo}/blobs/uploads/")
        r.raise_for_status()
        location = r.headers["Location"]
        if how == 2:  # chunked, 3 PATCHes with Content-Range
            step = len(blob) // 3 + 1
            for start in range(0, len(blob), step):
                piece = blob[start:start + step]
                r = client.patch(location, content=piece, headers={
                    "Content-Range": f"{start}-{start + len(piece) - 1}",
                    "Content-Type": "application/octet-stream"})
                r.raise_for_status()
                location = r.headers["Location"]
            blob_rest = b""
        else:
            blob_rest = blob
        r = client.put(location, params={"digest": sha256(blob)}, content=blob_rest)
    assert r.status_code == 201, r.text


class Pusher(threading.Thread):
    def __init__(self, url: str, index: int, round_no: int, rng: random.Random,
                 acked: list[tuple[str, str, bytes, list[bytes]]], open_uploads: list[tuple[str, bytes]]) -> None:
        super().__init__(daemon=True)
        self.url, self.repo, self.round_no = url, f"crash/c{index}", round_no
        self.rng, self.acked, self.open_uploads = random.Random(rng.random()), acked, open_uploads
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            with httpx.Client(base_url=self.url, timeout=30) as client:
                self._half_upload(client)
                for n in range(10_000):
                    blobs = [os.urandom(self.rng.randint(100, 2000))]
                    blobs += [os.urandom(self.rng.randint(1000, 1_500_000)) for _ in range(self.rng.randint(1, 3))]
                    for blob in blobs:
                        upload(client, self.repo, blob, self.rng.randint(0, 2))
                    manifest = make_manifest(blobs)
                    tag = f"r{self.round_no}-{n}"
                    r = client.put(f"/v2/{self.repo}/manifests/{tag}", content=manifest,
                                   headers={"Content-Type": OCI_MANIFEST})
                    assert r.status_code == 201, r.text
                    self.acked.append((self.repo, tag, manifest, blobs))
        except (httpx.TransportError, httpx.HTTPStatusError):
            return  # the server was killed under us: expected
        except BaseException as e:  # anything else is a finding
            self.failure = e

    def _half_upload(self, client: httpx.Client) -> None:
        data = os.urandom(self.rng.randint(200_000, 3_000_000))
        r = client.post(f"/v2/{self.repo}/blobs/uploads/")
        r.raise_for_status()
        location = r.headers["Location"]
        self.open_uploads.append((location, data))
        client.patch(location, content=data[: len(data) // 2],
                     headers={"Content-Type": "application/octet-stream"}).raise_for_status()


def stored_blobs_match_their_digests(root: str, hashed: dict[str, float]) -> int:
    """Hash every blob file not hashed before at its current mtime (so rounds stay linear in cost)."""
    base = os.path.join(root, "docker", "registry", "v2", "blobs")
    count = 0
    for algorithm in os.listdir(base) if os.path.isdir(base) else []:
        for prefix in os.listdir(os.path.join(base, algorithm)):
            for hex_ in os.listdir(os.path.join(base, algorithm, prefix)):
                path = os.path.join(base, algorithm, prefix, hex_, "data")
                try:
                    mtime = os.stat(path).st_mtime
                except FileNotFoundError:
                    continue
                count += 1
                if hashed.get(path) == mtime:
                    continue
                hashed[path] = mtime
                with open(path, "rb") as f:
                    actual = hashlib.new(algorithm, f.read()).hexdigest()
                assert actual == hex_, f"blob {algorithm}:{hex_} holds bytes hashing to {actual}"
    return count


def resume_or_gone(client: httpx.Client, location: str, data: bytes) -> str:
    r = client.get(location)
    if r.status_code == 404:
        return "gone"
    assert r.status_code == 204, r.text
    stored = int(r.headers["Range"].split("-")[1]) + 1 if "Range" in r.headers else 0
    assert stored <= len(data) // 2
    r = client.patch(location, content=data[stored:], headers={
        "Content-Range": f"{stored}-{len(data) - 1}", "Content-Type": "application/octet-stream"})
    assert r.status_code == 202, r.text
    r = client.put(r.headers["Location"], params={"digest": sha256(data)})
    assert r.status_code == 201, r.text
    return "resumed"


def test_sigkill_while_pushing_loses_nothing_acknowledged(tmp_path):
    seed = int(os.environ.get("CRASH_SEED", str(int(time.time()))))
    print(f"crash test seed {seed}, {ROUNDS} rounds")
    rng = random.Random(seed)
    root = str(tmp_path / "data")
    acked: list[tuple[str, str, bytes, list[bytes]]] = []
    outcomes = {"resumed": 0, "gone": 0}
    hashed: dict[str, float] = {}
    for round_no in range(ROUNDS):
        server = start_server(root, str(tmp_path / f"server-{round_no}.log"), REGISTRY_WORKERS="2")
        open_uploads: list[tuple[str, bytes]] = []
        acked_before = len(acked)
        pushers = [Pusher(server.url, i, round_no, rng, acked, open_uploads) for i in range(CLIENTS)]
        for p in pushers:
            p.start()
        time.sleep(rng.uniform(0.2, 2.5))
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait()
        for p in pushers:
            p.join(30)
            assert not p.is_alive()
            assert p.failure is None, f"round {round_no}: {p.failure!r}"

        server = start_server(root, str(tmp_path / f"check-{round_no}.log"), REGISTRY_WORKERS="2")
        try:
            with httpx.Client(base_url=server.url, timeout=30) as client:
                for index, (repo, tag, manifest, blobs) in enumerate(acked):
                    for reference in (tag, sha256(manifest)):
                        r = client.get(f"/v2/{repo}/manifests/{reference}", headers={"Accept": OCI_MANIFEST})
                        assert r.status_code == 200 and r.content == manifest, (round_no, repo, reference)
                    for blob in blobs:  # pulled whole once; the files' bytes are re-hashed below
                        if index >= acked_before:
                            assert client.get(f"/v2/{repo}/blobs/{sha256(blob)}").content == blob
                        r = client.head(f"/v2/{repo}/blobs/{sha256(blob)}")
                        assert r.status_code == 200 and int(r.headers["Content-Length"]) == len(blob)
                for repo in {repo for repo, *_ in acked}:
                    tags = client.get(f"/v2/{repo}/tags/list").json()["tags"] or []
                    for tag in tags:  # acknowledged or not: a visible tag names a whole image
                        r = client.get(f"/v2/{repo}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
                        assert r.status_code == 200 and sha256(r.content) == r.headers["Docker-Content-Digest"]
                        for layer in [json.loads(r.content)["config"], *json.loads(r.content)["layers"]]:
                            assert sha256(client.get(f"/v2/{repo}/blobs/{layer['digest']}").content) == layer["digest"]
                for location, data in open_uploads:
                    outcomes[resume_or_gone(client, location, data)] += 1
        finally:
            server.stop()
        stored = stored_blobs_match_their_digests(root, hashed)
    # The other way out for an interrupted upload: the purge of idle sessions.
    server = start_server(root, str(tmp_path / "purge-1.log"), REGISTRY_WORKERS="2")
    with httpx.Client(base_url=server.url, timeout=30) as client:
        location = client.post("/v2/crash/left/blobs/uploads/").headers["Location"]
        client.patch(location, content=os.urandom(100_000)).raise_for_status()
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait()
    server = start_server(root, str(tmp_path / "purge-2.log"), REGISTRY_UPLOAD_MAX_IDLE_SECONDS="1")
    try:
        time.sleep(1.2)
        with httpx.Client(base_url=server.url, timeout=60) as client:
            report = client.post("/v2/_gc").json()
            assert report["uploads_purged"] >= 1
            assert client.get(location).status_code == 404
            outcomes["gone"] += 1
            debris = report["debris_removed"]
    finally:
        server.stop()
    leftovers = [os.path.join(d, n) for d, dirs, files in os.walk(root)
                 for n, is_dir in [*((x, True) for x in dirs), *((x, False) for x in files)]
                 if Layout.is_debris(d, n, is_dir)]
    assert leftovers == [], f"the purge left these behind: {leftovers[:5]}"
    print(f"{ROUNDS} kills, {len(acked)} acknowledged images verified, {stored} blobs hashed, uploads {outcomes}, "
          f"{debris} leftovers of interrupted writes purged")
    assert len(acked) >= ROUNDS, "too few pushes were acknowledged for the test to mean anything"

