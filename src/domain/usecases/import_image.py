from __future__ import annotations

from dataclasses import dataclass

from ..digest import Digest
from ..manifest import parse_manifest
from ..names import RepositoryName, Tag
from ..ports import BlobStore, ImageSource, RepositoryStore
from .put_manifest import PutManifest
from .upload_blob import UploadBlob


@dataclass(frozen=True, slots=True)
class ImportReport:
    digest: Digest
    manifests: int
    blobs_uploaded: int
    blobs_present: int
    bytes_uploaded: int


class ImportImage:
    """Copy one image (or index with its children) from an ImageSource into a repository, through the
    same use-cases an HTTP push uses: blobs first, child manifests next, the tagged manifest last."""

    def __init__(self, blobs: BlobStore, repos: RepositoryStore, upload: UploadBlob, put: PutManifest) -> None:
        self.blobs, self.repos, self.upload, self.put = blobs, repos, upload, put

    async def __call__(self, source: ImageSource, source_ref: str, repo: RepositoryName, tag: Tag) -> ImportReport:
        raw, media_type = await source.manifest_for(source_ref)
        counts = {"manifests": 0, "uploaded": 0, "present": 0, "bytes": 0}
        digest = await self._copy(source, repo, raw, media_type, tag, counts)
        return ImportReport(digest, counts["manifests"], counts["uploaded"], counts["present"], counts["bytes"])

    async def _copy(self, source: ImageSource, repo: RepositoryName, raw: bytes, media_type: str | None,
                    tag: Tag | None, counts: dict[str, int]) -> Digest:
        manifest = parse_manifest(raw, media_type)
        for child in manifest.manifests:
            await self._copy(source, repo, await source.read(child.digest), child.media_type, None, counts)
        for needed in manifest.required_blobs():
            if await self.blobs.touch(needed):
                await self.repos.link_blob(repo, needed)
                counts["present"] += 1
                continue
            counts["bytes"] += await self.upload(repo, needed, source.stream(needed))
            counts["uploaded"] += 1
        result = await self.put(repo, tag if tag is not None else manifest.digest, raw, manifest.media_type)
        counts["manifests"] += 1
        return result.digest
