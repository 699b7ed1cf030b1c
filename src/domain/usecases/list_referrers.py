from __future__ import annotations

from ..digest import Digest
from ..errors import RegistryError
from ..manifest import Descriptor, build_index, parse_stored
from ..names import RepositoryName
from ..ports import BlobStore, RepositoryStore


class ListReferrers:
    """Manifests in a repository whose `subject` is the given digest, as an OCI index, optionally only
    those of one artifactType. Unknown subjects simply have no referrers."""

    def __init__(self, blobs: BlobStore, repos: RepositoryStore) -> None:
        self.blobs, self.repos = blobs, repos

    async def __call__(self, repo: RepositoryName, subject: Digest, artifact_type: str | None = None) -> bytes:
        found: list[Descriptor] = []
        for digest in sorted(await self.repos.referrers(repo, subject)):
            if not await self.repos.manifest_linked(repo, digest):
                continue
            try:
                descriptor = parse_stored(await self.blobs.get(digest)).referrer_descriptor()
            except RegistryError:
                continue
            descriptor = Descriptor(descriptor.media_type, digest, descriptor.size,
                                    descriptor.artifact_type, descriptor.annotations)
            if artifact_type is None or descriptor.artifact_type == artifact_type:
                found.append(descriptor)
        return build_index(found)
