"""The collector is fail-safe (issue 9 #4, #12): what it cannot read, it never frees. Stored manifests are
parsed without the limits of a push (a manifest accepted under REGISTRY_MAX_MANIFEST_REFERENCES=20000 is
still understood after a restart with the default), schema 1 manifests that Distribution wrote are
understood, and a manifest that cannot be parsed at all keeps every blob of its repository and is named
in the report. A revision directory a kill left empty does not keep a repository in the catalog.

Data directories are written by hand in Distribution's layout (tests/race_support.py:Tree), which is
both faster than pushing 10,001 blobs and what "a data directory Distribution wrote" means."""

from __future__ import annotations

import gzip
import json
import os

import httpx
import pytest

from tests.race_support import Tree, run_gc
from tests.support import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, layer_tar, make_image, push_image, sha256, start_server

SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"


def served(client: httpx.Client, repo: str, blob: bytes) -> bool:
    r = client.get(f"/v2/{repo}/blobs/{sha256(blob)}")
    return r.status_code == 200 and r.content == blob


# -- (a) a manifest with more references than the default limit -----------------------------------------

LAYERS = 10_001


def write_many_layers(root: str, repo: str) -> tuple[list[bytes], bytes]:
    """10,001 tiny distinct layers and a config, stored and linked in `repo`; and a manifest naming them."""
    tree = Tree(root)
    layers = [f"layer {i}\n".encode() for i in range(LAYERS)]
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    for blob in [config, *layers]:
        tree.link_layer(repo, tree.write_blob(blob))
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": sha256(b), "size": len(b)} for b in layers],
    }).encode()
    return [config, *layers], manifest


def assert_all_kept(root: str, client: httpx.Client, repo: str, blobs: list[bytes], when: str) -> None:
    """Every blob linked in `repo` and stored (checked in the tree: 10,001 GETs would take long), and a
    sample of them served over HTTP."""
    tree = Tree(root)
    missing = [sha256(b) for b in blobs
               if not os.path.exists(tree.layer_link(repo, sha256(b))) or not os.path.exists(tree.blob_data(sha256(b)))]
    assert not missing, f"{when}: {len(missing)} of {len(blobs)} blobs of a tagged manifest are gone"
    for blob in [*blobs[:3], *blobs[::500], blobs[-1]]:
        assert served(client, repo, blob), (when, sha256(blob))


def test_manifest_over_the_default_reference_limit_keeps_its_layers(tmp_path):
    root = str(tmp_path / "data")
    repo = "big/app"
    blobs, manifest = write_many_layers(root, repo)
    stray = Tree(root).write_blob(b"linked in big/app, named by no manifest")
    Tree(root).link_layer(repo, stray)
    server = start_server(root, str(tmp_path / "log1"), REGISTRY_MAX_MANIFEST_REFERENCES="20000",
                          REGISTRY_GC_GRACE_SECONDS="0")
    try:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            r = client.put(f"/v2/{repo}/manifests/v1", content=manifest, headers={"Content-Type": OCI_MANIFEST})
            assert r.status_code == 201, r.text
            report = run_gc(client)
            assert_all_kept(root, client, repo, blobs, "after a collection")
            # Understood, not merely kept as unreadable: a blob it does not name is collected.
            assert report.get("unreadable_manifests") == [] and stray in report["removed"]["blobs"], report
            run_gc(client, delete_untagged="true")
            assert_all_kept(root, client, repo, blobs, "after a delete_untagged collection")
    finally:
        server.stop()
    server = start_server(root, str(tmp_path / "log2"), REGISTRY_GC_GRACE_SECONDS="0")  # default limit
    try:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            assert client.get(f"/v2/{repo}/manifests/v1").content == manifest
            run_gc(client)
            run_gc(client, delete_untagged="true")
            assert_all_kept(root, client, repo, blobs, "after collections with the default limit")
    finally:
        server.stop()


# -- (b) schema 1, as Distribution stored it --------------------------------------------------------------

