from __future__ import annotations

from ..digest import Digest
from ..errors import ManifestUnknown
from ..names import Reference, RepositoryName
from ..ports import BlobStore, Locks, RepositoryStore
from ._common import remove_manifest, require_repository, stored_references


class DeleteManifest:
    """By digest: remove the manifest from the repository with every tag on it. By tag: remove the tag
    only. The bytes stay until garbage collection.

    Under Locks.exclusive(): a manifest PUT (which links, then tags, under the shared side) happens
    wholly before or wholly after, so a tag never names a manifest this removed."""

    def __init__(self, blobs: BlobStore, repos: RepositoryStore, locks: Locks) -> None:
        self.blobs, self.repos, self.locks = blobs, repos, locks

    async def __call__(self, repo: RepositoryName, reference: Reference) -> None:
        async with self.locks.exclusive():
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
            refs = await stored_references(self.blobs, reference)
            await remove_manifest(self.repos, repo, reference, refs.subject if refs else None,
                                  await self.repos.tags(repo))
