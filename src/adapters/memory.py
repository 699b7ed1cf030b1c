"""In-memory adapters, for unit tests and scripts. They pass the same contract suite as the filesystem."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator

from domain.digest import Digest
from domain.errors import BlobUnknown, BlobUploadUnknown
from domain.names import RepositoryName, Tag
from domain.ports import BlobStore, RepositoryStore

_CHUNK = 1 << 20


class MemoryBlobStore(BlobStore):
    def __init__(self) -> None:
        self.blobs: dict[Digest, bytes] = {}
        self.uploads: dict[tuple[str, str], bytearray] = {}
        self.upload_started: dict[tuple[str, str], float] = {}

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

    async def delete(self, digest: Digest) -> bool:
        return self.blobs.pop(digest, None) is not None

    async def create_upload(self, repo: RepositoryName, upload_id: str, started_at: float) -> None:
        self.uploads[(repo.value, upload_id)] = bytearray()
        self.upload_started[(repo.value, upload_id)] = started_at

    async def upload_size(self, repo: RepositoryName, upload_id: str) -> int | None:
        data = self.uploads.get((repo.value, upload_id))
        return None if data is None else len(data)

    def _session(self, repo: RepositoryName, upload_id: str) -> bytearray:
        data = self.uploads.get((repo.value, upload_id))
        if data is None:
            raise BlobUploadUnknown(f"upload {upload_id} is not open in {repo}")
        return data

    async def append_upload(self, repo: RepositoryName, upload_id: str, chunks: AsyncIterator[bytes]) -> int:
        data = self._session(repo, upload_id)
        async for chunk in chunks:
            data += chunk
        return len(data)

    async def read_upload(self, repo: RepositoryName, upload_id: str) -> AsyncIterator[bytes]:
        data = bytes(self._session(repo, upload_id))
        for offset in range(0, len(data), _CHUNK):
            yield data[offset:offset + _CHUNK]

    async def commit_upload(self, repo: RepositoryName, upload_id: str, digest: Digest) -> None:
        data = self._session(repo, upload_id)
        self.blobs.setdefault(digest, bytes(data))
        await self.cancel_upload(repo, upload_id)

    async def cancel_upload(self, repo: RepositoryName, upload_id: str) -> bool:
        self.upload_started.pop((repo.value, upload_id), None)
        return self.uploads.pop((repo.value, upload_id), None) is not None


class MemoryRepositoryStore(RepositoryStore):
    def __init__(self) -> None:
        self.layers: dict[str, set[Digest]] = defaultdict(set)
        self.manifests: dict[str, set[Digest]] = defaultdict(set)
        self.tag_map: dict[str, dict[str, Digest]] = defaultdict(dict)
        self.referrer_map: dict[tuple[str, Digest], set[Digest]] = defaultdict(set)

    async def exists(self, repo: RepositoryName) -> bool:
        return repo.value in self.layers or repo.value in self.manifests

    async def repositories(self) -> list[str]:
        return sorted(set(self.layers) | set(self.manifests))

    async def link_blob(self, repo: RepositoryName, digest: Digest) -> None:
        self.layers[repo.value].add(digest)

    async def blob_linked(self, repo: RepositoryName, digest: Digest) -> bool:
        return digest in self.layers.get(repo.value, ())

    async def unlink_blob(self, repo: RepositoryName, digest: Digest) -> bool:
        linked = self.layers.get(repo.value, set())
        if digest not in linked:
            return False
        linked.discard(digest)
        return True

    async def link_manifest(self, repo: RepositoryName, digest: Digest) -> None:
        self.manifests[repo.value].add(digest)

    async def manifest_linked(self, repo: RepositoryName, digest: Digest) -> bool:
        return digest in self.manifests.get(repo.value, ())

    async def unlink_manifest(self, repo: RepositoryName, digest: Digest) -> bool:
        linked = self.manifests.get(repo.value, set())
        if digest not in linked:
            return False
        linked.discard(digest)
        return True

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
