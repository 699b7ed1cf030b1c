from __future__ import annotations

from ..ports import BlobStore, Clock


class PurgeUploads:
    """Drop upload sessions nobody has written to for `max_idle` seconds. Returns how many."""

    def __init__(self, blobs: BlobStore, clock: Clock, max_idle: float) -> None:
        self.blobs, self.clock, self.max_idle = blobs, clock, max_idle

    async def __call__(self, dry_run: bool = False) -> int:
        horizon = self.clock() - self.max_idle
        stale = [u async for u in self.blobs.all_uploads() if u.last_modified < horizon]
        if not dry_run:
            for upload in stale:
                await self.blobs.cancel_upload(upload.repo, upload.upload_id)
        return len(stale)
