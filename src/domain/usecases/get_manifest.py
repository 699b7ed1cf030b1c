from __future__ import annotations

from dataclasses import dataclass

from ..digest import Digest
from ..errors import BlobUnknown, ManifestUnknown
from ..manifest import media_type_of
from ..names import Reference, RepositoryName
from ..ports import BlobStore, RepositoryStore
from ._common import require_repository


@dataclass(frozen=True, slots=True)
class StoredManifest:
    raw: bytes
    digest: Digest
    media_type: str


class GetManifest:
    """A manifest by tag or digest, exactly as it was pushed."""

    def __init__(self, blobs: BlobStore, repos: RepositoryStore) -> None:
        self.blobs, self.repos = blobs, repos

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
        try:
            raw = await self.blobs.get(digest)
        except BlobUnknown:
            raise ManifestUnknown(f"manifest {digest} is linked in {repo} but its content is gone",
                                  detail={"digest": str(digest)}) from None
        return StoredManifest(raw, digest, media_type_of(raw))
