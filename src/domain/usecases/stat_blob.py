from __future__ import annotations

from ..digest import Digest
from ..errors import BlobUnknown
from ..names import RepositoryName
from ..ports import BlobStore, Locks, RepositoryStore


class StatBlob:
    """The size of a blob this repository holds. Blobs of other repositories are unknown here.

    With `touch` (a HEAD: a pusher asking whether it may skip an upload) the blob and its link count as
    used now, so the collector leaves them alone while that push finishes."""

    def __init__(self, blobs: BlobStore, repos: RepositoryStore, locks: Locks) -> None:
        self.blobs, self.repos, self.locks = blobs, repos, locks

    async def __call__(self, repo: RepositoryName, digest: Digest, touch: bool = False) -> int:
        if not touch:
            return await self._size(repo, digest)
        async with self.locks.shared():
            size = await self._size(repo, digest)
            await self.blobs.touch(digest)
            await self.repos.link_blob(repo, digest)
            return size

    async def _size(self, repo: RepositoryName, digest: Digest) -> int:
        size = await self.blobs.stat(digest) if await self.repos.blob_linked(repo, digest) else None
        if size is None:
            raise BlobUnknown(f"blob {digest} is not in repository {repo}", detail={"digest": str(digest)})
        return size
