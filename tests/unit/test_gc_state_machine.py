"""Garbage collection as a state machine: push images, indexes (nested too) and referrers, tag, untag,
delete manifests and repositories, mount, move the clock, collect; and run one operation inside another
(a push inside a collection's mark or sweep, a DELETE inside a PUT of the same bytes).

The rules are biased so collections remove things: most collections come after the clock moved past the
grace, with `delete_untagged`, and every case ends with one. What must always hold:
- every tag names a manifest that is whole (bytes hash to the digest; config, layers and children
  linked, stored and hashing to their digests), and every linked manifest is whole too;
- tags are exactly the acknowledged ones (none lost, none left behind by a deletion);
- every stored blob hashes to its name;
- a collection removes nothing used within the grace (by the model's clock: uploads, mounts, pushes and
  everything a pushed manifest reaches) and nothing the documented rules keep; run alone, it removes
  exactly what those rules do not keep, and a dry run reports exactly that.
The model reads the registry only through its ports and use-cases."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, event, settings, target
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from domain.digest import Digest
from domain.errors import ManifestBlobUnknown, RegistryError
from domain.manifest import Manifest, parse_manifest
from domain.names import RepositoryName, Tag
from tests.support import OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST, sha256

from .gc_support import GRACE, FakeClock, chunks_of, registry

REPOS = ["a", "b/c"]
TAGS = ["t1", "t2", "t3"]
LAYERS = [f"layer-{i}".encode() * (i + 1) for i in range(6)]
EMPTY = b"{}"
# Collections and removals seen over a run; read by whoever measures the machine's strength.
STATS: Counter[str] = Counter()
CASE_EVENTS = ("collections", "removed manifests", "removed blobs", "removed manifests, final collection included",
               "ran inside")


def run(coro):
    return asyncio.run(coro)


@dataclass
class Outcome:
    value: Any = None
    error: RegistryError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


async def attempt(op: Callable[[], Awaitable[Any]]) -> Outcome:
    """A use-case call whose refusal (a RegistryError) is an answer, not a failure of the test."""
    try:
        return Outcome(await op())
    except RegistryError as e:
        return Outcome(error=e)


class Interleaver:
    """Runs a second operation inside a first one: at the first's Nth port call, the second starts as a
    task and runs until it finishes or waits for a lock; then the first goes on. Deterministic (one event
    loop; memory adapters never wait on I/O), so hypothesis shrinks N like any other choice."""

    def __init__(self, *stores: object) -> None:
        self.countdown = 0
        self.second: Callable[[], Awaitable[Outcome]] | None = None
        self.task: asyncio.Future[Outcome] | None = None
        for store in stores:
            for name, method in inspect.getmembers(store, inspect.iscoroutinefunction):
                if not name.startswith("_"):
                    setattr(store, name, self._wrap(method))

    def _wrap(self, method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def port_call(*args: Any, **kwargs: Any) -> Any:
            await self._maybe_start_second()
            return await method(*args, **kwargs)
        return port_call

    async def _maybe_start_second(self) -> None:
        if self.second is None:
            return
        self.countdown -= 1
        if self.countdown > 0:
            return
        second, self.second = self.second, None
        self.task = asyncio.ensure_future(second())
        for _ in range(20):  # let it run until it is done or blocked on a lock the first one holds
            if self.task.done():
                return
            await asyncio.sleep(0)

    async def run(self, first: Callable[[], Awaitable[Outcome]], second: Callable[[], Awaitable[Outcome]],
                  at: int) -> tuple[Outcome, Outcome, bool]:
        """Both outcomes, and whether the second really ran inside the first."""
        self.second, self.countdown, self.task = second, at, None
        try:
            first_outcome = await first()
        finally:
            self.second = None
        inside = self.task is not None
        second_outcome = await (self.task if self.task is not None else second())
        return first_outcome, second_outcome, inside


class GarbageCollection(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.uc = registry(self.clock)
        self.blobs, self.repos = self.uc.adapters.blobs(), self.uc.adapters.repos()
        self.interleaver = Interleaver(self.blobs, self.repos)
        # The model: what the test was told (acknowledged writes) and when things were last used.
        self.tags: dict[tuple[str, str], str] = {}
        self.links: dict[str, dict[str, float]] = {r: {} for r in REPOS}  # manifest links, last linked
        self.blob_links: dict[str, dict[str, float]] = {r: {} for r in REPOS}
        self.used: dict[str, float] = {}  # blobs and manifest bytes, last used by an upload, mount or push
        self.known: dict[str, Manifest] = {}  # every manifest pushed, by digest
        self.counter = 0
        self.case: Counter[str] = Counter()

    # -- the model's bookkeeping -------------------------------------------------------------------
    def _reach(self, digest: str) -> set[str]:
        """The manifest, its children (transitively), and all their configs and layers."""
        seen, pending = set(), [digest]
        while pending:
            d = pending.pop()
            if d in seen:
                continue
            seen.add(d)
            manifest = self.known.get(d)
            if manifest is not None:
                seen.update(str(b) for b in manifest.required_blobs())
                pending.extend(str(c.digest) for c in manifest.manifests)
        return seen

    def _uploaded(self, repo: str, blob: bytes) -> None:
        now, digest = self.clock(), sha256(blob)
        self.blob_links[repo][digest] = now
        self.used[digest] = now

    def _pushed(self, repo: str, raw: bytes, tag: str | None) -> str:
        """A manifest PUT was acknowledged: it and everything it reaches count as used now."""
        now, manifest = self.clock(), parse_manifest(raw)
        digest = str(manifest.digest)
        self.known[digest] = manifest
        self.links[repo][digest] = now
        for child in manifest.manifests:
            self.links[repo][str(child.digest)] = now
        for blob in manifest.required_blobs():
            self.blob_links[repo][str(blob)] = now
        for d in self._reach(digest):
            self.used[d] = now
        if tag:
            self.tags[(repo, tag)] = digest
        return digest

    def _forget_manifest(self, repo: str, digest: str) -> None:
        self.links[repo].pop(digest, None)
        for key in [k for k, v in self.tags.items() if k[0] == repo and v == digest]:
            del self.tags[key]

    def _children_in(self, repo: str) -> set[str]:
        return {str(c.digest) for d in self.links[repo] for c in self.known[d].manifests}

    def _deletable(self, repo: str) -> list[str]:
        # A user may delete any manifest, but deleting an index's child breaks that index by request (as in
        # Distribution); the collector must never do it on its own, which is what we check.
        return sorted(set(self.links[repo]) - self._children_in(repo))

    # -- operations (each returns a coroutine factory and the model update for an acknowledged call) ---
    def _image_raw(self, layers: list[int]) -> tuple[bytes, list[bytes]]:
        self.counter += 1
        config = json.dumps({"n": self.counter}).encode()
        raw = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                          "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
                          "layers": [{"mediaType": OCI_LAYER, "digest": sha256(LAYERS[i]), "size": len(LAYERS[i])}
                                     for i in layers]}).encode()
        return raw, [config, *(LAYERS[i] for i in layers)]

    def _index_raw(self, repo: str, children: list[str]) -> bytes:
        self.counter += 1
        return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "annotations": {"n": str(self.counter)},
                           "manifests": [{"mediaType": self.known[d].media_type, "digest": d,
                                          "size": len(self.known[d].raw)} for d in children]}).encode()

    def _referrer_raw(self, subject: str, size: int) -> bytes:
        self.counter += 1
        return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": f"x/{self.counter}",
                           "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256(EMPTY),
                                      "size": 2}, "layers": [],
                           "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": size}}).encode()

    def _upload_op(self, repo: str, blob: bytes):
        async def op() -> Outcome:
            return await attempt(lambda: self.uc.upload_blob()(RepositoryName(repo), Digest.parse(sha256(blob)),
                                                                chunks_of(blob)))
        return op

    def _put_op(self, repo: str, raw: bytes, tag: str | None, blobs: list[bytes] = ()):
        """Upload the blobs (if any), then PUT the manifest by tag or by digest."""
        async def op() -> Outcome:
            for blob in blobs:
                uploaded = await self._upload_op(repo, blob)()
                if not uploaded.ok:
                    return uploaded
                self._uploaded(repo, blob)
            reference = Tag(tag) if tag else Digest.parse(sha256(raw))
            return await attempt(lambda: self.uc.put_manifest()(RepositoryName(repo), reference, raw, None))
        return op

    def _delete_op(self, repo: str, reference: str):
        parsed = Digest.parse(reference) if reference.startswith("sha256:") else Tag(reference)

        async def op() -> Outcome:
            return await attempt(lambda: self.uc.delete_manifest()(RepositoryName(repo), parsed))
        return op

    def _collect_op(self, scope: str | None, delete_untagged: bool, dry_run: bool):
        async def op() -> Outcome:
            return await attempt(lambda: self.uc.collect_garbage()(
                RepositoryName(scope) if scope else None, delete_untagged=delete_untagged, dry_run=dry_run))
        return op

    def _delete_repository_op(self, repo: str):
        async def op() -> Outcome:
            return await attempt(lambda: self.uc.delete_repository()(RepositoryName(repo)))
        return op

    def _put(self, repo: str, raw: bytes, tag: str | None, blobs: list[bytes] = ()) -> str:
        outcome = run(self._put_op(repo, raw, tag, blobs)())
        assert outcome.ok, outcome.error
        return self._pushed(repo, raw, tag)

    # -- rules: pushes --------------------------------------------------------------------------------
    @initialize(layers=st.lists(st.integers(0, len(LAYERS) - 1), max_size=3, unique=True),
                tag=st.sampled_from(TAGS))
    def seed(self, layers, tag):
        """Each repository starts with a tagged image and an untagged one (which a collection may remove)."""
        for repo in REPOS:
            for reference in (tag, None):
                raw, blobs = self._image_raw(layers)
                self._put(repo, raw, reference, blobs)

    @rule(repo=st.sampled_from(REPOS), layers=st.lists(st.integers(0, len(LAYERS) - 1), max_size=3, unique=True),
          tag=st.sampled_from([None, None, *TAGS]))
    def push_image(self, repo, layers, tag):
        raw, blobs = self._image_raw(layers)
        self._put(repo, raw, tag, blobs)

    @precondition(lambda self: any(self.links.values()))
    @rule(data=st.data(), tag=st.none() | st.sampled_from(TAGS))
    def push_index(self, data, tag):
        """An index of images, indexes and referrers already in the repository (nested indexes too)."""
        repo = data.draw(st.sampled_from([r for r in REPOS if self.links[r]]))
        children = data.draw(st.lists(st.sampled_from(sorted(self.links[repo])), min_size=1, max_size=3,
                                      unique=True))
        self._put(repo, self._index_raw(repo, children), tag)

    @rule(repo=st.sampled_from(REPOS), data=st.data(), missing_subject=st.booleans())
    def push_referrer(self, repo, data, missing_subject):
        candidates = sorted(self.links[repo])
        if missing_subject or not candidates:
            subject, size = sha256(f"absent-{self.counter}".encode()), 10
        else:
            subject = data.draw(st.sampled_from(candidates))
            size = len(self.known[subject].raw)
        self._put(repo, self._referrer_raw(subject, size), None, [EMPTY])

    @precondition(lambda self: any(self.links.values()))
    @rule(data=st.data(), tag=st.sampled_from(TAGS))
    def retag(self, data, tag):
        repo = data.draw(st.sampled_from([r for r in REPOS if self.links[r]]))
        digest = data.draw(st.sampled_from(sorted(self.links[repo])))
        self._put(repo, self.known[digest].raw, tag)

    @rule(source=st.sampled_from(REPOS), target_repo=st.sampled_from(REPOS), data=st.data())
    def mount(self, source, target_repo, data):
        linked = sorted(self.blob_links[source])
        if not linked:
            return
        digest = data.draw(st.sampled_from(linked))
        size = run(self.uc.mount_blob()(RepositoryName(target_repo), Digest.parse(digest), RepositoryName(source)))
        assert size is not None, f"{source} links {digest} but the mount was refused"
        now = self.clock()
        self.blob_links[target_repo][digest] = now
        self.used[digest] = now

    @rule(repo=st.sampled_from(REPOS), blob=st.binary(min_size=1, max_size=20))
    def upload_orphan(self, repo, blob):
        outcome = run(self._upload_op(repo, blob)())
        assert outcome.ok, outcome.error
        self._uploaded(repo, blob)

    # -- rules: removals by the user ----------------------------------------------------------------
    @precondition(lambda self: bool(self.tags))
    @rule(data=st.data())
    def untag(self, data):
        repo, tag = data.draw(st.sampled_from(sorted(self.tags)))
        outcome = run(self._delete_op(repo, tag)())
        assert outcome.ok, outcome.error
        del self.tags[(repo, tag)]

    @precondition(lambda self: any(self.links.values()))
    @rule(data=st.data())
    def delete_manifest(self, data):
        repo = data.draw(st.sampled_from([r for r in REPOS if self.links[r]]))
        deletable = self._deletable(repo)
        if not deletable:
            return
        digest = data.draw(st.sampled_from(deletable))
        outcome = run(self._delete_op(repo, digest)())
        assert outcome.ok, outcome.error
        self._forget_manifest(repo, digest)

    @rule(repo=st.sampled_from(REPOS))
    def delete_repository(self, repo):
        outcome = run(self._delete_repository_op(repo)())
        if self.links[repo] or self.blob_links[repo]:
            assert outcome.ok, outcome.error
        self._drop_repository(repo)

    # -- rules: time and collections ---------------------------------------------------------------
    @rule(seconds=st.sampled_from([1, 600, GRACE / 2, GRACE + 1, 3 * GRACE]))
    def advance(self, seconds):
        self.clock.advance(seconds)

    @rule(delete_untagged=st.sampled_from([True, True, False]), scope=st.none() | st.sampled_from(REPOS),
          dry_run=st.booleans(), seconds=st.sampled_from([0, GRACE / 2, GRACE + 1, GRACE + 1]))
    def collect(self, delete_untagged, scope, dry_run, seconds):
        self.clock.advance(seconds)
        self._collect_alone(scope, delete_untagged, dry_run)

    @rule(scope=st.none() | st.none() | st.sampled_from(REPOS))
    def collect_stale_untagged(self, scope):
        """The collection that removes the most: past the grace, untagged manifests go."""
        self.clock.advance(GRACE + 1)
        self._collect_alone(scope, True, False)

    def teardown(self):
        if sys.exc_info()[1] is not None:
            return  # a step failed: let hypothesis report that failure, not one of ours on a broken registry
        self.clock.advance(GRACE + 1)
        self._collect_alone(None, True, False, label="final")
        self._check_registry()
        # Shares shown by --hypothesis-show-statistics: cases in which a collection rule ran, removed a
        # manifest or a blob, an operation ran inside another.
        for name in CASE_EVENTS:
            if self.case[name]:
                event(f"case: {name}")
            STATS[f"cases with {name}"] += bool(self.case[name])
        STATS["cases"] += 1
        target(float(self.case["manifests removed"]), label="manifests removed by collections")

    # -- rules: one operation inside another ---------------------------------------------------------
    # A collection over this machine's registry makes about 30-90 port calls, a push 10-25, a DELETE about 9.
    @precondition(lambda self: any(self.links.values()))
    @rule(data=st.data(), second=st.sampled_from(["push_index", "retag", "push_image", "untag", "delete_repository"]),
          at=st.integers(1, 60), stale=st.booleans())
    def push_inside_collection(self, data, second, at, stale):
        """A push (or untag, or repository deletion) at the Nth port call of a delete_untagged collection."""
        self._concurrently(data, f"collect|{second}", at, stale)

    @precondition(lambda self: any(self.links.values()))
    @rule(data=st.data(), first=st.sampled_from(["push_index", "retag", "push_image"]), at=st.integers(1, 20),
          stale=st.booleans())
    def collection_inside_push(self, data, first, at, stale):
        self._concurrently(data, f"{first}|collect", at, stale)

    @precondition(lambda self: any(self.links.values()))
    @rule(data=st.data(), delete_first=st.booleans(), at=st.integers(1, 12))
    def delete_racing_put(self, data, delete_first, at):
        """A DELETE by digest and a PUT of the same bytes by tag, one inside the other."""
        self._concurrently(data, "delete|retag" if delete_first else "retag|delete", at, False)

    def _concurrently(self, data, pair: str, at: int, stale: bool) -> None:
        if stale:
            self.clock.advance(GRACE + 1)
        repo = data.draw(st.sampled_from([r for r in REPOS if self.links[r]]))
        tag = data.draw(st.sampled_from(TAGS))
        ops: dict[str, tuple[Callable[[], Awaitable[Outcome]], Callable[[Outcome], None]]] = {}
        names = pair.split("|")
        deleted: set[str] = set()
        if "collect" in names:
            ops["collect"] = (self._collect_op(None, True, False), lambda o: None)
        if "push_index" in names:
            children = data.draw(st.lists(st.sampled_from(sorted(self.links[repo])), min_size=1, max_size=3,
                                          unique=True))
            raw = self._index_raw(repo, children)
            ops["push_index"] = (self._put_op(repo, raw, tag), lambda o, raw=raw: self._pushed(repo, raw, tag))
        if "retag" in names:
            choices = self._deletable(repo) if "delete" in names else sorted(self.links[repo])
            if not choices:
                return
            digest = data.draw(st.sampled_from(choices))
            raw = self.known[digest].raw
            ops["retag"] = (self._put_op(repo, raw, tag), lambda o, raw=raw: self._pushed(repo, raw, tag))
            if "delete" in names:
                ops["delete"] = (self._delete_op(repo, digest), lambda o, d=digest: deleted.add(d))
        if "push_image" in names:
            raw, blobs = self._image_raw(data.draw(st.lists(st.integers(0, len(LAYERS) - 1), max_size=2,
                                                            unique=True)))
            ops["push_image"] = (self._put_op(repo, raw, tag, blobs),
                                 lambda o, raw=raw: self._pushed(repo, raw, tag))
        if "untag" in names:
            tagged = sorted(t for (r, t) in self.tags if r == repo)
            if not tagged:
                return
            untagged = data.draw(st.sampled_from(tagged))
            ops["untag"] = (self._delete_op(repo, untagged), lambda o: self.tags.pop((repo, untagged)))
        if "delete_repository" in names:
            ops["delete_repository"] = (self._delete_repository_op(repo), lambda o: self._drop_repository(repo))

        horizon = self.clock() - GRACE
        (first, apply_first), (second, apply_second) = ops[names[0]], ops[names[1]]
        first_outcome, second_outcome, inside = run(self.interleaver.run(first, second, at))
        self.case["ran inside"] += inside
        event(f"inside: {pair} {inside}")
        for name, outcome, apply in ((names[0], first_outcome, apply_first), (names[1], second_outcome, apply_second)):
            if name == "delete_repository":  # the collection may have emptied and removed it first
                assert outcome.ok or outcome.error.code == "NAME_UNKNOWN", outcome.error
            elif name in ("untag", "delete", "collect"):
                assert outcome.ok, (name, outcome.error)  # nothing else deletes what these target
            if outcome.ok:
                apply(outcome)
        # Which order the two took is the registry's choice; what it must not do is lose either. DELETE
        # after PUT: the manifest and all its tags are gone. PUT after DELETE: it is back, with the PUT's tag
        # only.
        for digest in deleted:
            if run(self.repos.manifest_linked(RepositoryName(repo), Digest.parse(digest))):
                for key in [k for k, v in self.tags.items() if k[0] == repo and v == digest and k[1] != tag]:
                    del self.tags[key]
            else:
                self._forget_manifest(repo, digest)
        if "collect" in names:
            # What the rules keep, from the model once both acknowledged calls are in it: a push's manifest
            # and all it reaches are new, so they must survive whichever order the calls took.
            report = first_outcome.value if names[0] == "collect" else second_outcome.value
            self._after_collection(report, None, True, False, horizon, self._model_keep(True, horizon), exact=False)

    def _drop_repository(self, repo: str) -> None:
        self.links[repo], self.blob_links[repo] = {}, {}
        for key in [k for k in self.tags if k[0] == repo]:
            del self.tags[key]

    # -- collections and what they must do -------------------------------------------------------------
    def _model_keep(self, delete_untagged: bool, horizon: float,
                    links: dict[str, dict[str, float]] | None = None) -> dict[str, set[str]]:
        """What the documented rules keep in each repository, from the given link times (the model's
        by default): without delete_untagged everything; else what is tagged or linked within the grace,
        the children of what is kept and the referrers of what is kept."""
        links = links or self.links
        keep: dict[str, set[str]] = {}
        for repo in REPOS:
            tagged = {d for (r, _), d in self.tags.items() if r == repo}

            def subject(d: str) -> str | None:
                manifest = self.known[d]
                return str(manifest.subject.digest) if manifest.subject else None

            kept: set[str] = set()
            pending = [d for d, t in links[repo].items()
                       if d in tagged or t >= horizon or not delete_untagged]
            while pending:
                while pending:
                    d = pending.pop()
                    if d in kept or d not in links[repo]:
                        continue
                    kept.add(d)
                    pending.extend(str(c.digest) for c in self.known[d].manifests)
                pending = [d for d in links[repo] if d not in kept and subject(d) in kept]
            keep[repo] = kept
        return keep

    def _store_links(self) -> dict[str, dict[str, float]]:
        return {r: {str(d): t for d, t in run(self.repos.manifest_links(RepositoryName(r))).items()} for r in REPOS}

    def _collect_alone(self, scope: str | None, delete_untagged: bool, dry_run: bool, label: str = "rule") -> None:
        horizon = self.clock() - GRACE
        stored = self._store_links()
        for repo in REPOS:  # the model's times are never later than the registry's
            for digest, linked_at in self.links[repo].items():
                assert digest in stored[repo] and stored[repo][digest] >= linked_at, (repo, digest)
        exact = self._model_keep(delete_untagged, horizon, stored)
        outcome = run(self._collect_op(scope, delete_untagged, dry_run)())
        assert outcome.ok, outcome.error
        report = outcome.value
        expected = {f"{r}@{d}" for r in REPOS if scope in (None, r) for d in stored[r] if d not in exact[r]}
        assert set(report.manifests_removed) == expected, (set(report.manifests_removed), expected)
        self._after_collection(report, scope, delete_untagged, dry_run, horizon,
                               self._model_keep(delete_untagged, horizon), exact=True, label=label)

    def _after_collection(self, report, scope: str | None, delete_untagged: bool, dry_run: bool, horizon: float,
                          keep: dict[str, set[str]] | None, exact: bool, label: str = "rule") -> None:
        STATS[f"{label} collections"] += 1
        STATS[f"{label} collections removing manifests"] += bool(report.manifests_removed)
        STATS[f"{label} collections removing blobs"] += bool(report.blobs_removed)
        removed = not dry_run and bool(report.manifests_removed)
        self.case["removed manifests, final collection included"] += removed
        if label == "rule":
            self.case["collections"] += 1
            self.case["removed manifests"] += removed
            self.case["removed blobs"] += bool(report.blobs_removed) and not dry_run
            self.case["manifests removed"] += 0 if dry_run else len(report.manifests_removed)
        stored = self._store_links()
        for repo in REPOS:
            out_of_scope = scope not in (None, repo)
            if dry_run or out_of_scope:
                assert set(self.links[repo]) <= set(stored[repo]), f"{repo}: a dry or scoped-out run removed"
                continue
            if keep is not None:
                lost = keep[repo] - set(stored[repo])
                assert not lost, f"{repo}: the collection removed {lost}, which the rules keep"
            for digest in [d for d in self.links[repo] if d not in stored[repo]]:
                self._forget_manifest(repo, digest)
            links = run(self.repos.blob_links(RepositoryName(repo)))
            for digest, linked_at in list(self.blob_links[repo].items()):
                if Digest.parse(digest) not in links:
                    assert linked_at < horizon, f"{repo}: blob link {digest} used within the grace was removed"
                    del self.blob_links[repo][digest]
        for digest, used_at in self.used.items():
            if used_at >= horizon:
                assert run(self.blobs.stat(Digest.parse(digest))) is not None, f"{digest} used within the grace"
        if exact and not dry_run and scope is None:
            self._check_nothing_stale_survived(horizon)

    def _check_nothing_stale_survived(self, horizon: float) -> None:
        referenced: set[str] = set()
        for repo in REPOS:
            links = run(self.repos.blob_links(RepositoryName(repo)))
            referenced.update(str(d) for d, t in links.items() if t >= horizon)
            for digest in self._store_links()[repo]:
                referenced |= {digest, *(str(b) for b in self.known[digest].required_blobs())}
        for info in run(_all(self.blobs.all_blobs())):
            assert str(info.digest) in referenced or info.last_used >= horizon, f"{info} survived stale"

    # -- what must always hold ----------------------------------------------------------------------
    @invariant()
    def registry_is_whole(self):
        self._check_registry()

    def _check_registry(self) -> None:
        for repo in REPOS:
            name = RepositoryName(repo)
            stored_tags = set(run(self.repos.tags(name)))
            model_tags = {t for (r, t) in self.tags if r == repo}
            assert stored_tags == model_tags, f"{repo}: tags {stored_tags}, acknowledged {model_tags}"
            for tag in stored_tags:
                stored = run(self.uc.get_manifest()(name, Tag(tag)))
                assert str(stored.digest) == self.tags[(repo, tag)] and sha256(stored.raw) == str(stored.digest)
            for digest in run(self.repos.manifest_links(name)):
                self._check_whole(repo, str(digest))
        for info in run(_all(self.blobs.all_blobs())):
            assert sha256(run(self.blobs.get(info.digest))) == str(info.digest), f"{info.digest} is corrupt"

    def _check_whole(self, repo: str, digest: str) -> None:
        name = RepositoryName(repo)
        stored = run(self.uc.get_manifest()(name, Digest.parse(digest)))
        assert sha256(stored.raw) == digest
        manifest = parse_manifest(stored.raw)
        for blob in manifest.required_blobs():
            content = run(self.uc.read_blob()(name, blob))
            assert sha256(b"".join(run(_all(content.chunks)))) == str(blob), f"{repo}@{digest}: {blob}"
        for child in manifest.manifests:
            assert run(self.repos.manifest_linked(name, child.digest)), f"{repo}@{digest}: child {child.digest}"


async def _all(items):
    return [item async for item in items]


# GC_MACHINE_EXAMPLES=500 for a long run (nightly, or after touching the collector).
GarbageCollection.TestCase.settings = settings(max_examples=int(os.environ.get("GC_MACHINE_EXAMPLES", "40")),
                                               stateful_step_count=25, deadline=None,
                                               suppress_health_check=list(HealthCheck))
TestGarbageCollection = GarbageCollection.TestCase


@pytest.mark.parametrize("push", ["retag", "index"])
def test_referrers_stay_when_their_subject_is_pushed_during_a_collection(push):
    """Found by the machine (shrunk by hand): an untagged image X, past the grace, with a signature R (a
    referrer). A delete_untagged collection marks X and R as doomed; inside it, at each port call in turn,
    X is pushed again by tag (or an index naming X is pushed by tag). X survives (its link is fresh) and so
    must R: a kept manifest's referrers stay, whichever order the push and the mark took."""
    for at in range(1, 30):
        machine = GarbageCollection()
        raw, blobs = machine._image_raw([0])
        x = machine._put("a", raw, None, blobs)
        r = machine._put("a", machine._referrer_raw(x, len(raw)), None, [EMPTY])
        machine.clock.advance(GRACE + 1)
        pushed = raw if push == "retag" else machine._index_raw("a", [x])
        first, second, inside = run(machine.interleaver.run(
            machine._collect_op(None, True, False), machine._put_op("a", pushed, "t1"), at))
        assert first.ok, first.error
        linked = run(machine.repos.manifest_links(RepositoryName("a")))
        if not second.ok:  # the sweep got there first: the push is refused whole, and X is gone
            assert isinstance(second.error, ManifestBlobUnknown), second.error
            assert Digest.parse(x) not in linked
            continue
        assert Digest.parse(x) in linked, f"at={at}: X was removed"
        assert Digest.parse(r) in linked, f"at={at}: X is tagged now, but its referrer was removed"
        if not inside:
            break
