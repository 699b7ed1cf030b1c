from __future__ import annotations

from ..errors import TooManyUploads
from ..names import RepositoryName
from ..ports import BlobStore, Clock, IdGenerator, Locks
from ._common import Limits, UploadStatus


class StartUpload:
    """Open an upload session (POST /v2/<name>/blobs/uploads/)."""

    def __init__(self, blobs: BlobStore, clock: Clock, new_id: IdGenerator, locks: Locks,
                 limits: Limits | None = None) -> None:
        self.blobs, self.clock, self.new_id, self.locks = blobs, clock, new_id, locks
        self.limit = (limits or Limits()).max_uploads_per_repository

    async def __call__(self, repo: RepositoryName) -> UploadStatus:
        if self.limit and await self.blobs.count_uploads(repo) >= self.limit:
            raise TooManyUploads(
                f"repository {repo} has {self.limit} upload sessions open, the registry's limit "
                f"(REGISTRY_MAX_UPLOADS_PER_REPOSITORY): finish or cancel some, or wait for the purge of idle ones",
                detail={"name": str(repo), "limit": self.limit})
        upload_id = self.new_id()
        async with self.locks.shared():  # never inside a collector's removal of an emptied repository
            await self.blobs.create_upload(repo, upload_id, self.clock())
        return UploadStatus(upload_id, 0)
