from __future__ import annotations

from ..names import RepositoryName
from ..pagination import Page, paginate
from ..ports import RepositoryStore


class ListRepositories:
    def __init__(self, repos: RepositoryStore) -> None:
        self.repos = repos

    async def __call__(self, n: int | None = None, last: str | None = None) -> Page:
        """Repositories holding at least one manifest: emptied ones leave the catalog."""
        names = [name for name in await self.repos.repositories()
                 if await self.repos.has_manifests(RepositoryName(name))]
        return paginate(names, n, last)
