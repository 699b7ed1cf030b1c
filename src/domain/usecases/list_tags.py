from __future__ import annotations

from ..names import RepositoryName
from ..pagination import Page, paginate
from ..ports import RepositoryStore
from ._common import require_repository


class ListTags:
    def __init__(self, repos: RepositoryStore) -> None:
        self.repos = repos

    async def __call__(self, repo: RepositoryName, n: int | None = None, last: str | None = None) -> Page:
        tags = await self.repos.tags(repo)
        if not tags:
            await require_repository(self.repos, repo)
        return paginate(tags, n, last)
