from __future__ import annotations

from typing import NamedTuple

from ..digest import Digest
from ..errors import BlobUnknown, ManifestUnknown
from ..manifest import media_type_of
from ..names import Reference, RepositoryName
from ..ports import BlobStore, RepositoryStore
from ._common import require_repository


class StoredManifest(NamedTuple):  # immutable, and made for every manifest read: cheaper than a frozen dataclass
    raw: bytes
    digest: Digest
    media_type: str


KEPT_BYTES = 4 << 20  # manifest bytes a process (a worker) keeps, at most
KEPT_MANIFEST_MAX = 256 << 10  # larger manifests (rare) are read each time


class GetManifest:
    """A manifest by tag or digest, exactly as it was pushed.

    Every call resolves the reference in the repository store: a tag moved or a manifest deleted (by
    any process) is seen at once. The bytes of a digest never change, so they are kept (with their
    media type, parsed from the JSON), by digest, up to KEPT_BYTES: a kept copy is served only while
    the blob store still holds that digest at that size (one stat instead of a read). What was
    deleted is never served: neither a link that is gone nor bytes that are."""

    def __init__(self, blobs: BlobStore, repos: RepositoryStore) -> None:
        self.blobs, self.repos = blobs, repos
        self._kept: dict[str, tuple[bytes, str]] = {}  # by the digest's hex (a str caches its hash); oldest first
        self._kept_bytes = 0

    async def resolve(self, repo: RepositoryName, reference: Reference) -> Digest:
        if isinstance(reference, Digest):
            digest: Digest | None = reference if await self.repos.manifest_linked(repo, reference) else None
        else:
            digest = await self.repos.resolve_tag(repo, reference)
        if digest is None:
            await require_repository(self.repos, repo)
            raise ManifestUnknown(f"manifest {reference} is not in repository {repo}",
                                  detail={"name": str(repo), "reference": str(reference)})
        return digest

    async def __call__(self, repo: RepositoryName, reference: Reference) -> StoredManifest:
        digest = await self.resolve(repo, reference)
        kept = self._kept.get(digest.hex)
        if kept is not None and await self.blobs.stat(digest) == len(kept[0]):
            return StoredManifest(kept[0], digest, kept[1])
        try:
            raw = await self.blobs.get(digest)
        except BlobUnknown:
            raise ManifestUnknown(f"manifest {digest} is linked in {repo} but its content is gone",
                                  detail={"digest": str(digest)}) from None
        media_type = media_type_of(raw)
        self._keep(digest, raw, media_type)
        return StoredManifest(raw, digest, media_type)

    def _keep(self, digest: Digest, raw: bytes, media_type: str) -> None:
        if len(raw) > KEPT_MANIFEST_MAX:
            return
        old = self._kept.pop(digest.hex, None)
        if old is not None:
            self._kept_bytes -= len(old[0])
        while self._kept and self._kept_bytes + len(raw) > KEPT_BYTES:
            self._kept_bytes -= len(self._kept.pop(next(iter(self._kept)))[0])
        self._kept[digest.hex] = (raw, media_type)
        self._kept_bytes += len(raw)
