from __future__ import annotations

from ..digest import Digest
from ..errors import BlobUnknown
from ..names import RepositoryName
from ..ports import Locks, RepositoryStore


class DeleteBlob:
    """Unlink a blob from a repository. The bytes stay until garbage collection finds nobody uses them.
    Under Locks.exclusive(), like every removal, so it never interleaves with a push's checks."""

    def __init__(self, repos: RepositoryStore, locks: Locks) -> None:
        self.repos, self.locks = repos, locks

    async def __call__(self, repo: RepositoryName, digest: Digest) -> None:
        async with self.locks.exclusive():
            if not await self.repos.unlink_blob(repo, digest):
                raise BlobUnknown(f"blob {digest} is not in repository {repo}", detail={"digest": str(digest)})
