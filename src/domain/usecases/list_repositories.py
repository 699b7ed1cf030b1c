from __future__ import annotations

from ..pagination import Page, paginate
from ..ports import RepositoryStore


class ListRepositories:
    def __init__(self, repos: RepositoryStore) -> None:
        self.repos = repos

    async def __call__(self, n: int | None = None, last: str | None = None) -> Page:
        return paginate(await self.repos.repositories(), n, last)
