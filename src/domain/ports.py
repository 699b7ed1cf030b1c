"""Ports: what the use-cases need from storage, declared here and implemented in `adapters/`.

Two storage ports, because later backends split that way: blob bytes (filesystem, S3) and repository
metadata (filesystem, PostgreSQL); Locks coordinates pushes with the garbage collector; ImageSource
feeds imports. Every adapter of a port passes the same contract suite
(tests/integration/contracts/).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import NamedTuple

from .access import Scope
from .digest import Digest
from .names import RepositoryName, Tag

Clock = Callable[[], float]
IdGenerator = Callable[[], str]


class BlobInfo(NamedTuple):  # made on every blob HEAD: half the cost of a frozen dataclass
    digest: Digest
    size: int
    last_used: float  # when it was last written, linked, mounted or HEAD-checked (epoch seconds)


@dataclass(frozen=True, slots=True)
class UploadInfo:
    repo: RepositoryName
    upload_id: str
    last_modified: float  # when bytes were last appended (or the session was opened)
    size: int = 0


class BlobStore(ABC):
    """Content-addressed blobs, and the upload sessions whose bytes become blobs."""

    @abstractmethod
    async def stat(self, digest: Digest) -> int | None:
        """The blob's size, or None when it is not stored."""

    @abstractmethod
    def read(self, digest: Digest, start: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """The blob's bytes from `start`, `length` of them (all when None). BlobUnknown if absent."""

    @abstractmethod
    async def get(self, digest: Digest) -> bytes:
        """A whole (small) blob, such as a manifest. BlobUnknown if absent."""

    @abstractmethod
    async def put(self, digest: Digest, data: bytes) -> None:
        """Store small content under its digest; the caller has verified the digest. Idempotent."""

    @abstractmethod
    async def delete(self, digest: Digest) -> bool:
        """Remove the blob's bytes; False when there were none."""

    @abstractmethod
    async def touch(self, digest: Digest) -> bool:
        """Record that the blob is in use now (it protects it from collection for the grace period)."""

    @abstractmethod
    async def info(self, digest: Digest) -> BlobInfo | None: ...

    @abstractmethod
    def all_blobs(self) -> AsyncIterator[BlobInfo]:
        """Every stored blob (manifests included)."""

    @abstractmethod
    def all_uploads(self) -> AsyncIterator[UploadInfo]:
        """Every open upload session of every repository."""

    @abstractmethod
    async def uploads(self, repo: RepositoryName) -> list[str]:
        """The ids of the repository's open upload sessions."""

    async def count_uploads(self, repo: RepositoryName) -> int:
        """How many upload sessions the repository has open."""
        return len(await self.uploads(repo))

    async def purge_debris(self, older_than: float, dry_run: bool = False) -> int:
        """Remove what writes cut short by a crash left behind (temporary files) that nobody touched
        since `older_than`. Returns how many. Stores whose writes leave nothing need not override."""
        return 0

    @abstractmethod
    async def check_writable(self) -> None:
        """Raise when the store cannot take a write now (readiness)."""

    # Upload sessions belong to a repository, as in Distribution's layout.
    @abstractmethod
    async def create_upload(self, repo: RepositoryName, upload_id: str, started_at: float) -> None: ...

    @abstractmethod
    async def upload_info(self, repo: RepositoryName, upload_id: str) -> UploadInfo | None:
        """The session's size and last change, or None when no such session exists."""

    async def upload_size(self, repo: RepositoryName, upload_id: str) -> int | None:
        """Bytes received so far, or None when no such session exists."""
        info = await self.upload_info(repo, upload_id)
        return None if info is None else info.size

    @abstractmethod
    async def append_upload(self, repo: RepositoryName, upload_id: str, chunks: AsyncIterator[bytes]) -> int:
        """Append the chunks at the session's end and return its new size. All or nothing: when the
        chunks or the store fail midway, the session is cut back to the size it had and the error
        passes through. The caller holds the session's lock (Locks.session)."""

    @abstractmethod
    def read_upload(self, repo: RepositoryName, upload_id: str) -> AsyncIterator[bytes]:
        """The session's bytes so far (for re-hashing when the hasher lives in another worker)."""

    @abstractmethod
    async def commit_upload(self, repo: RepositoryName, upload_id: str, digest: Digest, size: int) -> None:
        """Make the session's bytes the blob `digest` and end the session. The caller holds the session's
        lock and has verified that the session's first `size` bytes hash to `digest`.

        The adapter takes the bytes away from the session's name first, so nothing can append to them
        any more, then checks they are exactly `size` bytes (BlobUploadInvalid otherwise, and nothing is
        stored): what becomes the blob is what was hashed. A blob already stored with the same size is
        kept (same digest, same bytes); one of another size cannot hash to its name and is replaced.
        Either way the blob counts as used now (BlobInfo.last_used), so a collection running alongside
        keeps it."""

    @abstractmethod
    async def cancel_upload(self, repo: RepositoryName, upload_id: str) -> bool:
        """End the session and drop its bytes; False when there was no such session."""


class RepositoryStore(ABC):
    """Which blobs, manifests, tags and referrers each repository has."""

    @abstractmethod
    async def exists(self, repo: RepositoryName) -> bool: ...

    @abstractmethod
    async def repositories(self) -> list[str]:
        """Every repository's name, sorted."""

    @abstractmethod
    async def has_manifests(self, repo: RepositoryName) -> bool:
        """Whether the repository links at least one manifest. False for a repository whose manifests
        were all deleted (it leaves the catalog), even if a crash left traces of one behind."""

    async def catalog(self) -> list[str]:
        """The repositories holding at least one manifest, sorted. Adapters may answer from an index."""
        return [name for name in await self.repositories() if await self.has_manifests(RepositoryName(name))]

    async def refresh_catalog(self) -> None:
        """Reconcile any catalog index with the storage itself (at start, after a collection)."""
        return None

    async def purge_debris(self, older_than: float, dry_run: bool = False) -> int:
        """As BlobStore.purge_debris, for the repositories' own files (links, tags)."""
        return 0

    @abstractmethod
    async def delete_repository(self, repo: RepositoryName) -> bool:
        """Remove what is left of a repository: its links, referrer records, empty structure and catalog
        entry (not nested repositories, not blob bytes, not upload sessions: the BlobStore owns those).
        Callers remove tags and manifests first (DeleteRepository orders that), so that a crash midway
        leaves a repository whole to readers. Returns whether the repository existed."""

    # Linking again refreshes the link's time: that is how a push protects what it uses from collection.
    @abstractmethod
    async def link_blob(self, repo: RepositoryName, digest: Digest) -> None: ...

    @abstractmethod
    async def blob_links(self, repo: RepositoryName) -> dict[Digest, float]:
        """The repository's blob links and when each was last linked."""

    @abstractmethod
    async def blob_linked(self, repo: RepositoryName, digest: Digest) -> bool: ...

    @abstractmethod
    async def blob_link_time(self, repo: RepositoryName, digest: Digest) -> float | None:
        """When the repository last linked the blob; None when it does not link it."""

    @abstractmethod
    async def unlink_blob(self, repo: RepositoryName, digest: Digest) -> bool: ...

    @abstractmethod
    async def link_manifest(self, repo: RepositoryName, digest: Digest) -> None: ...

    @abstractmethod
    async def manifest_linked(self, repo: RepositoryName, digest: Digest) -> bool: ...

    @abstractmethod
    async def manifest_link_time(self, repo: RepositoryName, digest: Digest) -> float | None:
        """When the repository last linked the manifest; None when it does not link it."""

    @abstractmethod
    async def manifest_links(self, repo: RepositoryName) -> dict[Digest, float]:
        """The repository's manifests and when each was last linked (pushed or referenced by a push)."""

    @abstractmethod
    async def unlink_manifest(self, repo: RepositoryName, digest: Digest) -> bool: ...

    @abstractmethod
    async def set_tag(self, repo: RepositoryName, tag: Tag, digest: Digest) -> None: ...

    @abstractmethod
    async def resolve_tag(self, repo: RepositoryName, tag: Tag) -> Digest | None: ...

    @abstractmethod
    async def delete_tag(self, repo: RepositoryName, tag: Tag) -> bool: ...

    @abstractmethod
    async def tags(self, repo: RepositoryName) -> list[str]:
        """The repository's tags, sorted."""

    @abstractmethod
    async def add_referrer(self, repo: RepositoryName, subject: Digest, referrer: Digest) -> None: ...

    @abstractmethod
    async def referrers(self, repo: RepositoryName, subject: Digest) -> list[Digest]:
        """Manifests recorded as referring to `subject` (possibly since deleted: callers check)."""

    @abstractmethod
    async def remove_referrer(self, repo: RepositoryName, subject: Digest, referrer: Digest) -> None: ...


class ImageSource(ABC):
    """Somewhere images can be read from outside the registry (an OCI image layout directory)."""

    @abstractmethod
    async def manifest_for(self, reference: str) -> tuple[bytes, str]:
        """The raw bytes and media type of the top-level manifest named `reference`."""

    @abstractmethod
    async def read(self, digest: Digest) -> bytes:
        """Small content (manifests)."""

    @abstractmethod
    def stream(self, digest: Digest) -> AsyncIterator[bytes]:
        """A blob's bytes in chunks."""


class Locks(ABC):
    """Coordination between requests, across every worker and process sharing the storage (and, with a
    database behind it, every replica). The invariants the use-cases build on them:

    - `shared()` is held by what makes content reachable: committing an upload and linking its blob, a
      mount, a HEAD that refreshes a blob's time, a manifest PUT while it checks, refreshes and links
      everything it reaches (children, config, layers) and sets its tag. Times only move forward under
      it.
    - `exclusive()` is held by what removes reachable content: each batch of a collection's sweep
      (which re-checks every candidate's time under it), DELETE of a manifest, a tag or a blob link, and
      repository deletion. So a removal never interleaves with a push that makes the same content
      reachable: a tag never names a manifest that is gone, and nothing a push refreshed after the
      collection's mark is removed.
    - `collector()` admits one collection at a time and raises CollectionRunning for the others.
    - `session(repo, upload_id)` is held by every request that reads, appends to, completes or cancels
      an upload session: one request at a time. It never waits: a second request raises UploadBusy at
      once. Taking it for a session that does not exist succeeds (the caller then finds it unknown)."""

    @abstractmethod
    def collector(self) -> AbstractAsyncContextManager[None]: ...

    @abstractmethod
    def shared(self) -> AbstractAsyncContextManager[None]: ...

    @abstractmethod
    def exclusive(self) -> AbstractAsyncContextManager[None]: ...

    @abstractmethod
    def session(self, repo: RepositoryName, upload_id: str) -> AbstractAsyncContextManager[None]: ...


# Access control. The rules themselves are pure data (domain/access.py); these are what they need from
# outside: a directory of users, a memory of failed logins, and tokens.

class Passwords(ABC):
    """The users who may log in (htpasswd file today; a database later)."""

    @abstractmethod
    async def check(self, user: str, password: str) -> bool:
        """Whether `password` is `user`'s, in time that does not depend on where they differ."""

    @abstractmethod
    async def exists(self, user: str) -> bool: ...

    def remembered(self, user: str, password: str) -> bool:
        """Whether these exact credentials checked out recently and still stand (no password hash is
        computed). Clients that send Basic credentials with every request land here."""
        return False

    @abstractmethod
    async def version(self, user: str) -> str | None:
        """An opaque value that changes when the user's password does (None: no such user). Refresh
        tokens carry it, so a new password ends the sessions of the old one."""


class LoginThrottle(ABC):
    """Failed logins per key (a user and an address; an address), each key with its own burst. Per
    process in memory today;
    shared through a database or Redis when replicas share the traffic."""

    @abstractmethod
    def retry_after(self, keys: Mapping[str, int]) -> float:
        """Seconds before one of `keys` (key -> its burst) may try again; 0 when none is held back."""

    @abstractmethod
    def failed(self, keys: Mapping[str, int]) -> None: ...

    @abstractmethod
    def refund(self, keys: Mapping[str, int]) -> None:
        """Give back what `failed` took: the attempt it counted succeeded."""


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    issued_at: float
    expires_in: int
    refresh_token: str | None = None
    subject: str | None = None


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    subject: str | None
    access: dict[tuple[str, str], frozenset[str]]  # (type, name) -> actions ("*" is every action)
    expires_at: float
    ours: bool  # signed by this registry's own token endpoint, so its subject is one of our users


class TokenIssuer(ABC):
    @abstractmethod
    def issue(self, subject: str | None, access: list[Scope]) -> IssuedToken: ...

    @abstractmethod
    def issue_refresh(self, subject: str, version: str) -> str: ...

    @abstractmethod
    def refresh_subject(self, token: str) -> tuple[str, str] | None:
        """The user a refresh token was issued to and the password version it was issued under, or
        None if it is not one of ours, valid and unexpired."""


class TokenVerifier(ABC):
    @abstractmethod
    def verify(self, token: str) -> VerifiedToken:
        """The token's claims, once its signature, algorithm, issuer, audience and times are checked;
        raises Unauthorized saying what is wrong otherwise."""
