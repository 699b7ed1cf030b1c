from __future__ import annotations

from ..digest import Digest
from ..errors import BlobUnknown
from ..names import RepositoryName
from ..ports import BlobStore, Clock, Locks, RepositoryStore


class StatBlob:
    """The size of a blob this repository holds. Blobs of other repositories are unknown here.

    With `touch` (a HEAD: a pusher asking whether it may skip an upload) the blob and its link count as
    used now, so the collector leaves them alone while that push finishes. A blob and link used within
    the last half of the grace period are left as they are: the collector keeps them for at least
    another half grace (30 minutes by default) whatever happens, and this HEAD costs two stats instead
    of two locks and two writes. The collector only deletes what it re-checked as old under its
    exclusive lock, and times only move forward under the shared one, so a fresh time seen here without
    the lock cannot belong to something being deleted."""

    def __init__(self, blobs: BlobStore, repos: RepositoryStore, locks: Locks, clock: Clock,
                 grace_seconds: float) -> None:
        self.blobs, self.repos, self.locks, self.clock = blobs, repos, locks, clock
        self.fresh_for = grace_seconds / 2

    async def __call__(self, repo: RepositoryName, digest: Digest, touch: bool = False) -> int:
        if not touch:
            return await self._size(repo, digest)
        if self.fresh_for > 0:
            linked = await self.repos.blob_link_time(repo, digest)
            info = await self.blobs.info(digest) if linked is not None else None
            if linked is not None and info is not None and min(linked, info.last_used) >= self.clock() - self.fresh_for:
                return info.size
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
