from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator

from domain.digest import Digest
from domain.errors import BlobUnknown, BlobUploadInvalid, BlobUploadUnknown
from domain.names import RepositoryName
from domain.ports import BlobInfo, BlobStore, UploadInfo

from .files import (
    fsync_dir,
    listdir,
    make_dirs,
    read_whole,
    remove_debris,
    remove_tree,
    storage_failure,
    write_atomic,
)
from .layout import Layout

READ_CHUNK = 1 << 20
# Chunks this large are written by a thread while the event loop receives the next one (file writes
# release the GIL); smaller ones are cheaper to write in place than to hand over.
THREAD_WRITE_MIN = 256 << 10
# When durable, an upload's written bytes are flushed to disk in the background every this many bytes,
# so that the flush at commit has little left to do.
SYNC_EVERY = 32 << 20


class FilesystemBlobStore(BlobStore):
    """Blobs and upload sessions on a local filesystem. Small I/O runs in the event loop (cheaper than a
    thread hand-off, see shared/FINDINGS.md); an upload's large writes go to a thread, one at a time, so
    receiving, hashing and writing overlap.

    `durable`: a blob is on disk (fdatasync of its data, fsync of its directories) before its commit
    returns, and so is every small file written through `write_atomic`. Without it, what was
    acknowledged survives a crash of the registry process (the kernel holds the data) but not a crash
    of the machine."""

    def __init__(self, layout: Layout, durable: bool = False) -> None:
        self.layout, self.durable = layout, durable

    async def check_writable(self) -> None:
        path = self.layout.probe_file()
        write_atomic(path, b"ok")
        os.unlink(path)

    async def stat(self, digest: Digest) -> int | None:
        try:
            return os.stat(self.layout.blob_data(digest)).st_size
        except (FileNotFoundError, NotADirectoryError):
            return None

    def read(self, digest: Digest, start: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        return _FileChunks(self.layout.blob_data(digest), digest, start, length)

    async def get(self, digest: Digest) -> bytes:
        try:
            return read_whole(self.layout.blob_data(digest))
        except (FileNotFoundError, NotADirectoryError):
            raise BlobUnknown(f"blob {digest} is not stored") from None

    async def put(self, digest: Digest, data: bytes) -> None:
        path = self.layout.blob_data(digest)
        if not os.path.exists(path):
            write_atomic(path, data, self.durable)

    async def delete(self, digest: Digest) -> bool:
        return remove_tree(self.layout.blob_dir(digest))

    async def touch(self, digest: Digest) -> bool:
        try:
            os.utime(self.layout.blob_data(digest))
            return True
        except (FileNotFoundError, NotADirectoryError):
            return False

    async def info(self, digest: Digest) -> BlobInfo | None:
        try:
            st = os.stat(self.layout.blob_data(digest))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return BlobInfo(digest, st.st_size, st.st_mtime)

    async def all_blobs(self) -> AsyncIterator[BlobInfo]:
        for digest in self.layout.blob_digests():
            info = await self.info(digest)
            if info is not None:
                yield info

    async def all_uploads(self) -> AsyncIterator[UploadInfo]:
        for repo, upload_id in self.layout.upload_sessions():
            try:
                modified = os.stat(self.layout.upload_data(repo, upload_id)).st_mtime
            except FileNotFoundError:
                # A session without data is debris of an interrupted start: its dir's time will do.
                try:
                    modified = os.stat(self.layout.upload_dir(repo, upload_id)).st_mtime
                except FileNotFoundError:
                    continue
            yield UploadInfo(repo, upload_id, modified)

    async def purge_debris(self, older_than: float, dry_run: bool = False) -> int:
        return remove_debris(self.layout.blobs_root, self.layout.is_debris, older_than, dry_run)

    async def uploads(self, repo: RepositoryName) -> list[str]:
        return listdir(self.layout.uploads_dir(repo))

    async def create_upload(self, repo: RepositoryName, upload_id: str, started_at: float) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started_at))
        write_atomic(self.layout.upload_started(repo, upload_id), stamp.encode())
        write_atomic(self.layout.upload_data(repo, upload_id), b"")

    async def upload_info(self, repo: RepositoryName, upload_id: str) -> UploadInfo | None:
        try:
            st = os.stat(self.layout.upload_data(repo, upload_id))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return UploadInfo(repo, upload_id, st.st_mtime, st.st_size)

    async def upload_size(self, repo: RepositoryName, upload_id: str) -> int | None:
        try:
            return os.stat(self.layout.upload_data(repo, upload_id)).st_size
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _open_session(self, repo: RepositoryName, upload_id: str, mode: str):
        try:
            return open(self.layout.upload_data(repo, upload_id), mode)
        except (FileNotFoundError, NotADirectoryError):
            raise BlobUploadUnknown(f"upload {upload_id} is not open in {repo}",
                                    detail={"upload": upload_id}) from None

    async def append_upload(self, repo: RepositoryName, upload_id: str, chunks: AsyncIterator[bytes]) -> int:
        with self._open_session(repo, upload_id, "ab") as f:
            before = f.tell()
            try:
                await self._append(f, upload_id, chunks)
                return f.tell()
            except BaseException:
                # All or nothing: a body cut short or refused leaves the session as it was.
                try:
                    f.truncate(before)
                except (OSError, ValueError):
                    pass  # the client's resume asks for the size; a purge removes a broken session
                raise

    async def _append(self, f, upload_id: str, chunks: AsyncIterator[bytes]) -> None:
        writing: asyncio.Future | None = None  # the previous large chunk, still being written
        syncing: asyncio.Future | None = None  # a background flush to disk (durable only)
        unsynced = 0
        try:
            async for chunk in chunks:  # errors of the stream itself pass through unchanged
                try:
                    if writing is not None:
                        await writing
                        writing = None
                    if len(chunk) >= THREAD_WRITE_MIN:
                        writing = asyncio.ensure_future(asyncio.to_thread(f.write, chunk))
                    else:
                        f.write(chunk)
                    unsynced += len(chunk)
                    if self.durable and unsynced >= SYNC_EVERY and (syncing is None or syncing.done()):
                        if syncing is not None:
                            syncing.result()
                        syncing = asyncio.ensure_future(asyncio.to_thread(_flush_to_disk, f))
                        unsynced = 0
                except OSError as e:
                    raise storage_failure(e, f"writing upload {upload_id}") from e
            try:
                for pending in (writing, syncing):
                    if pending is not None:
                        await pending
                writing = syncing = None
                f.flush()
            except OSError as e:
                raise storage_failure(e, f"writing upload {upload_id}") from e
        finally:
            # Never close or cut the file under a thread still using it (the client may have gone away).
            for pending in (writing, syncing):
                if pending is not None:
                    await asyncio.wait([pending])
                    pending.exception()  # retrieved; the first failure was reported already
            try:
                f.flush()
            except (OSError, ValueError):
                pass

    async def read_upload(self, repo: RepositoryName, upload_id: str) -> AsyncIterator[bytes]:
        with self._open_session(repo, upload_id, "rb") as f:
            while chunk := f.read(READ_CHUNK):
                yield chunk

    async def commit_upload(self, repo: RepositoryName, upload_id: str, digest: Digest, size: int) -> None:
        source = self.layout.upload_data(repo, upload_id)
        target = self.layout.blob_data(digest)
        tmp = f"{target}.tmp-{uuid.uuid4().hex}"
        try:
            make_dirs(os.path.dirname(target), self.durable)
            try:
                # The bytes count as used now (and are no debris to the purge) from the moment they leave
                # the session; same filesystem, so they leave its name atomically: nothing appends after.
                os.utime(source)
                os.rename(source, tmp)
            except (FileNotFoundError, NotADirectoryError):
                raise BlobUploadUnknown(f"upload {upload_id} is not open in {repo}",
                                        detail={"upload": upload_id}) from None
            moved = os.stat(tmp).st_size
            if moved != size:
                os.unlink(tmp)
                raise BlobUploadInvalid(f"upload {upload_id} holds {moved} bytes, not the {size} bytes hashed: "
                                        "nothing was stored", detail={"upload": upload_id})
            try:
                existing = os.stat(target).st_size
            except FileNotFoundError:
                existing = None
            if existing == size:  # same digest, same size: the same bytes
                os.unlink(tmp)
                os.utime(target)
            else:
                if self.durable:
                    await asyncio.to_thread(_sync_file, tmp)
                os.replace(tmp, target)  # the blob appears whole or not at all
                if self.durable:
                    fsync_dir(os.path.dirname(target))
        except OSError as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise storage_failure(e, f"committing upload {upload_id} as {digest}") from e
        remove_tree(self.layout.upload_dir(repo, upload_id))

    async def cancel_upload(self, repo: RepositoryName, upload_id: str) -> bool:
        # The bytes go first, the lock file (startedat) last: a crash in between leaves a session that
        # every request finds unknown and the purge removes, never one without its lock.
        existed = _unlink(self.layout.upload_data(repo, upload_id))
        return remove_tree(self.layout.upload_dir(repo, upload_id)) or existed


