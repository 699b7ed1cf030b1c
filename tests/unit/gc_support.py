"""A registry on memory adapters with a clock the test moves."""

from __future__ import annotations

from domain.digest import Digest
from domain.names import RepositoryName, parse_reference
from entrypoints.container import Container, build_container
from entrypoints.settings import Settings
from tests.support import OCI_MANIFEST, Image, sha256

GRACE = 3600.0


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def registry(clock: FakeClock) -> Container:
    return build_container(Settings(storage="memory", gc_grace_seconds=GRACE, upload_max_idle_seconds=24 * 3600),
                           clock=clock)


async def chunks_of(data: bytes):
    yield data


async def push(uc: Container, repo: str, image: Image, reference: str | None = None) -> Digest:
    name = RepositoryName(repo)
    for blob in image.blobs():
        await uc.upload_blob()(name, Digest.parse(sha256(blob)), chunks_of(blob))
    result = await uc.put_manifest()(name, parse_reference(reference or image.digest), image.manifest, OCI_MANIFEST)
    return result.digest


async def push_raw(uc: Container, repo: str, raw: bytes, reference: str | None = None) -> Digest:
    result = await uc.put_manifest()(RepositoryName(repo), parse_reference(reference or sha256(raw)), raw, None)
    return result.digest


async def readable(uc: Container, repo: str, blob: bytes) -> bool:
    try:
        content = await uc.read_blob()(RepositoryName(repo), Digest.parse(sha256(blob)))
    except Exception:
        return False
    return b"".join([c async for c in content.chunks]) == blob
