from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..digest import Digest
from ..errors import DigestInvalid, ManifestBlobUnknown, TooLarge
from ..manifest import parse_manifest
from ..names import Reference, RepositoryName, Tag
from ..ports import BlobStore, Locks, RepositoryStore
from ._common import Limits, stored_references


@dataclass(frozen=True, slots=True)
class PutManifestResult:
    digest: Digest
    subject: Digest | None


class PutManifest:
    """Store a manifest by tag or digest. Its exact bytes are kept and its digest is theirs; everything it
    references (config, layers, child manifests) must already be in the repository. A missing `subject`
    is allowed: referrers may be pushed before what they refer to.

    Under Locks.shared(), before it answers, the push marks as used now everything the manifest reaches,
    transitively (an index's children, their children, all their configs and layers), then links it and
    sets its tag. A collection that is already running re-checks those times under the exclusive side
    before it removes anything, so it keeps the whole image even if its mark saw the children as old and
    untagged."""

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
        async with self.locks.shared():
            await self._check_and_touch_blobs(repo, manifest.required_blobs())
            await self._check_and_touch_children(repo, [child.digest for child in manifest.manifests])
            await self.blobs.put(digest, raw)
            await self.blobs.touch(digest)
            await self.repos.link_manifest(repo, digest)
            if manifest.subject is not None:
                await self.repos.add_referrer(repo, manifest.subject.digest, digest)
            if isinstance(reference, Tag):
                await self.repos.set_tag(repo, reference, digest)
        return PutManifestResult(digest, manifest.subject.digest if manifest.subject else None)

    async def _check_and_touch_blobs(self, repo: RepositoryName, needed: Iterable[Digest]) -> None:
        for blob in needed:
            if not await self.repos.blob_linked(repo, blob) or not await self.blobs.touch(blob):
                raise ManifestBlobUnknown(f"manifest references blob {blob}, which is not in {repo}: "
                                          "push the blob first", detail={"digest": str(blob)})
            await self.repos.link_blob(repo, blob)

    async def _check_and_touch_children(self, repo: RepositoryName, children: list[Digest]) -> None:
        seen: set[Digest] = set()
        while children:
            child = children.pop()
            if child in seen:
                continue
            seen.add(child)
            refs = None
            if await self.repos.manifest_linked(repo, child) and await self.blobs.touch(child):
                refs = await stored_references(self.blobs, child)
            if refs is None:
                raise ManifestBlobUnknown(f"index references manifest {child}, which is not in {repo}: "
                                          "push the child manifests first", detail={"digest": str(child)})
            await self.repos.link_manifest(repo, child)
            await self._check_and_touch_blobs(repo, refs.blobs)
            children.extend(refs.children)
