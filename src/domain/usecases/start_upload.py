from __future__ import annotations

from ..names import RepositoryName
from ..ports import BlobStore, Clock, IdGenerator
from ._common import UploadStatus


class StartUpload:
    """Open an upload session (POST /v2/<name>/blobs/uploads/)."""

    def __init__(self, blobs: BlobStore, clock: Clock, new_id: IdGenerator) -> None:
        self.blobs, self.clock, self.new_id = blobs, clock, new_id

    async def __call__(self, repo: RepositoryName) -> UploadStatus:
        upload_id = self.new_id()
        await self.blobs.create_upload(repo, upload_id, self.clock())
        return UploadStatus(upload_id, 0)
