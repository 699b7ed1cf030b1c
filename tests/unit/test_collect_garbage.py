"""Garbage collection on the memory adapters, with a clock the tests move."""

from __future__ import annotations

import asyncio
import json

import pytest

from domain.digest import Digest
from domain.errors import BlobUploadUnknown, CollectionRunning, ManifestUnknown, NameUnknown
from domain.names import RepositoryName, Tag
from tests.support import OCI_MANIFEST, make_image, make_index, sha256

from .gc_support import GRACE, FakeClock, chunks_of, push, push_raw, readable, registry


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def uc(clock):
    return registry(clock)


def artifact(subject: bytes, kind: str, config: bytes = b"{}") -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": kind,
                       "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256(config),
                                  "size": len(config)}, "layers": [],
                       "subject": {"mediaType": OCI_MANIFEST, "digest": sha256(subject), "size": len(subject)}}
                      ).encode()


def test_deleted_image_goes_shared_and_tagged_stay(uc, clock):
    keep, drop = make_image("keep"), make_image("drop")
    run(push(uc, "app", keep, "v1"))
    run(push(uc, "app", drop, "v2"))
    run(push(uc, "other", drop, "x"))  # drop's blobs are shared with another repository
    gone = make_image("gone")
    run(push(uc, "app", gone, "v3"))
    run(uc.delete_manifest()(RepositoryName("app"), Digest.parse(drop.digest)))
    run(uc.delete_manifest()(RepositoryName("app"), Digest.parse(gone.digest)))
    clock.advance(GRACE + 1)
    report = run(uc.collect_garbage()())
    assert sorted(report.blobs_removed) == sorted({sha256(b) for b in gone.blobs()} | {gone.digest})
    assert report.bytes_freed == sum(len(b) for b in gone.blobs()) + len(gone.manifest)
    assert report.layer_links_removed == len(drop.blobs()) + len(gone.blobs())
    for blob in keep.blobs():
        assert run(readable(uc, "app", blob))
    for blob in drop.blobs():
        assert run(readable(uc, "other", blob)) and not run(readable(uc, "app", blob))


def test_grace_protects_fresh_uploads(uc, clock):
    orphan = b"pushed but no manifest yet"
    run(uc.upload_blob()(RepositoryName("wip"), Digest.parse(sha256(orphan)), chunks_of(orphan)))
    clock.advance(GRACE - 10)
    assert run(uc.collect_garbage()()).blobs_removed == []
    assert run(readable(uc, "wip", orphan))
    clock.advance(20)
    report = run(uc.collect_garbage()())
    assert report.blobs_removed == [sha256(orphan)] and report.repositories_removed == ["wip"]


def test_head_check_protects_an_old_unreferenced_blob(uc, clock):
    image = make_image("reuse")
    run(push(uc, "app", image, "v1"))
    run(uc.delete_manifest()(RepositoryName("app"), Digest.parse(image.digest)))
    clock.advance(GRACE + 1)
    # a pusher HEADs the layers, finds them, and will push a manifest using them
    for blob in image.blobs():
        run(uc.stat_blob()(RepositoryName("app"), Digest.parse(sha256(blob)), touch=True))
    report = run(uc.collect_garbage()())
    assert not set(report.blobs_removed) & {sha256(b) for b in image.blobs()}
    run(push_raw(uc, "app", image.manifest, "again"))


