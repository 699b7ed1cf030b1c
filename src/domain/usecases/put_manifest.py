from __future__ import annotations

from dataclasses import dataclass

from ..digest import Digest
from ..errors import DigestInvalid, ManifestBlobUnknown, TooLarge
from ..manifest import Manifest, parse_manifest
from ..names import Reference, RepositoryName, Tag
from ..ports import BlobStore, Locks, RepositoryStore
from ._common import Limits


@dataclass(frozen=True, slots=True)
class PutManifestResult:
    digest: Digest
    subject: Digest | None


class PutManifest:
    """Store a manifest by tag or digest. Its exact bytes are kept and its digest is theirs; everything it
    references (config, layers, child manifests) must already be in the repository. A missing `subject`
    is allowed: referrers may be pushed before what they refer to."""

    def __init__(self, blobs: BlobStore, repos: RepositoryStore, limits: Limits, locks: Locks) -> None:
        self.blobs, self.repos, self.limits, self.locks = blobs, repos, limits, locks

    async def __call__(self, repo: RepositoryName, reference: Reference, raw: bytes,
                       content_type: str | None) -> PutManifestResult:
        if len(raw) > self.limits.max_manifest_bytes:
            raise TooLarge(f"manifest is {len(raw)} bytes; the limit is {self.limits.max_manifest_bytes} "
                           "(REGISTRY_MAX_MANIFEST_BYTES)")
        manifest = parse_manifest(raw, content_type, max_references=self.limits.max_manifest_references)
        digest = manifest.digest
        if isinstance(reference, Digest):
            actual = Digest.of(raw, reference.algorithm)
            if actual != reference:
                raise DigestInvalid(f"manifest body has digest {actual}, not {reference} from the URL",
                                    detail={"declared": str(reference), "actual": str(actual)})
            digest = reference
        # Under the shared lock, what this manifest uses is checked and marked as used now, so a
        # collection running alongside cannot remove it between the check and the write.
        async with self.locks.shared():
            await self._check_and_touch_references(repo, manifest)
            await self.blobs.put(digest, raw)
            await self.blobs.touch(digest)
            await self.repos.link_manifest(repo, digest)
            if manifest.subject is not None:
                await self.repos.add_referrer(repo, manifest.subject.digest, digest)
            if isinstance(reference, Tag):
                await self.repos.set_tag(repo, reference, digest)
        return PutManifestResult(digest, manifest.subject.digest if manifest.subject else None)

    async def _check_and_touch_references(self, repo: RepositoryName, manifest: Manifest) -> None:
        for needed in manifest.required_blobs():
            if not await self.repos.blob_linked(repo, needed) or not await self.blobs.touch(needed):
                raise ManifestBlobUnknown(f"manifest references blob {needed}, which is not in {repo}: "
                                          "push the blob first", detail={"digest": str(needed)})
            await self.repos.link_blob(repo, needed)
        for child in manifest.manifests:
            if not await self.repos.manifest_linked(repo, child.digest):
                raise ManifestBlobUnknown(f"index references manifest {child.digest}, which is not in {repo}: "
                                          "push the child manifests first", detail={"digest": str(child.digest)})
            await self.blobs.touch(child.digest)
            await self.repos.link_manifest(repo, child.digest)