class _FileChunks:
    """A blob's bytes as an async stream of pieces, which also names its file region (path, offset,
    length) so that an HTTP server may send it with sendfile instead."""

    def __init__(self, path: str, digest: Digest, start: int, length: int | None) -> None:
        self.path, self.digest, self.start, self.length = path, digest, start, length

    @property
    def file_region(self) -> tuple[str, int, int] | None:
        if self.length is not None:
            return self.path, self.start, self.length
        try:
            return self.path, self.start, os.stat(self.path).st_size - self.start
        except OSError:
            return None

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._pieces()

    async def _pieces(self) -> AsyncIterator[bytes]:
        try:
            f = open(self.path, "rb")
        except (FileNotFoundError, NotADirectoryError):
            raise BlobUnknown(f"blob {self.digest} is not stored") from None
        with f:
            f.seek(self.start)
            remaining = self.length if self.length is not None else -1
            while remaining != 0:
                chunk = f.read(READ_CHUNK if remaining < 0 else min(READ_CHUNK, remaining))
                if not chunk:
                    break
                if remaining > 0:
                    remaining -= len(chunk)
                yield chunk


def _flush_to_disk(f) -> None:
    f.flush()
    os.fdatasync(f.fileno())


def _sync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except (FileNotFoundError, NotADirectoryError):
        return False