def test_head_within_half_grace_keeps_the_blob_at_least_half_a_grace(uc, clock):
    """A HEAD on a recently used blob does not write (it is fresh), yet the blob is protected for at
    least half a grace after that HEAD; a later HEAD past the half refreshes its time again."""
    blob = b"layer used by a slow push"
    digest = Digest.parse(sha256(blob))
    app = RepositoryName("app")
    run(uc.upload_blob()(app, digest, chunks_of(blob)))
    stamped = run(uc.adapters.blobs().info(digest)).last_used
    clock.advance(GRACE / 2 - 1)
    run(uc.stat_blob()(app, digest, touch=True))  # fresh: no write
    assert run(uc.adapters.blobs().info(digest)).last_used == stamped
    clock.advance(GRACE / 2)  # half a grace after that HEAD: still inside the grace of its last write
    assert run(uc.collect_garbage()()).blobs_removed == []
    run(uc.stat_blob()(app, digest, touch=True))  # older than half a grace: touched again
    assert run(uc.adapters.blobs().info(digest)).last_used == clock()
    clock.advance(GRACE - 1)
    assert run(uc.collect_garbage()()).blobs_removed == []
    clock.advance(2)
    assert run(uc.collect_garbage()()).blobs_removed == [str(digest)]


def test_delete_untagged_keeps_index_children_and_referrers(uc, clock):
    amd, arm, loose = make_image("amd"), make_image("arm", arch="arm64"), make_image("loose")
    run(push(uc, "app", amd))
    run(push(uc, "app", arm))
    index = make_index([(amd, "amd64"), (arm, "arm64")])
    run(push_raw(uc, "app", index, "multi"))
    run(push(uc, "app", loose))  # untagged, no subject
    run(uc.upload_blob()(RepositoryName("app"), Digest.of(b"{}"), chunks_of(b"{}")))
    signature = artifact(index, "application/x.sig")
    run(push_raw(uc, "app", signature))  # untagged referrer of a tagged index
    clock.advance(GRACE + 1)

    plain = run(uc.collect_garbage()(dry_run=True))
    assert plain.manifests_removed == [] and plain.blobs_removed == []
    report = run(uc.collect_garbage()(delete_untagged=True))
    assert report.manifests_removed == [f"app@{loose.digest}"]
    for ref in (amd.digest, arm.digest, sha256(signature)):
        run(uc.get_manifest()(RepositoryName("app"), Digest.parse(ref)))
    referrers = json.loads(run(uc.list_referrers()(RepositoryName("app"), Digest.parse(sha256(index)))))
    assert [m["digest"] for m in referrers["manifests"]] == [sha256(signature)]


def test_artifacts_follow_their_subject(uc, clock):
    image = make_image("subject")
    run(push(uc, "app", image, "v1"))
    run(uc.upload_blob()(RepositoryName("app"), Digest.of(b"{}"), chunks_of(b"{}")))
    sbom = artifact(image.manifest, "application/x.sbom")
    run(push_raw(uc, "app", sbom))
    clock.advance(GRACE + 1)
    assert run(uc.collect_garbage()()).manifests_removed == []
    run(uc.delete_manifest()(RepositoryName("app"), Digest.parse(image.digest)))
    # A plain collection keeps every manifest: the subject may come back (referrers may come first).
    assert run(uc.collect_garbage()()).manifests_removed == []
    report = run(uc.collect_garbage()(delete_untagged=True))
    assert report.manifests_removed == [f"app@{sha256(sbom)}"]
    with pytest.raises((ManifestUnknown, NameUnknown)):  # the emptied repository goes as well
        run(uc.get_manifest()(RepositoryName("app"), Digest.parse(sha256(sbom))))
    assert report.repositories_removed == ["app"]


def test_referrer_pushed_before_its_subject_survives_the_grace(uc, clock):
    image = make_image("later")
    run(uc.upload_blob()(RepositoryName("app"), Digest.of(b"{}"), chunks_of(b"{}")))
    early = artifact(image.manifest, "application/x.sig")
    run(push_raw(uc, "app", early))
    clock.advance(GRACE - 1)
    assert run(uc.collect_garbage()()).manifests_removed == []
    clock.advance(GRACE * 10)  # a plain collection keeps it however long its subject takes
    assert run(uc.collect_garbage()()).manifests_removed == []
    run(push(uc, "app", image, "v1"))
    clock.advance(GRACE + 1)
    assert run(uc.collect_garbage()(delete_untagged=True)).manifests_removed == []