def schema1_manifest(repo: str, tag: str, layers: list[bytes], signed: bool) -> bytes:
    """A Docker schema 1 manifest: fsLayers newest first (the empty layer twice, as docker build made
    them), v1Compatibility history; signed as a pretty JWS, or the canonical payload Distribution stores."""
    ids = [f"{i:064x}" for i in range(1, len(layers) + 1)]
    doc: dict = {
        "schemaVersion": 1, "name": repo, "tag": tag, "architecture": "amd64",
        "fsLayers": [{"blobSum": sha256(b)} for b in reversed(layers)],
        "history": [{"v1Compatibility": json.dumps({"id": ids[i], **({"parent": ids[i - 1]} if i else {}),
                                                    "created": "2016-01-01T00:00:00Z"})}
                    for i in reversed(range(len(layers)))],
    }
    if signed:
        doc["signatures"] = [{
            "header": {"jwk": {"crv": "P-256", "kid": "ABCD:EFGH:IJKL:MNOP:QRST:UVWX:YZ23:4567:ABCD:EFGH:IJKL:MNOP",
                               "kty": "EC", "x": "a" * 43, "y": "b" * 43}, "alg": "ES256"},
            "signature": "c" * 86,
            "protected": "eyJmb3JtYXRMZW5ndGgiOjEsImZvcm1hdFRhaWwiOiJDbjAiLCJ0aW1lIjoiMjAxNi0wMS0wMVQwMDowMDowMFoifQ",
        }]
    return json.dumps(doc, indent=3).encode()


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "canonical"])
def test_schema1_manifest_keeps_its_layers(tmp_path, signed):
    root = str(tmp_path / "data")
    tree = Tree(root)
    repo = "old/app"
    empty = gzip.compress(b"\0" * 1024, mtime=0)
    layers = [layer_tar({"a.txt": b"first layer"}), empty, layer_tar({"b.txt": b"second layer"}), empty]
    manifest = schema1_manifest(repo, "v1", layers, signed)
    for blob in set(layers):
        tree.link_layer(repo, tree.write_blob(blob))
    digest = tree.write_blob(manifest)
    tree.link_revision(repo, digest)
    tree.set_tag(repo, "v1", digest)
    stray = layer_tar({"c.txt": b"pushed, named by no manifest"})
    tree.link_layer(repo, tree.write_blob(stray))
    server = start_server(root, str(tmp_path / "log"), REGISTRY_GC_GRACE_SECONDS="0")
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            r = client.get(f"/v2/{repo}/manifests/v1", headers={"Accept": SCHEMA1_SIGNED})
            assert r.status_code == 200 and r.content == manifest
            for params in ({}, {"delete_untagged": "true"}):
                report = run_gc(client, **params)
                for blob in layers:
                    assert served(client, repo, blob), (params, sha256(blob))
                assert client.get(f"/v2/{repo}/manifests/v1").content == manifest
                # fsLayers understood, not merely kept as unreadable: a blob it does not name goes.
                assert report.get("unreadable_manifests") == [], report
            assert client.get(f"/v2/{repo}/blobs/{sha256(stray)}").status_code == 404
    finally:
        server.stop()


# -- (c) a manifest that cannot be parsed at all; (#12) a revision directory left empty --------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("failsafe")
    srv = start_server(str(base / "data"), str(base / "server.log"), REGISTRY_GC_GRACE_SECONDS="0")
    yield srv
    srv.stop()


def test_unreadable_manifest_keeps_its_repository_and_is_reported(server):
    tree = Tree(server.storage_root)
    tagged, broken, deleted = make_image("bad-tagged"), make_image("bad-broken"), make_image("bad-deleted")
    elsewhere = make_image("ok-deleted")
    with httpx.Client(base_url=server.url, timeout=60) as client:
        push_image(client, "bad/app", tagged, "v1")
        push_image(client, "bad/app", broken)
        push_image(client, "bad/app", deleted)
        assert client.delete(f"/v2/bad/app/manifests/{deleted.digest}").status_code == 202
        push_image(client, "ok/app", elsewhere)
        assert client.delete(f"/v2/ok/app/manifests/{elsewhere.digest}").status_code == 202
        with open(tree.blob_data(broken.digest), "wb") as f:
            f.write(b"\x00\xff{not json at all" + os.urandom(64))
        for params in ({}, {"delete_untagged": "true"}):
            report = run_gc(client, **params)
            assert report.get("unreadable_manifests") == [f"bad/app@{broken.digest}"], report
            for image in (tagged, broken, deleted):
                for blob in image.blobs():
                    assert served(client, "bad/app", blob), (params, sha256(blob), report)
            assert client.get(f"/v2/bad/app/manifests/{broken.digest}").status_code == 200
            # The collection did collect elsewhere: the deleted image of ok/app went.
            assert client.get(f"/v2/ok/app/blobs/{sha256(elsewhere.layers[0])}").status_code == 404


def test_empty_revision_directory_does_not_keep_a_repository_listed(server):
    """Issue 9 #12: a kill during a manifest PUT left `revisions/sha256/<hex>/` without its link; every
    real manifest is then deleted. After a collection the repository is not in the catalog (an open
    upload session keeps the repository itself from being removed as empty)."""
    tree = Tree(server.storage_root)
    image = make_image("stale")
    with httpx.Client(base_url=server.url, timeout=60) as client:
        push_image(client, "stale/app", image, "v1")
        os.makedirs(tree.revision_dir("stale/app", sha256(b"a manifest whose PUT was killed")))
        assert client.delete(f"/v2/stale/app/manifests/{image.digest}").status_code == 202
        assert client.post("/v2/stale/app/blobs/uploads/").status_code == 202
        run_gc(client)
        catalog = client.get("/v2/_catalog").json()["repositories"]
        assert "stale/app" not in catalog, catalog
