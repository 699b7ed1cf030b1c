from __future__ import annotations

from ..digest import Digest
from ..names import RepositoryName
from ..ports import BlobStore, Locks, RepositoryStore


class MountBlob:
    """Cross-repository mount (POST ?mount=&from=). Returns the blob's size when mounted, None when the
    mount is refused and the caller should open an ordinary session instead. Without `from`, any stored
    blob can be mounted (OCI 1.1 lets registries do this)."""

    def __init__(self, blobs: BlobStore, repos: RepositoryStore, locks: Locks) -> None:
        self.blobs, self.repos, self.locks = blobs, repos, locks

    async def __call__(self, repo: RepositoryName, digest: Digest, source: RepositoryName | None) -> int | None:
        async with self.locks.shared():
            if source is not None and not await self.repos.blob_linked(source, digest):
                return None
            size = await self.blobs.stat(digest)
            if size is None:
                return None
            await self.blobs.touch(digest)
            await self.repos.link_blob(repo, digest)
            return size
