from __future__ import annotations

from ..errors import NameUnknown
from ..names import RepositoryName
from ..ports import Locks, RepositoryStore


class DeleteRepository:
    """Remove a whole repository: manifests, tags, links, upload sessions. Blob bytes other repositories
    use stay; the rest goes at the next garbage collection."""

    def __init__(self, repos: RepositoryStore, locks: Locks) -> None:
        self.repos, self.locks = repos, locks

    async def __call__(self, repo: RepositoryName) -> None:
        async with self.locks.exclusive():
            if not await self.repos.delete_repository(repo):
                raise NameUnknown(f"repository {repo} is not known to this registry", detail={"name": str(repo)})
