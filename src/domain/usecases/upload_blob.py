from __future__ import annotations

from collections.abc import AsyncIterator

from ..digest import Digest
from ..names import RepositoryName
from ..ports import BlobStore
from .complete_upload import CompleteUpload
from .start_upload import StartUpload


class UploadBlob:
    """A whole blob in one request (POST ?digest= with a body): a session opened and completed at once,
    so a failure leaves nothing behind but what the session cleanup removes."""

    def __init__(self, blobs: BlobStore, start: StartUpload, complete: CompleteUpload) -> None:
        self.blobs, self.start, self.complete = blobs, start, complete

    async def __call__(self, repo: RepositoryName, digest: Digest, chunks: AsyncIterator[bytes]) -> int:
        session = await self.start(repo)
        try:
            return await self.complete(repo, session.upload_id, digest, chunks)
        except BaseException:
            await self.blobs.cancel_upload(repo, session.upload_id)
            raise
