from __future__ import annotations

from ..pagination import Page, paginate
from ..ports import RepositoryStore


class ListRepositories:
    def __init__(self, repos: RepositoryStore) -> None:
        self.repos = repos

    async def __call__(self, n: int | None = None, last: str | None = None) -> Page:
        """Repositories holding at least one manifest: emptied ones leave the catalog."""
        return paginate(await self.repos.catalog(), n, last)
