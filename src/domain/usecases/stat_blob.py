from __future__ import annotations

from ..digest import Digest
from ..errors import BlobUnknown
from ..names import RepositoryName
from ..ports import BlobStore, RepositoryStore


class StatBlob:
    """The size of a blob this repository holds (HEAD). Blobs of other repositories are unknown here."""

    def __init__(self, blobs: BlobStore, repos: RepositoryStore) -> None:
        self.blobs, self.repos = blobs, repos

    async def __call__(self, repo: RepositoryName, digest: Digest) -> int:
        size = await self.blobs.stat(digest) if await self.repos.blob_linked(repo, digest) else None
        if size is None:
            raise BlobUnknown(f"blob {digest} is not in repository {repo}", detail={"digest": str(digest)})
        return size
