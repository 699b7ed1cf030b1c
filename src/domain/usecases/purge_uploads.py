from __future__ import annotations

from dataclasses import dataclass

from ..errors import UploadBusy
from ..ports import BlobStore, Clock, Locks, RepositoryStore


@dataclass(frozen=True, slots=True)
class PurgeReport:
    uploads: int  # upload sessions dropped
    debris: int  # temporary files and half-made tags left by writes a crash cut short


class PurgeUploads:
    """Drop upload sessions nobody has written to for `max_idle` seconds, and what writes cut short by
    a crash left behind, once it is as old.

    Each session is re-checked under its own lock just before it goes: one a request is using is
    skipped, and one written to since it was listed stays. Safe to run beside anything, several at once
    included."""

    def __init__(self, blobs: BlobStore, repos: RepositoryStore, locks: Locks, clock: Clock,
                 max_idle: float) -> None:
        self.blobs, self.repos, self.locks, self.clock, self.max_idle = blobs, repos, locks, clock, max_idle

    async def __call__(self, dry_run: bool = False) -> PurgeReport:
        horizon = self.clock() - self.max_idle
        stale = [u async for u in self.blobs.all_uploads() if u.last_modified < horizon]
        purged = 0
        for upload in stale:
            try:
                async with self.locks.session(upload.repo, upload.upload_id):
                    current = await self.blobs.upload_info(upload.repo, upload.upload_id)
                    if current is not None and current.last_modified >= horizon:
                        continue  # written to since it was listed
                    # None: gone meanwhile, or left without its bytes by a crash (listed by its age).
                    if not dry_run:
                        await self.blobs.cancel_upload(upload.repo, upload.upload_id)
                    purged += 1
            except UploadBusy:
                continue
        debris = await self.blobs.purge_debris(horizon, dry_run) + await self.repos.purge_debris(horizon, dry_run)
        return PurgeReport(purged, debris)
