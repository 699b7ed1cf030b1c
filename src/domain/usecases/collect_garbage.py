"""Online garbage collection: mark what must stay, then sweep the rest in small locked batches while
clients keep pushing and pulling.

What stays (the mark):
- every manifest a tag points to; without `delete_untagged`, every manifest (an artifact whose subject
  is absent too: referrers may be pushed before their subject);
- every manifest linked within the grace period (a push in progress: children before their index,
  referrers before their subject);
- the children of kept indexes, and manifests whose `subject` is kept (their referrers);
- the config and layers of kept manifests, and every blob used within the grace period;
- everything in a repository holding a manifest the collector cannot read (bytes gone, not JSON, an
  unknown schema): it cannot know what that manifest references, so it frees nothing there and names
  the manifest in the report. Stored manifests are read without request limits, schema 1 included.
With `delete_untagged`, untagged manifests past the grace go unless a kept manifest reaches them: an
artifact follows its subject. Repository blob links no kept manifest uses go after the grace; blob bytes
go when no repository's kept manifest references them and nobody used them within the grace.

Why it is safe online: everything that makes content reachable (an upload's commit, a mount, a HEAD,
a manifest PUT with everything it reaches transitively) marks it as used now under `Locks.shared()`;
each sweep batch holds `Locks.exclusive()` and re-checks every candidate's time just before removing it,
so anything a push touched after the mark survives. A manifest PUT by tag links the manifest before it
sets the tag, so a manifest untagged at the mark whose link is still old under the lock has no tag.

Crash safety: manifests go parents first (an index before its children, a referrer before its
subject), then blob links, then blob bytes; a crash between any two steps leaves nothing reachable
that points at something removed, and the next collection finishes the work.

Cost: the mark reads each repository's links and tags once and each manifest once (kept in memory in
compact form, shared across repositories); the sweep costs one time check per candidate.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..digest import Digest
from ..names import RepositoryName, Tag
from ..ports import BlobStore, Clock, Locks, RepositoryStore
from ..references import References, parents_first
from ._common import remove_manifest, stored_references
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
    unreadable_manifests: list[str] = field(default_factory=list)  # "name@digest": kept, with all they may use
    # What the storage holds after a whole-registry collection (what it would hold, for a dry run): the
    # walk the collection makes anyway, so that metrics need none of their own. None for one repository.
    stored_blobs: int | None = None
    stored_bytes: int | None = None
    stored_manifests: int | None = None
    duration_seconds: float = 0.0

    def to_json(self) -> dict:
        return {
            "dry_run": self.dry_run, "repository": self.repository, "delete_untagged": self.delete_untagged,
            "manifests_removed": len(self.manifests_removed), "blobs_removed": len(self.blobs_removed),
            "layer_links_removed": self.layer_links_removed, "bytes_freed": self.bytes_freed,
            "uploads_purged": self.uploads_purged, "debris_removed": self.debris_removed,
            "repositories_removed": self.repositories_removed,
            "unreadable_manifests": self.unreadable_manifests,
            "stored": {"blobs": self.stored_blobs, "bytes": self.stored_bytes, "manifests": self.stored_manifests},
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
    doomed: list[Digest] = field(default_factory=list)  # manifests to remove, parents first


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
            refs: dict[Digest, References | None] = {}
            plans = await self._mark(repository, delete_untagged, horizon, refs, report, notify)
            await self._sweep_manifests(plans, refs, horizon, dry_run, report, notify)
            await self._sweep_blob_links(plans, horizon, dry_run, report)
            await self._sweep_blobs(plans, repository, horizon, dry_run, report, notify)
            if repository is None:
                purged = await self.purge(dry_run)
                report.uploads_purged, report.debris_removed = purged.uploads, purged.debris
            await self._drop_empty_repositories(plans, dry_run, report)
            if not dry_run:
                await self.repos.refresh_catalog()
        report.duration_seconds = time.monotonic() - started
        return report

    # -- mark --------------------------------------------------------------------------------------
    async def _mark(self, scope: RepositoryName | None, delete_untagged: bool, horizon: float,
                    refs: dict[Digest, References | None], report: GcReport, notify: Progress) -> list[_RepoPlan]:
        names = await self.repos.repositories()
        notify("mark", 0, len(names))
        plans = []
        for i, name in enumerate(names):
            repo = RepositoryName(name)
            plan = _RepoPlan(repo, scope is None or scope == repo,
                             await self.repos.manifest_links(repo), await self.repos.blob_links(repo))
            await self._mark_repository(plan, delete_untagged, horizon, refs, report)
            plans.append(plan)
            notify("mark", i + 1, len(names))
        return plans

    async def _mark_repository(self, plan: _RepoPlan, delete_untagged: bool, horizon: float,
                               refs: dict[Digest, References | None], report: GcReport) -> None:
        unreadable = []
        for digest in plan.manifest_links:
            if digest not in refs:  # manifests shared by repositories are read once
                refs[digest] = await stored_references(self.blobs, digest)
            if refs[digest] is None:
                unreadable.append(digest)
        if unreadable and plan.in_scope:
            report.unreadable_manifests.extend(f"{plan.repo}@{d}" for d in sorted(unreadable))
            plan.in_scope = False  # it might use anything here: keep it all
        tagged = set()
        for tag in await self.repos.tags(plan.repo):
            target = await self.repos.resolve_tag(plan.repo, Tag(tag))
            if target is not None:
                tagged.add(target)
        if not plan.in_scope:
            roots = set(plan.manifest_links)
        else:
            roots = {d for d, linked_at in plan.manifest_links.items()
                     if d in tagged or linked_at >= horizon or not delete_untagged}
        referrers: dict[Digest, list[Digest]] = {}
        for digest in plan.manifest_links:
            ref = refs[digest]
            if ref is not None and ref.subject is not None:
                referrers.setdefault(ref.subject, []).append(digest)
        keep: set[Digest] = set()
        pending = list(roots)
        while pending:  # kept: the roots, children of kept indexes, referrers of kept manifests
            digest = pending.pop()
            if digest in keep or digest not in plan.manifest_links:
                continue
            keep.add(digest)
            ref = refs[digest]
            if ref is not None:
                pending.extend(ref.children)
            pending.extend(referrers.get(digest, ()))
        plan.keep = keep
        for digest in keep:
            plan.uses.add(digest)
            ref = refs[digest]
            if ref is not None:
                plan.uses.update(ref.blobs)
                plan.uses.update(ref.children)
        # A blob linked within the grace belongs to a push in progress.
        plan.uses.update(d for d, linked_at in plan.blob_links.items() if linked_at >= horizon)
        if not plan.in_scope:
            plan.uses.update(plan.blob_links)
        else:
            plan.doomed = parents_first((d for d in plan.manifest_links if d not in keep), refs)

    # -- sweep -------------------------------------------------------------------------------------
    async def _sweep_manifests(self, plans: list[_RepoPlan], refs: dict[Digest, References | None], horizon: float,
                               dry_run: bool, report: GcReport, notify: Progress) -> None:
        doomed = [(p, d) for p in plans for d in p.doomed]
        rescued: set[tuple[RepositoryName, Digest]] = set()
        for start in range(0, len(doomed), BATCH):
            async with self.locks.exclusive():
                for plan, digest in doomed[start:start + BATCH]:
                    if not dry_run:
                        linked_at = await self.repos.manifest_link_time(plan.repo, digest)
                        if linked_at is None:
                            continue  # gone already
                        if (linked_at >= horizon or (plan.repo, digest) in rescued
                                or await self._subject_reached(plan.repo, digest, refs, horizon, rescued)):
                            self._rescue(plan, digest, refs, rescued)
                            continue
                        ref = refs[digest]
                        # Untagged at the mark, and not linked since: no tag can name it (see the module doc).
                        await remove_manifest(self.repos, plan.repo, digest, ref.subject if ref else None, ())
                    report.manifests_removed.append(f"{plan.repo}@{digest}")
            notify("manifests", min(start + BATCH, len(doomed)), len(doomed))

    async def _subject_reached(self, repo: RepositoryName, digest: Digest, refs: dict[Digest, References | None],
                               horizon: float, rescued: set[tuple[RepositoryName, Digest]]) -> bool:
        """Whether a push reached the manifest's subject (or its subject's subject...) since the mark: a
        referrer of something kept stays, and a push refreshes what it reaches, not their referrers."""
        seen = {digest}
        ref = refs.get(digest)
        while ref is not None and ref.subject is not None and ref.subject not in seen:
            subject = ref.subject
            seen.add(subject)
            if (repo, subject) in rescued:
                return True
            linked_at = await self.repos.manifest_link_time(repo, subject)
            if linked_at is not None and linked_at >= horizon:
                return True
            ref = refs.get(subject)
        return False

    @staticmethod
    def _rescue(plan: _RepoPlan, digest: Digest, refs: dict[Digest, References | None],
                rescued: set[tuple[RepositoryName, Digest]]) -> None:
        """Keep a manifest the mark doomed, with everything it reaches: its children (later in the sweep's
        order) and the blobs of all of them (the blob sweeps read `uses` after this one)."""
        pending = [digest]
        while pending:
            current = pending.pop()
            if (plan.repo, current) in rescued:
                continue
            rescued.add((plan.repo, current))
            plan.uses.add(current)
            ref = refs.get(current)
            if ref is not None:
                plan.uses.update(ref.blobs)
                plan.uses.update(ref.children)
                pending.extend(ref.children)

    async def _sweep_blob_links(self, plans: list[_RepoPlan], horizon: float, dry_run: bool,
                                report: GcReport) -> None:
        for plan in plans:
            if not plan.in_scope:
                continue
            doomed = [d for d, linked_at in plan.blob_links.items() if d not in plan.uses and linked_at < horizon]
            for start in range(0, len(doomed), BATCH):
                async with self.locks.exclusive():
                    for digest in doomed[start:start + BATCH]:
                        if not dry_run:
                            linked_at = await self.repos.blob_link_time(plan.repo, digest)
                            if linked_at is None or linked_at >= horizon:
                                continue
                            await self.repos.unlink_blob(plan.repo, digest)
                        report.layer_links_removed += 1
    async def _sweep_blobs(self, plans: list[_RepoPlan], scope: RepositoryName | None, horizon: float,
                           dry_run: bool, report: GcReport, notify: Progress) -> None:
        used: set[Digest] = set()
        for plan in plans:
            used |= plan.uses
        if scope is None:
            candidates = []
            stored_blobs = stored_bytes = 0
            async for blob in self.blobs.all_blobs():
                stored_blobs += 1
                stored_bytes += blob.size
                if blob.digest not in used:
                    candidates.append(blob.digest)
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
        if scope is None:
            report.stored_blobs = stored_blobs - len(report.blobs_removed)
            report.stored_bytes = stored_bytes - report.bytes_freed
            manifests = {d for p in plans for d in p.manifest_links}
            report.stored_manifests = len(manifests - {Digest.parse(m.split("@", 1)[1])
                                                        for m in report.manifests_removed})

    async def _drop_empty_repositories(self, plans: list[_RepoPlan], dry_run: bool, report: GcReport) -> None:
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
