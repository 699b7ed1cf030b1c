from __future__ import annotations

from dataclasses import dataclass

from ..ports import BlobStore, Clock, RepositoryStore


@dataclass(frozen=True, slots=True)
class PurgeReport:
    uploads: int  # upload sessions dropped
    debris: int  # temporary files and half-made tags left by writes a crash cut short


class PurgeUploads:
    """Drop upload sessions nobody has written to for `max_idle` seconds, and what writes cut short by
    a crash left behind, once it is as old."""

    def __init__(self, blobs: BlobStore, repos: RepositoryStore, clock: Clock, max_idle: float) -> None:
        self.blobs, self.repos, self.clock, self.max_idle = blobs, repos, clock, max_idle

    async def __call__(self, dry_run: bool = False) -> PurgeReport:
        horizon = self.clock() - self.max_idle
        stale = [u async for u in self.blobs.all_uploads() if u.last_modified < horizon]
        if not dry_run:
            for upload in stale:
                await self.blobs.cancel_upload(upload.repo, upload.upload_id)
        debris = await self.blobs.purge_debris(horizon, dry_run) + await self.repos.purge_debris(horizon, dry_run)
        return PurgeReport(len(stale), debris)
