"""A fault-injecting wrapper for any adapter of the storage ports: from a chosen write on, every write
fails with StorageFailure, as a full or failing disk makes them, until the fault is cleared. A failing
upload stream stores part of what it was sent first, like a disk that fills up mid-write."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from domain.errors import StorageFailure

WRITES = frozenset({
    "put", "delete", "touch", "create_upload", "append_upload", "commit_upload", "cancel_upload",
    "link_blob", "unlink_blob", "link_manifest", "unlink_manifest", "set_tag", "delete_tag",
    "add_referrer", "remove_referrer", "delete_repository",
})


class Disk:
    """Shared by the wrapped adapters: counts writes and fails them from write number `fail_from` on."""

    def __init__(self) -> None:
        self.writes = 0
        self.fail_from: int | None = None
        self.failures = 0

    def fill_up(self, after_writes: int = 0) -> None:
        self.fail_from = self.writes + after_writes + 1

    def free_space(self) -> None:
        self.fail_from = None

    def write(self, operation: str) -> None:
        self.writes += 1
        if self.fail_from is not None and self.writes >= self.fail_from:
            self.failures += 1
            raise StorageFailure(f"storage failed while {operation}: No space left on device (injected)")


class Faulty:
    def __init__(self, inner: Any, disk: Disk) -> None:
        self._inner, self._disk = inner, disk

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name not in WRITES:
            return attr
        if name == "append_upload":
            return self._append_upload

        async def write(*args: Any, **kwargs: Any) -> Any:
            self._disk.write(name)
            return await attr(*args, **kwargs)
        return write

    async def _append_upload(self, repo: Any, upload_id: str, chunks: AsyncIterator[bytes]) -> int:
        try:
            self._disk.write("append_upload")
        except StorageFailure as failure:
            return await self._inner.append_upload(repo, upload_id, _fail_after_first(chunks, failure))
        return await self._inner.append_upload(repo, upload_id, chunks)


async def _fail_after_first(chunks: AsyncIterator[bytes], failure: StorageFailure) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        yield chunk[: len(chunk) // 2]  # part of it reached the disk
        break
    raise failure
