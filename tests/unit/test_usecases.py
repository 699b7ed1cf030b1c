"""Use-cases through the composition root with in-memory adapters, driven with primitives."""

import asyncio
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain import errors
from domain.digest import Digest
from domain.names import RepositoryName, Tag, parse_reference
from domain.usecases.read_blob import ByteRange
from entrypoints.container import build_container
from entrypoints.settings import Settings
from tests.support import OCI_MANIFEST, make_image, make_index, sha256


def run(coro):
    return asyncio.run(coro)


async def chunks_of(data: bytes, size: int = 7):
    for i in range(0, len(data), size):
        yield data[i:i + size]


@pytest.fixture
def uc():
    return build_container(Settings(storage="memory", max_manifest_bytes=64 * 1024, max_blob_bytes=1 << 20))


R = RepositoryName("team/app")


async def push(uc, repo, image, tag="latest"):
    for blob in image.blobs():
        await uc.upload_blob()(repo, Digest.parse(sha256(blob)), chunks_of(blob))
    return await uc.put_manifest()(repo, parse_reference(tag), image.manifest, OCI_MANIFEST)


def test_push_then_pull_exact_bytes(uc):
    image = make_image("a")
    result = run(push(uc, R, image))
    assert str(result.digest) == image.digest
    got = run(uc.get_manifest()(R, Tag("latest")))
    assert got.raw == image.manifest and got.media_type == OCI_MANIFEST

    async def read_all():
        content = await uc.read_blob()(R, Digest.parse(sha256(image.layers[0])))
        return b"".join([c async for c in content.chunks])
    assert run(read_all()) == image.layers[0]


@settings(max_examples=30, deadline=None)
@given(st.binary(min_size=0, max_size=3000), st.lists(st.integers(1, 3000), max_size=6))
def test_chunked_upload_any_split_gives_the_blob(data, cuts):
    uc = build_container(Settings(storage="memory"))
    points = sorted({0, len(data), *[c % (len(data) + 1) for c in cuts]})

    async def go():
        session = await uc.start_upload()(R)
        for a, b in zip(points, points[1:]):
            status = await uc.append_upload()(R, session.upload_id, chunks_of(data[a:b]), a)
            assert status.size == b
        await uc.complete_upload()(R, session.upload_id, Digest.of(data))
        return await uc.stat_blob()(R, Digest.of(data))
    assert run(go()) == len(data)


def test_out_of_order_chunk_is_refused(uc):
    async def go():
        session = await uc.start_upload()(R)
        await uc.append_upload()(R, session.upload_id, chunks_of(b"abc"), 0)
        with pytest.raises(errors.RangeNotSatisfiable):
            await uc.append_upload()(R, session.upload_id, chunks_of(b"def"), 5)
        return (await uc.get_upload_status()(R, session.upload_id)).size
    assert run(go()) == 3


def test_wrong_digest_stores_nothing(uc):
    async def go():
        session = await uc.start_upload()(R)
        with pytest.raises(errors.DigestInvalid):
            await uc.complete_upload()(R, session.upload_id, Digest.of(b"other"), chunks_of(b"data"))
        with pytest.raises(errors.BlobUnknown):
            await uc.stat_blob()(R, Digest.of(b"data"))
        with pytest.raises(errors.BlobUploadUnknown):
            await uc.get_upload_status()(R, session.upload_id)
    run(go())


def test_hash_survives_a_worker_switch(uc):
    """A session continued where its running hash is unknown is re-hashed from the stored bytes."""
    async def go():
        session = await uc.start_upload()(R)
        await uc.append_upload()(R, session.upload_id, chunks_of(b"first-"))
        uc.hashers().drop(R, session.upload_id)
        await uc.append_upload()(R, session.upload_id, chunks_of(b"second"))
        await uc.complete_upload()(R, session.upload_id, Digest.of(b"first-second"))
        return await uc.stat_blob()(R, Digest.of(b"first-second"))
    assert run(go()) == 12


def test_blob_size_limit(uc):
    async def go():
        with pytest.raises(errors.TooLarge):
            await uc.upload_blob()(R, Digest.of(b"x" * (2 << 20)), chunks_of(b"x" * (2 << 20), 65536))
        assert await uc.adapters.blobs().count_uploads(R) == 0
    run(go())


def test_manifest_requires_its_blobs(uc):
    image = make_image("b")
    run(uc.upload_blob()(R, Digest.parse(sha256(image.config)), chunks_of(image.config)))
    with pytest.raises(errors.ManifestBlobUnknown) as e:
        run(uc.put_manifest()(R, Tag("x"), image.manifest, OCI_MANIFEST))
    assert e.value.detail["digest"] == sha256(image.layers[0])


def test_blobs_of_other_repositories_are_unknown(uc):
    image = make_image("c")
    run(push(uc, R, image))
    with pytest.raises(errors.BlobUnknown):
        run(uc.stat_blob()(RepositoryName("other"), Digest.parse(sha256(image.config))))


def test_mount_links_and_refuses(uc):
    image = make_image("d")
    run(push(uc, R, image))
    digest = Digest.parse(sha256(image.config))
    assert run(uc.mount_blob()(RepositoryName("elsewhere"), digest, RepositoryName("nothere"))) is None
    assert run(uc.mount_blob()(RepositoryName("elsewhere"), digest, R)) == len(image.config)
    assert run(uc.mount_blob()(RepositoryName("third"), digest, None)) == len(image.config)
    assert run(uc.stat_blob()(RepositoryName("third"), digest)) == len(image.config)


