from __future__ import annotations

from ..errors import NameUnknown
from ..names import RepositoryName, Tag
from ..ports import BlobStore, Locks, RepositoryStore
from ..references import parents_first
from ._common import stored_references


class DeleteRepository:
    """Remove a whole repository: tags, manifests, links, upload sessions. Blob bytes other repositories
    use stay; the rest goes at the next garbage collection.

    The order is the same on every store and keeps the repository whole to readers at every step, so a
    crash midway leaves a smaller repository, never a broken one, and a repeated DELETE finishes it:
    tags first (each goes atomically), then manifests with indexes before their children and referrers
    before their subjects, then upload sessions, then what is left (links, referrer records, structure,
    catalog entry). All under Locks.exclusive(), so no push or tag DELETE interleaves."""

    def __init__(self, blobs: BlobStore, repos: RepositoryStore, locks: Locks) -> None:
        self.blobs, self.repos, self.locks = blobs, repos, locks

    async def __call__(self, repo: RepositoryName) -> None:
        async with self.locks.exclusive():
            if not await self.repos.exists(repo):
                raise NameUnknown(f"repository {repo} is not known to this registry", detail={"name": str(repo)})
            for tag in await self.repos.tags(repo):
                await self.repos.delete_tag(repo, Tag(tag))
            manifests = await self.repos.manifest_links(repo)
            refs = {digest: await stored_references(self.blobs, digest) for digest in manifests}
            for digest in parents_first(manifests, refs):
                await self.repos.unlink_manifest(repo, digest)
            for upload_id in await self.blobs.uploads(repo):
                await self.blobs.cancel_upload(repo, upload_id)
            await self.repos.delete_repository(repo)
