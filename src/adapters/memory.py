"""In-memory adapters, for unit tests and scripts. They pass the same contract suite as the filesystem."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from domain.digest import Digest
from domain.errors import BlobUnknown, BlobUploadInvalid, BlobUploadUnknown, CollectionRunning, UploadBusy
from domain.names import RepositoryName, Tag
from domain.ports import BlobInfo, BlobStore, Clock, Locks, RepositoryStore, UploadInfo

_CHUNK = 1 << 20


class MemoryBlobStore(BlobStore):
    def __init__(self, clock: Clock = time.time) -> None:
        self.clock = clock
        self.blobs: dict[Digest, bytes] = {}
        self.used: dict[Digest, float] = {}
        self.sessions: dict[tuple[str, str], bytearray] = {}
        self.upload_modified: dict[tuple[str, str], float] = {}

    async def check_writable(self) -> None:
        return None

    async def stat(self, digest: Digest) -> int | None:
        data = self.blobs.get(digest)
        return None if data is None else len(data)

    async def read(self, digest: Digest, start: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        data = self.blobs.get(digest)
        if data is None:
            raise BlobUnknown(f"blob {digest} is not stored")
        end = len(data) if length is None else min(len(data), start + length)
        for offset in range(start, end, _CHUNK):
            yield data[offset:min(end, offset + _CHUNK)]

    async def get(self, digest: Digest) -> bytes:
        data = self.blobs.get(digest)
        if data is None:
            raise BlobUnknown(f"blob {digest} is not stored")
        return data

    async def put(self, digest: Digest, data: bytes) -> None:
        self.blobs.setdefault(digest, bytes(data))
        self.used[digest] = self.clock()

    async def delete(self, digest: Digest) -> bool:
        self.used.pop(digest, None)
        return self.blobs.pop(digest, None) is not None

    async def touch(self, digest: Digest) -> bool:
        if digest not in self.blobs:
            return False
        self.used[digest] = self.clock()
        return True

    async def info(self, digest: Digest) -> BlobInfo | None:
        data = self.blobs.get(digest)
        return None if data is None else BlobInfo(digest, len(data), self.used[digest])

    async def all_blobs(self) -> AsyncIterator[BlobInfo]:
        for digest in list(self.blobs):
            info = await self.info(digest)
            if info is not None:
                yield info

    async def all_uploads(self) -> AsyncIterator[UploadInfo]:
        for (repo, upload_id), modified in list(self.upload_modified.items()):
            data = self.sessions.get((repo, upload_id))
            if data is not None:
                yield UploadInfo(RepositoryName(repo), upload_id, modified, len(data))

    async def uploads(self, repo: RepositoryName) -> list[str]:
        return [upload_id for (name, upload_id) in self.sessions if name == repo.value]

    async def create_upload(self, repo: RepositoryName, upload_id: str, started_at: float) -> None:
        self.sessions[(repo.value, upload_id)] = bytearray()
        self.upload_modified[(repo.value, upload_id)] = started_at

    async def upload_info(self, repo: RepositoryName, upload_id: str) -> UploadInfo | None:
        data = self.sessions.get((repo.value, upload_id))
        if data is None:
            return None
        return UploadInfo(repo, upload_id, self.upload_modified[(repo.value, upload_id)], len(data))

    def _session(self, repo: RepositoryName, upload_id: str) -> bytearray:
        data = self.sessions.get((repo.value, upload_id))
        if data is None:
            raise BlobUploadUnknown(f"upload {upload_id} is not open in {repo}")
        return data

    async def append_upload(self, repo: RepositoryName, upload_id: str, chunks: AsyncIterator[bytes]) -> int:
        data = self._session(repo, upload_id)
        received = bytearray()  # all or nothing: the session grows only once the whole body arrived
        async for chunk in chunks:
            received += chunk
        data += received
        self.upload_modified[(repo.value, upload_id)] = self.clock()
        return len(data)

    async def read_upload(self, repo: RepositoryName, upload_id: str) -> AsyncIterator[bytes]:
        data = bytes(self._session(repo, upload_id))
        for offset in range(0, len(data), _CHUNK):
            yield data[offset:offset + _CHUNK]

    async def commit_upload(self, repo: RepositoryName, upload_id: str, digest: Digest, size: int) -> None:
        data = bytes(self._session(repo, upload_id))
        await self.cancel_upload(repo, upload_id)
        if len(data) != size:
            raise BlobUploadInvalid(f"upload {upload_id} holds {len(data)} bytes, not the {size} hashed")
        existing = self.blobs.get(digest)
        if existing is None or len(existing) != size:
            self.blobs[digest] = data
        self.used[digest] = self.clock()

    async def cancel_upload(self, repo: RepositoryName, upload_id: str) -> bool:
        self.upload_modified.pop((repo.value, upload_id), None)
        return self.sessions.pop((repo.value, upload_id), None) is not None


class MemoryRepositoryStore(RepositoryStore):
    def __init__(self, clock: Clock = time.time) -> None:
        self.clock = clock
        self.layers: dict[str, dict[Digest, float]] = defaultdict(dict)
        self.manifests: dict[str, dict[Digest, float]] = defaultdict(dict)
        self.tag_map: dict[str, dict[str, Digest]] = defaultdict(dict)
        self.referrer_map: dict[tuple[str, Digest], set[Digest]] = defaultdict(set)

    async def exists(self, repo: RepositoryName) -> bool:
        return repo.value in self.layers or repo.value in self.manifests

    async def repositories(self) -> list[str]:
        return sorted(set(self.layers) | set(self.manifests))

    async def has_manifests(self, repo: RepositoryName) -> bool:
        return bool(self.manifests.get(repo.value))

    async def delete_repository(self, repo: RepositoryName) -> bool:
        existed = await self.exists(repo)
        for table in (self.layers, self.manifests, self.tag_map):
            table.pop(repo.value, None)
        for key in [k for k in self.referrer_map if k[0] == repo.value]:
            del self.referrer_map[key]
        return existed

    async def link_blob(self, repo: RepositoryName, digest: Digest) -> None:
        self.layers[repo.value][digest] = self.clock()

    async def blob_linked(self, repo: RepositoryName, digest: Digest) -> bool:
        return digest in self.layers.get(repo.value, ())

    async def blob_link_time(self, repo: RepositoryName, digest: Digest) -> float | None:
        return self.layers.get(repo.value, {}).get(digest)

    async def blob_links(self, repo: RepositoryName) -> dict[Digest, float]:
        return dict(self.layers.get(repo.value, {}))

    async def unlink_blob(self, repo: RepositoryName, digest: Digest) -> bool:
        return self.layers.get(repo.value, {}).pop(digest, None) is not None

    async def link_manifest(self, repo: RepositoryName, digest: Digest) -> None:
        self.manifests[repo.value][digest] = self.clock()

    async def manifest_linked(self, repo: RepositoryName, digest: Digest) -> bool:
        return digest in self.manifests.get(repo.value, ())

    async def manifest_link_time(self, repo: RepositoryName, digest: Digest) -> float | None:
        return self.manifests.get(repo.value, {}).get(digest)

    async def manifest_links(self, repo: RepositoryName) -> dict[Digest, float]:
        return dict(self.manifests.get(repo.value, {}))

    async def unlink_manifest(self, repo: RepositoryName, digest: Digest) -> bool:
        return self.manifests.get(repo.value, {}).pop(digest, None) is not None

    async def set_tag(self, repo: RepositoryName, tag: Tag, digest: Digest) -> None:
        self.tag_map[repo.value][tag.value] = digest

    async def resolve_tag(self, repo: RepositoryName, tag: Tag) -> Digest | None:
        return self.tag_map.get(repo.value, {}).get(tag.value)

    async def delete_tag(self, repo: RepositoryName, tag: Tag) -> bool:
        return self.tag_map.get(repo.value, {}).pop(tag.value, None) is not None

    async def tags(self, repo: RepositoryName) -> list[str]:
        return sorted(self.tag_map.get(repo.value, {}))

    async def add_referrer(self, repo: RepositoryName, subject: Digest, referrer: Digest) -> None:
        self.referrer_map[(repo.value, subject)].add(referrer)

    async def referrers(self, repo: RepositoryName, subject: Digest) -> list[Digest]:
        return sorted(self.referrer_map.get((repo.value, subject), ()))

    async def remove_referrer(self, repo: RepositoryName, subject: Digest, referrer: Digest) -> None:
        self.referrer_map.get((repo.value, subject), set()).discard(referrer)


class MemoryLocks(Locks):
    """The Locks port within one process: a readers-writer lock that lets a waiting collector in first."""

    def __init__(self) -> None:
        self._sessions: set[tuple[str, str]] = set()
        self._collecting = False
        self._readers = 0
        self._writer = False
        self._writer_waiting = 0
        self._condition: asyncio.Condition | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def _changed(self) -> asyncio.Condition:
        # One condition per event loop: scripts and tests may run several loops in turn.
        loop = asyncio.get_running_loop()
        if self._condition is None or self._loop is not loop:
            self._condition, self._loop = asyncio.Condition(), loop
        return self._condition

    @asynccontextmanager
    async def collector(self) -> AsyncIterator[None]:
        if self._collecting:
            raise CollectionRunning()
        self._collecting = True
        try:
            yield
        finally:
            self._collecting = False

    @asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: not self._writer and not self._writer_waiting)
            self._readers += 1
        try:
            yield
        finally:
            async with self._changed:
                self._readers -= 1
                self._changed.notify_all()

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        async with self._changed:
            self._writer_waiting += 1
            await self._changed.wait_for(lambda: not self._writer and not self._readers)
            self._writer_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            async with self._changed:
                self._writer = False
                self._changed.notify_all()

    @asynccontextmanager
    async def session(self, repo: RepositoryName, upload_id: str) -> AsyncIterator[None]:
        key = (repo.value, upload_id)
        if key in self._sessions:
            raise UploadBusy(f"upload {upload_id} is in use by another request: ask for its status and resume",
                             detail={"upload": upload_id})
        self._sessions.add(key)
        try:
            yield
        finally:
            self._sessions.discard(key)
