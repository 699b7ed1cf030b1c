from __future__ import annotations

from ..names import RepositoryName
from ..ports import BlobStore, Clock, IdGenerator, Locks
from ._common import UploadStatus


class StartUpload:
    """Open an upload session (POST /v2/<name>/blobs/uploads/)."""

    def __init__(self, blobs: BlobStore, clock: Clock, new_id: IdGenerator, locks: Locks) -> None:
        self.blobs, self.clock, self.new_id, self.locks = blobs, clock, new_id, locks

    async def __call__(self, repo: RepositoryName) -> UploadStatus:
        upload_id = self.new_id()
        async with self.locks.shared():  # never inside a collector's removal of an emptied repository
            await self.blobs.create_upload(repo, upload_id, self.clock())
        return UploadStatus(upload_id, 0)