def test_put_by_digest_must_match(uc):
    image = make_image("e")
    run(push(uc, R, image))
    with pytest.raises(errors.DigestInvalid):
        run(uc.put_manifest()(R, Digest.of(b"nope"), image.manifest, OCI_MANIFEST))
    sha512 = Digest.of(image.manifest, "sha512")
    assert run(uc.put_manifest()(R, sha512, image.manifest, OCI_MANIFEST)).digest == sha512
    assert run(uc.get_manifest()(R, sha512)).raw == image.manifest


def test_manifest_size_limit(uc):
    with pytest.raises(errors.TooLarge):
        run(uc.put_manifest()(R, Tag("big"), b" " * (64 * 1024 + 1), OCI_MANIFEST))


def test_index_needs_children_and_delete_semantics(uc):
    amd, arm = make_image("f1"), make_image("f2", arch="arm64")
    index = make_index([(amd, "amd64"), (arm, "arm64")])
    run(push(uc, R, amd, amd.digest))
    with pytest.raises(errors.ManifestBlobUnknown):
        run(uc.put_manifest()(R, Tag("multi"), index, None))
    run(push(uc, R, arm, arm.digest))
    digest = run(uc.put_manifest()(R, Tag("multi"), index, None)).digest
    run(uc.put_manifest()(R, Tag("also"), index, None))
    # DELETE by tag removes only the tag
    run(uc.delete_manifest()(R, Tag("also")))
    assert run(uc.get_manifest()(R, digest)).raw == index
    run(uc.put_manifest()(R, Tag("also"), index, None))
    # DELETE by digest removes the manifest and every tag on it
    run(uc.delete_manifest()(R, digest))
    assert run(uc.list_tags()(R)).items == []
    for ref in (Tag("multi"), Tag("also"), digest):
        with pytest.raises(errors.ManifestUnknown):
            run(uc.get_manifest()(R, ref))


def test_unknown_repository(uc):
    with pytest.raises(errors.NameUnknown):
        run(uc.list_tags()(RepositoryName("ghost")))
    with pytest.raises(errors.NameUnknown):
        run(uc.get_manifest()(RepositoryName("ghost"), Tag("latest")))


def test_referrers(uc):
    image = make_image("g")
    subject = run(push(uc, R, image)).digest
    config = b"{}"
    run(uc.upload_blob()(R, Digest.of(config), chunks_of(config)))

    def artifact(kind):
        return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": kind,
                           "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                                      "digest": str(Digest.of(config)), "size": 2}, "layers": [],
                           "subject": {"mediaType": OCI_MANIFEST, "digest": str(subject), "size": len(image.manifest)},
                           "annotations": {"kind": kind}}).encode()
    sig, sbom = artifact("application/x.sig"), artifact("application/x.sbom")
    for raw in (sig, sbom):
        assert run(uc.put_manifest()(R, Digest.of(raw), raw, OCI_MANIFEST)).subject == subject
    listed = json.loads(run(uc.list_referrers()(R, subject)))
    assert sorted(m["digest"] for m in listed["manifests"]) == sorted([sha256(sig), sha256(sbom)])
    only = json.loads(run(uc.list_referrers()(R, subject, "application/x.sig")))
    assert [m["digest"] for m in only["manifests"]] == [sha256(sig)]
    assert only["manifests"][0]["annotations"] == {"kind": "application/x.sig"}
    run(uc.delete_manifest()(R, Digest.of(sig)))
    assert [m["digest"] for m in json.loads(run(uc.list_referrers()(R, subject)))["manifests"]] == [sha256(sbom)]
    assert json.loads(run(uc.list_referrers()(R, Digest.of(b"nothing"))))["manifests"] == []


def test_catalog_pages(uc):
    image = make_image("h", layers=1)
    names = ["b", "a/x", "a", "c/d/e"]
    for n in names:
        run(push(uc, RepositoryName(n), image))
    assert run(uc.list_repositories()()).items == sorted(names)
    page = run(uc.list_repositories()(2, None))
    assert page.items == ["a", "a/x"] and page.next_last == "a/x"
    assert run(uc.list_repositories()(2, "a/x")).items == ["b", "c/d/e"]


def test_range_resolution():
    assert ByteRange(0, None).resolve(10) == (0, 9)
    assert ByteRange(2, 4).resolve(10) == (2, 4)
    assert ByteRange(2, 100).resolve(10) == (2, 9)
    assert ByteRange(None, 3).resolve(10) == (7, 9)
    for bad in (ByteRange(10, None), ByteRange(5, 2), ByteRange(None, 0)):
        with pytest.raises(errors.RangeNotSatisfiable):
            bad.resolve(10)


def test_upload_sessions_per_repository_are_limited():
    uc = build_container(Settings(storage="memory", max_uploads_per_repository=3))
    repo, other = RepositoryName("busy/app"), RepositoryName("quiet/app")
    sessions = [run(uc.start_upload()(repo)) for _ in range(3)]
    with pytest.raises(errors.TooManyUploads) as refused:
        run(uc.start_upload()(repo))
    assert "REGISTRY_MAX_UPLOADS_PER_REPOSITORY" in refused.value.message
    run(uc.start_upload()(other))  # the limit is per repository
    run(uc.cancel_upload()(repo, sessions[0].upload_id))
    run(uc.start_upload()(repo))  # room again
    unlimited = build_container(Settings(storage="memory", max_uploads_per_repository=0))
    for _ in range(50):
        run(unlimited.start_upload()(repo))
