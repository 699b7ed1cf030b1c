"""The Locks port with flock(2) on files under the storage root, so every worker and every process on
this machine (server, CLI, scripts) coordinates through the same files. flock locks belong to an open
file, so two requests of one process exclude each other as two processes do.

Writer preference: the collector first takes `gate` exclusively, which stops new pushes from entering,
then waits for the pushes already inside `writes` to leave. Pushes pass through `gate` briefly.

An upload session's lock is a flock on its `startedat` file, which lives exactly as long as the session;
a request that got the lock on a session removed meanwhile then finds the session unknown."""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from domain.errors import CollectionRunning, UploadBusy
from domain.names import RepositoryName
from domain.ports import Locks

from .layout import Layout

_POLL = 0.002


_NAMES = ("collector", "gate", "writes")


async def _acquire(fd: int, mode: int) -> None:
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            await asyncio.sleep(_POLL)


class FilesystemLocks(Locks):
    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self._created = False

    def _open(self, name: str) -> int:
        if not self._created:
            # All lock files at once, so a dry-run collection later creates no file at all.
            for other in _NAMES:
                path = self.layout.lock_file(other)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o644))
            self._created = True
        return os.open(self.layout.lock_file(name), os.O_RDWR | os.O_CREAT, 0o644)

    @asynccontextmanager
    async def collector(self) -> AsyncIterator[None]:
        fd = self._open("collector")
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise CollectionRunning() from None
            yield
        finally:
            os.close(fd)  # closing releases the lock

    @asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        gate, writes = self._open("gate"), self._open("writes")
        try:
            await _acquire(gate, fcntl.LOCK_SH)
            await _acquire(writes, fcntl.LOCK_SH)
            os.close(gate)
            gate = -1
            yield
        finally:
            if gate >= 0:
                os.close(gate)
            os.close(writes)

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        gate, writes = self._open("gate"), self._open("writes")
        try:
            await _acquire(gate, fcntl.LOCK_EX)
            await _acquire(writes, fcntl.LOCK_EX)
            yield
        finally:
            os.close(writes)
            os.close(gate)

    @asynccontextmanager
    async def session(self, repo: RepositoryName, upload_id: str) -> AsyncIterator[None]:
        try:
            fd = os.open(self.layout.upload_lock(repo, upload_id), os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            yield  # no such session: the caller finds it unknown
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UploadBusy(f"upload {upload_id} is in use by another request: ask for its status and "
                                 "resume", detail={"upload": upload_id}) from None
            yield
        finally:
            os.close(fd)
