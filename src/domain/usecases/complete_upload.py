from __future__ import annotations

from collections.abc import AsyncIterator

from ..digest import Digest, Hasher
from ..errors import BlobUploadInvalid, BlobUploadUnknown, DigestInvalid
from ..names import RepositoryName
from ..ports import BlobStore, Locks, RepositoryStore
from ._common import HasherCache, check_upload_id
from .append_upload import AppendUpload


class CompleteUpload:
    """Finish a session (PUT ?digest=), with an optional last chunk. Commit order, as in Distribution:
    verify the digest, move the bytes into content-addressed storage, link into the repository, end the
    session. A wrong digest stores nothing and ends the session.

    The whole request holds the session's lock, so no other request appends between the hashing and the
    commit; the store then checks that what it moves into place is exactly the bytes hashed. The commit
    and the link happen under Locks.shared() and mark the blob as used now: a collection running
    alongside never sees the committed blob unlinked or old."""

    def __init__(self, blobs: BlobStore, repos: RepositoryStore, hashers: HasherCache,
                 append: AppendUpload, locks: Locks) -> None:
        self.blobs, self.repos, self.hashers, self.append, self.locks = blobs, repos, hashers, append, locks

    async def __call__(self, repo: RepositoryName, upload_id: str, digest: Digest,
                       chunks: AsyncIterator[bytes] | None = None, start: int | None = None) -> int:
        check_upload_id(upload_id)
        async with self.locks.session(repo, upload_id):
            if chunks is not None:
                size = await self.append.append_locked(repo, upload_id, chunks, start)
            else:
                stored = await self.blobs.upload_size(repo, upload_id)
                if stored is None:
                    raise BlobUploadUnknown(
                        f"upload {upload_id} is not open in {repo} (finished, cancelled or expired)",
                        detail={"upload": upload_id})
                size = stored
            actual = await self._digest(repo, upload_id, size, digest.algorithm)
            if actual != digest:
                await self.blobs.cancel_upload(repo, upload_id)
                self.hashers.drop(repo, upload_id)
                raise DigestInvalid(f"upload {upload_id} has digest {actual}, not the {digest} the client declared",
                                    detail={"declared": str(digest), "actual": str(actual)})
            async with self.locks.shared():
                await self.blobs.commit_upload(repo, upload_id, digest, size)
                await self.repos.link_blob(repo, digest)
            return size

    async def _digest(self, repo: RepositoryName, upload_id: str, size: int, algorithm: str) -> Digest:
        hasher = self.hashers.take(repo, upload_id, size)
        if hasher is None or hasher.algorithm != algorithm:
            hasher = Hasher(algorithm)
            async for chunk in self.blobs.read_upload(repo, upload_id):
                hasher.update(chunk)
            if hasher.size != size:
                raise BlobUploadInvalid(f"upload {upload_id} changed while it was being read",
                                        detail={"upload": upload_id})
        return hasher.digest()
