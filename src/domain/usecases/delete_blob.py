from __future__ import annotations

from ..digest import Digest
from ..errors import BlobUnknown
from ..names import RepositoryName
from ..ports import RepositoryStore


class DeleteBlob:
    """Unlink a blob from a repository. The bytes stay until garbage collection finds nobody uses them."""

    def __init__(self, repos: RepositoryStore) -> None:
        self.repos = repos

    async def __call__(self, repo: RepositoryName, digest: Digest) -> None:
        if not await self.repos.unlink_blob(repo, digest):
            raise BlobUnknown(f"blob {digest} is not in repository {repo}", detail={"digest": str(digest)})
