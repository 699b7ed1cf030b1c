from __future__ import annotations

from ..digest import Digest
from ..errors import ManifestUnknown
from ..names import Reference, RepositoryName
from ..ports import BlobStore, RepositoryStore
from ._common import remove_manifest, require_repository


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
        await remove_manifest(self.blobs, self.repos, repo, reference)
