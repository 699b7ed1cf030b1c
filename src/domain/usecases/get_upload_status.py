from __future__ import annotations

from ..errors import BlobUploadUnknown
from ..names import RepositoryName
from ..ports import BlobStore
from ._common import UploadStatus, check_upload_id


class GetUploadStatus:
    """GET on a session: how many bytes it holds, so a client can resume."""

    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs

    async def __call__(self, repo: RepositoryName, upload_id: str) -> UploadStatus:
        check_upload_id(upload_id)
        size = await self.blobs.upload_size(repo, upload_id)
        if size is None:
            raise BlobUploadUnknown(f"upload {upload_id} is not open in {repo}", detail={"upload": upload_id})
        return UploadStatus(upload_id, size)
