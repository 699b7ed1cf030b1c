from __future__ import annotations

from ..ports import RepositoryStore


class RefreshCatalog:
    """Reconcile the repository store's catalog index (if it keeps one) with what it holds: at start,
    so the first catalog request finds it ready, and after a collection."""

    def __init__(self, repos: RepositoryStore) -> None:
        self.repos = repos

    async def __call__(self) -> None:
        await self.repos.refresh_catalog()
