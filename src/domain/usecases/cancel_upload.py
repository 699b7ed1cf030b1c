from __future__ import annotations

from ..errors import BlobUploadUnknown
from ..names import RepositoryName
from ..ports import BlobStore, Locks
from ._common import HasherCache, check_upload_id


class CancelUpload:
    """DELETE on a session: drop its bytes. Not while another request uses the session (UploadBusy)."""

    def __init__(self, blobs: BlobStore, hashers: HasherCache, locks: Locks) -> None:
        self.blobs, self.hashers, self.locks = blobs, hashers, locks

    async def __call__(self, repo: RepositoryName, upload_id: str) -> None:
        check_upload_id(upload_id)
        async with self.locks.session(repo, upload_id):
            self.hashers.drop(repo, upload_id)
            if not await self.blobs.cancel_upload(repo, upload_id):
                raise BlobUploadUnknown(f"upload {upload_id} is not open in {repo}", detail={"upload": upload_id})
