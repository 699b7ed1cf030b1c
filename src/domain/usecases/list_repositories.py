from __future__ import annotations

from collections.abc import Callable

from ..pagination import Page, paginate
from ..ports import RepositoryStore


class ListRepositories:
    def __init__(self, repos: RepositoryStore) -> None:
        self.repos = repos

    async def __call__(self, n: int | None = None, last: str | None = None,
                       visible: Callable[[str], bool] | None = None) -> Page:
        """Repositories holding at least one manifest: emptied ones leave the catalog. With `visible`,
        only those it accepts (the ones the caller may pull)."""
        names = await self.repos.catalog()
        if visible is not None:
            names = [repo for repo in names if visible(repo)]
        return paginate(names, n, last)