def test_dry_run_changes_nothing_and_predicts(uc, clock):
    a, b = make_image("dry-a"), make_image("dry-b")
    run(push(uc, "app", a, "v1"))
    run(push(uc, "app", b))
    clock.advance(GRACE + 1)
    blobs_before = dict(uc.adapters.blobs().blobs)
    links_before = {k: dict(v) for k, v in uc.adapters.repos().layers.items()}
    dry = run(uc.collect_garbage()(dry_run=True, delete_untagged=True))
    assert dict(uc.adapters.blobs().blobs) == blobs_before
    assert {k: dict(v) for k, v in uc.adapters.repos().layers.items()} == links_before
    real = run(uc.collect_garbage()(delete_untagged=True))
    assert dry.dry_run and not real.dry_run
    for field in ("manifests_removed", "blobs_removed", "layer_links_removed", "bytes_freed"):
        left, right = getattr(dry, field), getattr(real, field)
        assert (sorted(left) if isinstance(left, list) else left) == \
               (sorted(right) if isinstance(right, list) else right), field
    assert real.blobs_removed


def test_one_repository_only(uc, clock):
    a, b = make_image("scope-a"), make_image("scope-b")
    run(push(uc, "one", a, "v1"))
    run(push(uc, "two", b, "v1"))
    for name, image in (("one", a), ("two", b)):
        run(uc.delete_manifest()(RepositoryName(name), Digest.parse(image.digest)))
    clock.advance(GRACE + 1)
    report = run(uc.collect_garbage()(RepositoryName("one")))
    # The repository's blobs go; the bytes of a manifest deleted before the collection no longer
    # belong to any repository, so only a whole-registry collection frees them.
    assert sorted(report.blobs_removed) == sorted(sha256(x) for x in a.blobs())
    assert run(readable(uc, "two", b.layers[0]))
    assert sorted(run(uc.collect_garbage()()).blobs_removed) == sorted(
        {a.digest, b.digest} | {sha256(x) for x in b.blobs()})


def test_second_collector_is_refused(uc):
    async def go():
        async with uc.adapters.locks().collector():
            with pytest.raises(CollectionRunning):
                await uc.collect_garbage()()
    run(go())


def test_idle_uploads_are_purged(uc, clock):
    old = run(uc.start_upload()(RepositoryName("up")))
    clock.advance(23 * 3600)
    fresh = run(uc.start_upload()(RepositoryName("up")))
    clock.advance(2 * 3600)
    assert run(uc.collect_garbage()()).uploads_purged == 1
    assert run(uc.get_upload_status()(RepositoryName("up"), fresh.upload_id)).size == 0
    with pytest.raises(BlobUploadUnknown):
        run(uc.get_upload_status()(RepositoryName("up"), old.upload_id))


def test_deleted_repository_leaves_catalog_and_gc_frees_its_blobs(uc, clock):
    image = make_image("repo-del")
    run(push(uc, "doomed/app", image, "v1"))
    run(push(uc, "kept", make_image("other"), "v1"))
    run(uc.delete_repository()(RepositoryName("doomed/app")))
    assert run(uc.list_repositories()()).items == ["kept"]
    clock.advance(GRACE + 1)
    report = run(uc.collect_garbage()())
    assert sorted(report.blobs_removed) == sorted({sha256(x) for x in image.blobs()} | {image.digest})


def test_emptied_repository_leaves_catalog(uc):
    image = make_image("emptied")
    run(push(uc, "empty/me", image, "v1"))
    assert "empty/me" in run(uc.list_repositories()()).items
    run(uc.delete_manifest()(RepositoryName("empty/me"), Tag("v1")))
    assert "empty/me" in run(uc.list_repositories()()).items  # still has the manifest
    run(uc.delete_manifest()(RepositoryName("empty/me"), Digest.parse(image.digest)))
    assert "empty/me" not in run(uc.list_repositories()()).items
