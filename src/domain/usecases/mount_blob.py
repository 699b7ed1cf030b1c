from __future__ import annotations

from collections.abc import Callable

from ..digest import Digest
from ..names import RepositoryName
from ..ports import BlobStore, Locks, RepositoryStore


class MountBlob:
    """Cross-repository mount (POST ?mount=&from=). Returns the blob's size when mounted, None when the
    mount is refused and the caller should open an ordinary session instead. Without `from`, any stored
    blob can be mounted (OCI 1.1 lets registries do this).

    `readable` limits the sources to repositories the caller may pull. A mount from one it may not read
    is refused exactly like a mount of a blob that is not there, so the answer reveals nothing; and a
    mount without `from` is then refused too (it would tell whether the blob is anywhere)."""

    def __init__(self, blobs: BlobStore, repos: RepositoryStore, locks: Locks) -> None:
        self.blobs, self.repos, self.locks = blobs, repos, locks

    async def __call__(self, repo: RepositoryName, digest: Digest, source: RepositoryName | None,
                       readable: Callable[[RepositoryName], bool] | None = None) -> int | None:
        if readable is not None and (source is None or not readable(source)):
            return None
        async with self.locks.shared():
            if source is not None and not await self.repos.blob_linked(source, digest):
                return None
            size = await self.blobs.stat(digest)
            if size is None:
                return None
            await self.blobs.touch(digest)
            await self.repos.link_blob(repo, digest)
            return size
