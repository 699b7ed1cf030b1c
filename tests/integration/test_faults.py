"""Storage faults at every write of a push, through the fault-injecting wrapper, on both adapters.

The disk "fills up" at a write chosen by hypothesis while an image is pushed that also moves a tag.
What must hold: the push fails with StorageFailure and nothing else; reads keep working during the
fault; what was stored before is intact; the moved tag names a whole image (old or new); nothing
visible is partial; and once space returns the same push succeeds."""

from __future__ import annotations

import asyncio
import tempfile

import pytest
from dependency_injector import providers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain.digest import Digest
from domain.errors import BlobUnknown, ManifestUnknown, StorageFailure
from domain.manifest import parse_manifest
from domain.names import RepositoryName, parse_reference
from entrypoints.container import ADAPTERS, Container
from entrypoints.settings import Settings
from tests.faults import Disk, Faulty
from tests.support import OCI_MANIFEST, make_image, sha256

R = RepositoryName("faults/app")


def build(kind: str, root: str) -> tuple[Container, Disk]:
    config = Settings(storage=kind, storage_root=root, fsync=False).model_dump()
    adapters = ADAPTERS[kind]()
    adapters.config.from_dict(config)
    disk = Disk()
    for port in (adapters.blobs, adapters.repos):
        port.override(providers.Object(Faulty(port(), disk)))
    container = Container(adapters=adapters)
    container.config.from_dict(config)
    return container, disk


async def pieces(data: bytes, size: int = 1000):
    for i in range(0, len(data), size):
        yield data[i:i + size]


async def push(uc: Container, image, tags: list[str]) -> None:
    for blob in image.blobs():
        await uc.upload_blob()(R, Digest.parse(sha256(blob)), pieces(blob))
    for tag in tags:
        await uc.put_manifest()(R, parse_reference(tag), image.manifest, OCI_MANIFEST)


async def pull(uc: Container, reference: str) -> bytes:
    """The manifest's bytes after checking that it and every blob it names read back whole."""
    got = await uc.get_manifest()(R, parse_reference(reference))
    assert Digest.of(got.raw) == got.digest
    manifest = parse_manifest(got.raw)
    for blob in (manifest.config, *manifest.layers):
        content = await uc.read_blob()(R, blob.digest)
        data = b"".join([c async for c in content.chunks])
        assert Digest.of(data) == blob.digest and len(data) == blob.size
    return got.raw


async def visible_blobs_are_whole(uc: Container, digests: list[Digest]) -> None:
    for digest in digests:
        try:
            content = await uc.read_blob()(R, digest)
        except BlobUnknown:
            continue
        assert Digest.of(b"".join([c async for c in content.chunks])) == digest


@pytest.mark.parametrize("kind", ["memory", "filesystem"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fail_after=st.integers(0, 45), layers=st.integers(1, 3))
def test_disk_full_at_any_write_of_a_push(kind, fail_after, layers):
    with tempfile.TemporaryDirectory() as root:
        uc, disk = build(kind, root)
        old, new = make_image("old", layers=1), make_image("new", layers=layers, layer_size=3000)

        async def scenario() -> None:
            await push(uc, old, ["stable"])
            disk.fill_up(after_writes=fail_after)
            try:
                await push(uc, new, ["stable", "new"])
                failed = False
            except StorageFailure:
                failed = True
            # During the fault: what was there reads back; the moved tag names a whole image.
            assert await pull(uc, old.digest) == old.manifest
            assert await pull(uc, "stable") in (old.manifest, new.manifest)
            await visible_blobs_are_whole(uc, [Digest.parse(sha256(b)) for b in new.blobs()])
            if failed:
                try:
                    assert await pull(uc, "new") == new.manifest
                except ManifestUnknown:
                    pass
            disk.free_space()
            await push(uc, new, ["stable", "new"])
            assert await pull(uc, "stable") == new.manifest and await pull(uc, "new") == new.manifest
            assert await pull(uc, old.digest) == old.manifest
            assert failed == (disk.failures > 0)

        asyncio.run(scenario())


def test_reads_go_on_while_every_write_fails(tmp_path):
    uc, disk = build("filesystem", str(tmp_path))
    image = make_image("kept")
    asyncio.run(push(uc, image, ["v1"]))
    disk.fill_up()
    with pytest.raises(StorageFailure):
        asyncio.run(push(uc, make_image("lost"), ["v2"]))
    for _ in range(3):
        assert asyncio.run(pull(uc, "v1")) == image.manifest
    assert asyncio.run(uc.list_tags()(R)).items == ["v1"]
    assert disk.failures >= 1
    with pytest.raises(ManifestUnknown):
        asyncio.run(pull(uc, "v2"))
