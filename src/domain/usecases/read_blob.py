from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import NamedTuple

from ..digest import Digest
from ..errors import RangeNotSatisfiable
from ..names import RepositoryName
from ..ports import BlobStore
from .stat_blob import StatBlob


@dataclass(frozen=True, slots=True)
class ByteRange:
    """One range of a `Range: bytes=` header: first-last, first- (last None) or -suffix (first None)."""

    first: int | None
    last: int | None

    def resolve(self, size: int) -> tuple[int, int]:
        """The inclusive (start, end) within a blob of `size` bytes."""
        if self.first is None:
            if not self.last or size == 0:
                raise RangeNotSatisfiable(f"range not satisfiable for a blob of {size} bytes")
            return max(0, size - self.last), size - 1
        if self.first >= size or (self.last is not None and self.last < self.first):
            raise RangeNotSatisfiable(f"range starts past the end of a blob of {size} bytes",
                                      detail={"size": size})
        return self.first, size - 1 if self.last is None else min(self.last, size - 1)


class BlobContent(NamedTuple):  # immutable, and made for every blob read: cheaper than a frozen dataclass
    size: int
    start: int
    end: int  # inclusive
    chunks: AsyncIterator[bytes] | None

    @property
    def length(self) -> int:
        return self.end - self.start + 1 if self.size else 0


class ReadBlob:
    """A blob's bytes (GET), whole or one range."""

    def __init__(self, blobs: BlobStore, stat: StatBlob) -> None:
        self.blobs, self.stat = blobs, stat

    async def __call__(self, repo: RepositoryName, digest: Digest, byte_range: ByteRange | None = None,
                       with_body: bool = True) -> BlobContent:
        size = await self.stat(repo, digest, touch=not with_body)
        start, end = byte_range.resolve(size) if byte_range else (0, size - 1)
        chunks = self.blobs.read(digest, start, end - start + 1) if with_body else None
        return BlobContent(size, start, end, chunks)
