"""Online garbage collection: mark what must stay, then sweep the rest in small locked batches while
clients keep pushing and pulling.

What stays (the mark):
- every manifest a tag points to; without `delete_untagged`, every manifest not tied to a subject;
- every manifest linked within the grace period (a push in progress: children before their index,
  referrers before their subject);
- the children of kept indexes, and manifests whose `subject` is kept (their referrers);
- the config and layers of kept manifests, and every blob used within the grace period.
A manifest with a subject that is gone, untagged and past the grace, goes: artifacts follow their
subject. Repository blob links no kept manifest uses go after the grace; blob bytes go when no
repository's kept manifest references them and nobody used them within the grace.

Why it is safe online: pushes hold `Locks.shared()` while they check and refresh what they use;
each sweep batch holds `Locks.exclusive()` and re-checks every candidate's time before removing it,
so anything a push touched after the mark survives.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..digest import Digest
from ..errors import RegistryError
from ..manifest import Manifest, parse_manifest
from ..names import RepositoryName, Tag
from ..ports import BlobStore, Clock, Locks, RepositoryStore
from ._common import remove_manifest
from .purge_uploads import PurgeUploads

Progress = Callable[[str, int, int], None]
BATCH = 64


@dataclass
class GcReport:
    dry_run: bool
    repository: str | None
    delete_untagged: bool
    manifests_removed: list[str] = field(default_factory=list)  # "name@digest"
    blobs_removed: list[str] = field(default_factory=list)
    layer_links_removed: int = 0
    bytes_freed: int = 0
    uploads_purged: int = 0
    debris_removed: int = 0
    repositories_removed: list[str] = field(default_factory=list)
    duration_seconds: float = 0.0

    def to_json(self) -> dict:
        return {
            "dry_run": self.dry_run, "repository": self.repository, "delete_untagged": self.delete_untagged,
            "manifests_removed": len(self.manifests_removed), "blobs_removed": len(self.blobs_removed),
            "layer_links_removed": self.layer_links_removed, "bytes_freed": self.bytes_freed,
            "uploads_purged": self.uploads_purged, "debris_removed": self.debris_removed,
            "repositories_removed": self.repositories_removed,
            "duration_seconds": round(self.duration_seconds, 3),
            "removed": {"manifests": self.manifests_removed, "blobs": self.blobs_removed},
        }


@dataclass
class _RepoPlan:
    repo: RepositoryName
    in_scope: bool
    manifest_links: dict[Digest, float]
    blob_links: dict[Digest, float]
    keep: set[Digest] = field(default_factory=set)
    uses: set[Digest] = field(default_factory=set)  # blobs and manifests its kept manifests reference


class CollectGarbage:
    def __init__(self, blobs: BlobStore, repos: RepositoryStore, locks: Locks, clock: Clock,
                 grace_seconds: float, purge: PurgeUploads) -> None:
        self.blobs, self.repos, self.locks, self.clock = blobs, repos, locks, clock
        self.grace, self.purge = grace_seconds, purge

    async def __call__(self, repository: RepositoryName | None = None, *, dry_run: bool = False,
                       delete_untagged: bool = False, progress: Progress | None = None) -> GcReport:
        started = time.monotonic()
        report = GcReport(dry_run, str(repository) if repository else None, delete_untagged)
        notify = progress or (lambda phase, done, total: None)
        async with self.locks.collector():
            horizon = self.clock() - self.grace
            plans = await self._mark(repository, delete_untagged, horizon, notify)
            await self._sweep_manifests(plans, horizon, dry_run, report, notify)
            await self._sweep_blob_links(plans, horizon, dry_run, report)
            await self._sweep_blobs(plans, repository, horizon, dry_run, report, notify)
            if repository is None:
                purged = await self.purge(dry_run)
                report.uploads_purged, report.debris_removed = purged.uploads, purged.debris
            await self._drop_empty_repositories(plans, horizon, dry_run, report)
            if not dry_run:
                await self.repos.refresh_catalog()
        report.duration_seconds = time.monotonic() - started
        return report

    # -- mark --------------------------------------------------------------------------------------
    async def _mark(self, scope: RepositoryName | None, delete_untagged: bool, horizon: float,
                    notify: Progress) -> list[_RepoPlan]:
        names = await self.repos.repositories()
        plans = []
        parsed: dict[Digest, Manifest | None] = {}  # manifests shared by repositories are read once
        for i, name in enumerate(names):
            repo = RepositoryName(name)
            plan = _RepoPlan(repo, scope is None or scope == repo,
                             await self.repos.manifest_links(repo), await self.repos.blob_links(repo))
            await self._mark_repository(plan, delete_untagged, horizon, parsed)
            plans.append(plan)
            notify("mark", i + 1, len(names))
        return plans

    async def _mark_repository(self, plan: _RepoPlan, delete_untagged: bool, horizon: float,
                               cache: dict[Digest, Manifest | None]) -> None:
        parsed: dict[Digest, Manifest | None] = {}
        for digest in plan.manifest_links:
            if digest not in cache:
                try:
                    cache[digest] = parse_manifest(await self.blobs.get(digest))
                except RegistryError:
                    cache[digest] = None  # unreadable: keep it, we cannot know what it references
            parsed[digest] = cache[digest]
        tagged = set()
        for tag in await self.repos.tags(plan.repo):
            target = await self.repos.resolve_tag(plan.repo, Tag(tag))
            if target is not None:
                tagged.add(target)
        if not plan.in_scope:
            roots = set(plan.manifest_links)
        else:
            roots = {d for d, linked_at in plan.manifest_links.items()
                     if d in tagged or linked_at >= horizon or parsed[d] is None
                     or (not delete_untagged and parsed[d].subject is None)}
        keep: set[Digest] = set()
        pending = list(roots)
        while pending:
            while pending:
                digest = pending.pop()
                if digest in keep or digest not in plan.manifest_links:
                    continue
                keep.add(digest)
                manifest = parsed[digest]
                if manifest is not None:
                    pending.extend(child.digest for child in manifest.manifests)
            # Referrers of what is kept stay too; that may keep more children, so repeat.
            pending = [d for d, m in parsed.items()
                       if d not in keep and m is not None and m.subject is not None and m.subject.digest in keep]
        plan.keep = keep
        for digest in keep:
            plan.uses.add(digest)
            manifest = parsed[digest]
            if manifest is not None:
                plan.uses.update(manifest.required_blobs())
                plan.uses.update(child.digest for child in manifest.manifests)
        # A blob linked within the grace belongs to a push in progress.
        plan.uses.update(d for d, linked_at in plan.blob_links.items() if linked_at >= horizon)
        if not plan.in_scope:
            plan.uses.update(plan.blob_links)

    # -- sweep -------------------------------------------------------------------------------------
    async def _sweep_manifests(self, plans: list[_RepoPlan], horizon: float, dry_run: bool, report: GcReport,
                               notify: Progress) -> None:
        doomed = [(p.repo, d) for p in plans if p.in_scope for d in p.manifest_links if d not in p.keep]
        for start in range(0, len(doomed), BATCH):
            async with self.locks.exclusive():
                for repo, digest in doomed[start:start + BATCH]:
                    linked_at = (await self.repos.manifest_links(repo)).get(digest) if not dry_run else 0.0
                    if linked_at is None or linked_at >= horizon:
                        continue  # gone already, or pushed again since the mark
                    if not dry_run:
                        await remove_manifest(self.blobs, self.repos, repo, digest)
                    report.manifests_removed.append(f"{repo}@{digest}")
            notify("manifests", min(start + BATCH, len(doomed)), len(doomed))

    async def _sweep_blob_links(self, plans: list[_RepoPlan], horizon: float, dry_run: bool,
                                report: GcReport) -> None:
        for plan in plans:
            if not plan.in_scope:
                continue
            doomed = [d for d, linked_at in plan.blob_links.items() if d not in plan.uses and linked_at < horizon]
            for start in range(0, len(doomed), BATCH):
                async with self.locks.exclusive():
                    current = await self.repos.blob_links(plan.repo)
                    for digest in doomed[start:start + BATCH]:
                        linked_at = current.get(digest)
                        if linked_at is None or linked_at >= horizon:
                            continue
                        if not dry_run:
                            await self.repos.unlink_blob(plan.repo, digest)
                        report.layer_links_removed += 1

    async def _sweep_blobs(self, plans: list[_RepoPlan], scope: RepositoryName | None, horizon: float,
                           dry_run: bool, report: GcReport, notify: Progress) -> None:
        used: set[Digest] = set()
        for plan in plans:
            used |= plan.uses
        if scope is None:
            candidates = [b.digest async for b in self.blobs.all_blobs() if b.digest not in used]
        else:
            # One repository's collection only considers blobs that repository held.
            mine = next((p for p in plans if p.repo == scope), None)
            held = set(mine.manifest_links) | set(mine.blob_links) if mine else set()
            candidates = [d for d in held if d not in used]
        for start in range(0, len(candidates), BATCH):
            async with self.locks.exclusive():
                for digest in candidates[start:start + BATCH]:
                    info = await self.blobs.info(digest)
                    if info is None or info.last_used >= horizon:
                        continue
                    if not dry_run:
                        await self.blobs.delete(digest)
                    report.blobs_removed.append(str(digest))
                    report.bytes_freed += info.size
            notify("blobs", min(start + BATCH, len(candidates)), len(candidates))

    async def _drop_empty_repositories(self, plans: list[_RepoPlan], horizon: float, dry_run: bool,
                                       report: GcReport) -> None:
        """A repository left with nothing (no manifests, no links, no uploads) is removed entirely."""
        if dry_run:
            return
        for plan in plans:
            # Only repositories the sweep may have emptied are re-checked, under the lock.
            if not plan.in_scope or (plan.keep or set(plan.blob_links) & plan.uses):
                continue
            async with self.locks.exclusive():
                if await self.repos.manifest_links(plan.repo) or await self.repos.blob_links(plan.repo):
                    continue
                if await self.blobs.count_uploads(plan.repo):
                    continue
                await self.repos.delete_repository(plan.repo)
                report.repositories_removed.append(str(plan.repo))
