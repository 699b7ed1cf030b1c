from __future__ import annotations

from ..ports import BlobStore


class CheckReadiness:
    """Whether the registry can take pushes now: the blob store accepts a write. Raises the store's
    error (which says why) when it does not."""

    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs

    async def __call__(self) -> None:
        await self.blobs.check_writable()
