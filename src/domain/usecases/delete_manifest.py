from __future__ import annotations

from ..digest import Digest
from ..errors import BlobUnknown, ManifestUnknown, RegistryError
from ..manifest import parse_manifest
from ..names import Reference, RepositoryName, Tag
from ..ports import BlobStore, RepositoryStore
from ._common import require_repository


class DeleteManifest:
    """By digest: remove the manifest from the repository with every tag on it. By tag: remove the tag
    only. The bytes stay until garbage collection."""

    def __init__(self, blobs: BlobStore, repos: RepositoryStore) -> None:
        self.blobs, self.repos = blobs, repos

    async def __call__(self, repo: RepositoryName, reference: Reference) -> None:
        if not isinstance(reference, Digest):
            if not await self.repos.delete_tag(repo, reference):
                await require_repository(self.repos, repo)
                raise ManifestUnknown(f"tag {reference} is not in repository {repo}",
                                      detail={"tag": str(reference)})
            return
        if not await self.repos.manifest_linked(repo, reference):
            await require_repository(self.repos, repo)
            raise ManifestUnknown(f"manifest {reference} is not in repository {repo}",
                                  detail={"digest": str(reference)})
        for tag in await self.repos.tags(repo):
            if await self.repos.resolve_tag(repo, Tag(tag)) == reference:
                await self.repos.delete_tag(repo, Tag(tag))
        await self._forget_subject(repo, reference)
        await self.repos.unlink_manifest(repo, reference)

    async def _forget_subject(self, repo: RepositoryName, digest: Digest) -> None:
        try:
            manifest = parse_manifest(await self.blobs.get(digest))
        except (BlobUnknown, RegistryError):
            return
        if manifest.subject is not None:
            await self.repos.remove_referrer(repo, manifest.subject.digest, digest)
