"""Pieces several use-cases share: limits, upload ids, the per-worker hasher cache."""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from ..digest import Digest, Hasher
from ..errors import BlobUploadUnknown, NameUnknown, RegistryError, TooLarge
from ..names import RepositoryName, Tag
from ..ports import BlobStore, RepositoryStore
from ..references import References, references_of

_UPLOAD_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass(frozen=True, slots=True)
class Limits:
    max_manifest_bytes: int = 4 * 1024 * 1024
    max_blob_bytes: int = 0  # 0: no limit
    max_manifest_references: int = 10_000
    max_uploads_per_repository: int = 1000  # 0: no limit


@dataclass(frozen=True, slots=True)
class UploadStatus:
    upload_id: str
    size: int


def check_upload_id(upload_id: str) -> str:
    """Session ids are uuid4 strings we made; anything else is unknown (and never reaches a path)."""
    if not _UPLOAD_ID.fullmatch(upload_id):
        raise BlobUploadUnknown(f"upload {upload_id[:80]!r} is not a session id this registry issues",
                                detail={"upload": upload_id[:100]})
    return upload_id


async def require_repository(repos: RepositoryStore, repo: RepositoryName) -> None:
    if not await repos.exists(repo):
        raise NameUnknown(f"repository {repo} is not known to this registry", detail={"name": str(repo)})


async def remove_manifest(repos: RepositoryStore, repo: RepositoryName, digest: Digest, subject: Digest | None,
                          tags: Iterable[str]) -> None:
    """Take a manifest out of a repository: those of `tags` that name it, its place among its subject's
    referrers, its link. Its bytes stay for the collector. The caller holds Locks.exclusive(), so no push
    tags or links it meanwhile. Used by DELETE and by the garbage collector alike."""
    for tag in tags:
        if await repos.resolve_tag(repo, Tag(tag)) == digest:
            await repos.delete_tag(repo, Tag(tag))
    if subject is not None:
        await repos.remove_referrer(repo, subject, digest)
    await repos.unlink_manifest(repo, digest)


async def stored_references(blobs: BlobStore, digest: Digest) -> References | None:
    """What a stored manifest references; None when its bytes are gone or cannot be read."""
    try:
        raw = await blobs.get(digest)
    except RegistryError:
        return None
    return references_of(raw)


class HasherCache:
    """Running hashes of upload sessions handled by this worker, so completing an upload needs no
    second read of its bytes. hashlib state cannot be saved to disk, so a session continued in another
    worker (or after a restart) falls back to re-hashing the stored bytes."""

    def __init__(self, capacity: int = 1024) -> None:
        self._capacity = capacity
        self._items: OrderedDict[tuple[str, str], Hasher] = OrderedDict()

    def take(self, repo: RepositoryName, upload_id: str, size: int) -> Hasher | None:
        hasher = self._items.pop((repo.value, upload_id), None)
        return hasher if hasher is not None and hasher.size == size else None

    def keep(self, repo: RepositoryName, upload_id: str, hasher: Hasher) -> None:
        self._items[(repo.value, upload_id)] = hasher
        while len(self._items) > self._capacity:
            self._items.popitem(last=False)

    def drop(self, repo: RepositoryName, upload_id: str) -> None:
        self._items.pop((repo.value, upload_id), None)


HASH_BATCH = 1 << 20  # bytes gathered before one hand-over to the hashing thread


async def hashed(chunks: AsyncIterator[bytes], hasher: Hasher | None, offset: int,
                 limit: int) -> AsyncIterator[bytes]:
    """Pass chunks through in pieces of about HASH_BATCH bytes, feeding the hasher and stopping at the
    blob size limit. Each piece is hashed in a thread (hashlib releases the GIL) while the consumer stores
    it and the event loop receives the next one; pieces are hashed one after another, in order."""
    total = offset
    batch: list[bytes] = []
    batched = 0
    hashing: asyncio.Future | None = None

    async def feed(piece: bytes) -> None:
        nonlocal hashing
        if hashing is not None:
            await hashing
            hashing = None
        if hasher is None:
            return
        if len(piece) >= HASH_BATCH // 4:
            hashing = asyncio.ensure_future(asyncio.to_thread(hasher.update, piece))
        else:
            hasher.update(piece)

    try:
        async for chunk in chunks:
            if not chunk:
                continue
            total += len(chunk)
            if limit and total > limit:
                raise TooLarge(f"blob exceeds the registry's limit of {limit} bytes (REGISTRY_MAX_BLOB_BYTES)")
            batch.append(chunk)
            batched += len(chunk)
            if batched >= HASH_BATCH:
                piece = batch[0] if len(batch) == 1 else b"".join(batch)
                batch, batched = [], 0
                await feed(piece)
                yield piece
        if batch:
            piece = batch[0] if len(batch) == 1 else b"".join(batch)
            await feed(piece)
            yield piece
        if hashing is not None:
            await hashing
            hashing = None
    finally:
        if hashing is not None:  # the consumer stopped early: let the thread finish with the hasher
            await asyncio.wait([hashing])
