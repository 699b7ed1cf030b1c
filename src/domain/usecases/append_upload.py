from __future__ import annotations

from collections.abc import AsyncIterator

from ..digest import Hasher
from ..errors import BlobUploadUnknown, RangeNotSatisfiable, StorageFailure, TooLarge
from ..names import RepositoryName
from ..ports import BlobStore, Locks
from ._common import HasherCache, Limits, UploadStatus, check_upload_id, hashed


class AppendUpload:
    """Append a chunk to a session (PATCH). `start`, when the client sent Content-Range, must be where
    the session ends: chunks arrive in order or not at all.

    One request at a time uses a session (Locks.session): a second one gets UploadBusy (416) and
    changes nothing, so bytes of two requests never mix. An append is all or nothing: a body cut short
    or refused leaves the session as it was, and the client resumes from the size it reports."""

    def __init__(self, blobs: BlobStore, hashers: HasherCache, limits: Limits, locks: Locks) -> None:
        self.blobs, self.hashers, self.limits, self.locks = blobs, hashers, limits, locks

    async def __call__(self, repo: RepositoryName, upload_id: str, chunks: AsyncIterator[bytes],
                       start: int | None = None) -> UploadStatus:
        check_upload_id(upload_id)
        async with self.locks.session(repo, upload_id):
            return UploadStatus(upload_id, await self.append_locked(repo, upload_id, chunks, start))

    async def append_locked(self, repo: RepositoryName, upload_id: str, chunks: AsyncIterator[bytes],
                            start: int | None) -> int:
        """The append itself; the caller holds the session's lock."""
        size = await self.blobs.upload_size(repo, upload_id)
        if size is None:
            raise BlobUploadUnknown(f"upload {upload_id} is not open in {repo} (finished, cancelled or expired)",
                                    detail={"upload": upload_id})
        if start is not None and start != size:
            raise RangeNotSatisfiable(
                f"chunk starts at byte {start} but upload {upload_id} holds {size} bytes: send chunks in order",
                detail={"upload": upload_id, "size": size, "start": start})
        hasher = self.hashers.take(repo, upload_id, size)
        if hasher is None and size == 0:
            hasher = Hasher()
        try:
            new_size = await self.blobs.append_upload(
                repo, upload_id, hashed(chunks, hasher, size, self.limits.max_blob_bytes))
        except (TooLarge, StorageFailure):
            # Too large: the session cannot succeed. Storage failed (a full disk, most likely): its
            # partial bytes would keep the space taken until the purge; the client starts over.
            self.hashers.drop(repo, upload_id)
            try:
                await self.blobs.cancel_upload(repo, upload_id)
            except StorageFailure:
                pass  # the purge of idle sessions removes it later
            raise
        if hasher is not None and hasher.size == new_size:
            self.hashers.keep(repo, upload_id, hasher)
        return new_size
