"""Concurrent use-case calls on the memory adapters, interleaved at every port call (tests/interleave.py):
pushes by every upload method (POST ?digest=, POST+PATCH+PUT with and without offsets and a last chunk,
mounts with and without a source) with one upload session shared between callers, manifest, index and
referrer pushes, retags, deletes of manifests, tags and repositories, collections, idle-upload purges and
clock moves, over a registry whose older content is past the grace.

Hypothesis draws the setup and a program of 2 to 5 operations; each example runs that program under a few
schedules (`Family.schedules`), each picked step by step by a seeded `random_policy` (the seed is drawn by
hypothesis, mixed with the program). Each test draws from one family of kinds, so that the operations of
an example meet: upload sessions; manifest pushes and deletes; a collection beside pushes; a collection
beside uploads; and anything anywhere.

After every step that may have broken something (the targeted part of it; all of it after an operation
ends or the clock moves), and at the end:
- every stored blob hashes to its name;
- every tag present names a whole image (manifest linked and readable, children, config and layers
  readable through the use-cases and hashing to their digests), and so does every manifest a repository
  links (no operation deletes a child manifest or a blob link by itself: removals go parents first);
- a tag that was acknowledged (set up, or PUT without error) and that nothing may have deleted still names
  one of the manifests that may have been written to it last;
- what an operation acknowledged (a blob upload, a mount, a manifest PUT with all it reaches, a PATCH)
  stays readable while it is within the grace (the idle limit for a PATCH), until an operation that may
  remove it (a DELETE of it or of its repository, the end of its session) starts: one that ran alongside
  counts, as its order is unknown;
- once a repository deletion is acknowledged, none of the upload sessions it had remains (sessions another
  request was using meanwhile aside).
A manifest PUT during which the clock moved past the grace is a push slower than the grace, which the
registry does not protect (README): what it reaches is exempt from the wholeness checks. Refusals a race
may cause (UploadBusy, BLOB_UPLOAD_UNKNOWN, DIGEST_INVALID, ...) are accepted where they can happen; any
other error fails.

A failure prints the program, the setup and the failing schedule, step by step ("task: port call").
Settings: local runs explore new examples each time and replay a failure found before first (hypothesis'
database); with CI=true the examples are derandomized (the same every run) and nothing is stored, so a CI
result does not depend on luck or on an earlier run. INTERLEAVE_EXAMPLES and INTERLEAVE_SCHEDULES override
the per-test counts (for a longer hunt). Each test prints what it explored and how often a collection
removed something.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import hashlib
import json
import os
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, event, given, note, settings
from hypothesis import strategies as st

from domain.digest import Digest
from domain.errors import (
    BlobUploadInvalid,
    BlobUploadUnknown,
    CollectionRunning,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestUnknown,
    NameUnknown,
)
from domain.manifest import Manifest, parse_manifest
from domain.names import RepositoryName, Tag
from entrypoints.container import build_container
from entrypoints.settings import Settings
from tests.interleave import Outcome, PortCall, Scheduler, body, gate_ports, random_policy
from tests.support import OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST, sha256

from .gc_support import GRACE, FakeClock

MAX_IDLE = GRACE  # one clock move makes a session idle
REGISTRY_SETTINGS = Settings(storage="memory", gc_grace_seconds=GRACE, upload_max_idle_seconds=MAX_IDLE)
EXAMPLES = int(os.environ.get("INTERLEAVE_EXAMPLES", "0"))  # examples per test (0: the family's own)
SCHEDULES = int(os.environ.get("INTERLEAVE_SCHEDULES", "0"))  # schedules per example (0: the family's own)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SETTINGS = settings(deadline=None, derandomize=IN_CI, database=None if IN_CI else settings.default.database,
                    phases=[p for p in Phase if p is not Phase.explain],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# -- the content the operations use ------------------------------------------------------------------------


def _bytes(name: str, size: int) -> bytes:
    return hashlib.shake_256(name.encode()).digest(size)


BLOBS: dict[str, bytes] = {
    "L0": _bytes("L0", 700), "L1": _bytes("L1", 900), "L2": _bytes("L2", 1100), "LF": _bytes("LF", 300),
    "O": _bytes("orphan", 500),  # an upload no manifest references (a push abandoned long ago)
    "P": _bytes("prefix", 600), "Q": _bytes("rest", 400),  # the shared session holds P, then P+Q = B
    "CF": b"{}",
}
BLOBS["B"] = BLOBS["P"] + BLOBS["Q"]
for _i in range(4):
    BLOBS[f"C{_i}"] = json.dumps({"architecture": "amd64", "os": "linux", "n": _i}).encode()


def _image(config: str, layers: list[str], **extra: Any) -> bytes:
    return json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, **extra,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(BLOBS[config]), "size": len(BLOBS[config])},
        "layers": [{"mediaType": OCI_LAYER, "digest": sha256(BLOBS[b]), "size": len(BLOBS[b])} for b in layers],
    }).encode()


MANIFESTS: dict[str, bytes] = {
    "I0": _image("C0", ["L0", "L1"]), "I1": _image("C1", ["L1"]),
    "I2": _image("C2", ["L2"]), "I3": _image("C3", ["L0", "L2"]),
}
MANIFESTS["X"] = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
    {"mediaType": OCI_MANIFEST, "digest": sha256(MANIFESTS[m]), "size": len(MANIFESTS[m]),
     "platform": {"architecture": arch, "os": "linux"}} for m, arch in (("I1", "amd64"), ("I2", "arm64"))]}).encode()
MANIFESTS["F"] = _image("CF", ["LF"], artifactType="application/vnd.example.sbom", subject={
    "mediaType": OCI_MANIFEST, "digest": sha256(MANIFESTS["I0"]), "size": len(MANIFESTS["I0"])})
NEEDS = {"I0": ["C0", "L0", "L1"], "I1": ["C1", "L1"], "I2": ["C2", "L2"], "I3": ["C3", "L0", "L2"],
         "X": [], "F": ["CF", "LF"]}
CHILDREN = {"X": ["I1", "I2"]}
ALIASES = {sha256(data): name for name, data in {**BLOBS, **MANIFESTS}.items()}
REPOS, TAGS = ("r", "s"), ("t1", "t2")


def describe(arg: Any) -> str | None:
    """Short names for the scheduler's trace."""
    if isinstance(arg, Digest):
        return ALIASES.get(str(arg), str(arg)[7:15])
    if isinstance(arg, (RepositoryName, Tag)):
        return str(arg)
    if isinstance(arg, str):
        return arg[:8]
    if isinstance(arg, int):
        return repr(arg)
    return None


def _digest(name: str) -> Digest:
    return Digest.parse(sha256({**BLOBS, **MANIFESTS}[name]))


# -- operations --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    kind: str
    params: tuple[tuple[str, Any], ...] = ()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return dict(self.params).get(name)  # None for a parameter this kind does not have

    def __repr__(self) -> str:
        return f"{self.kind}({', '.join(f'{k}={v!r}' for k, v in self.params)})"


def op(kind: str, **params: Any) -> st.SearchStrategy[Op]:
    names = list(params)
    return st.tuples(*params.values()).map(lambda values: Op(kind, tuple(zip(names, values, strict=True))))


repo_, tag_, some_tag = st.sampled_from(REPOS), st.sampled_from(TAGS), st.none() | st.sampled_from(TAGS)
uploadable = st.sampled_from(["O", "L1", "C1", "P", "B"])


def gc(dry_run: st.SearchStrategy[bool] = st.sampled_from([False, False, False, True])) -> st.SearchStrategy[Op]:
    return op("gc", scope=st.sampled_from([None, None, "r", "s"]), dry_run=dry_run,
              delete_untagged=st.sampled_from([True, True, True, False]))


def kinds(focus: str, where: st.SearchStrategy[str], exact: bool) -> dict[str, st.SearchStrategy[Op]]:
    """Every kind of operation, acting in the repositories `where` draws from. Manifest operations act on the
    example's `focus` manifest (only, or mostly), so that they meet."""
    around = st.just(focus) if exact else st.sampled_from([focus, focus, focus, "I0", "X", "F", "I3"])
    return {
        "upload": op("upload", repo=where, blob=uploadable),  # POST ?digest= with the body
        "chunked": op("chunked", repo=where, blob=uploadable, offsets=st.booleans(), last_chunk=st.booleans()),
        "mount": op("mount", repo=where, blob=uploadable, source=st.none() | repo_),
        "patch_shared": op("patch_shared", with_start=st.booleans()),
        # PUT ?digest= on the shared session: of what it held (P), or of P+Q with Q as its last chunk or not
        "put_shared": op("put_shared", blob=st.sampled_from(["P", "B"]), last_chunk=st.booleans()),
        "cancel_shared": op("cancel_shared"),
        # an image's blobs, then the image (the index X has no blobs of its own: its manifest only)
        "push": op("push", repo=where, manifest=around, tag=some_tag),
        # the manifest only; by tag in the focused families (a tag is what a concurrent DELETE can break)
        "put": op("put", repo=where, manifest=around, tag=tag_ if exact else some_tag),
        "delete": op("delete", repo=where, manifest=around),  # by digest (never a child of X)
        "untag": op("untag", repo=where, tag=tag_),
        "delete_repo": op("delete_repo", repo=where),
        "gc": gc(),
        "purge": op("purge"),
        "clock": op("clock"),
    }


@dataclass(frozen=True)
class Family:
    """The kinds of operation one test draws from (few, so that the operations of an example meet), and how
    it draws them."""

    kinds: tuple[str, ...]
    exact: bool = False  # manifest operations all act on the focus manifest
    everywhere: bool = False  # operations act in r or s (else in r, where the setup puts most content)
    collection_first: bool = False  # a collection that deletes all it may, then 1 to 3 operations beside it
    scopes: tuple[str | None, ...] = (None, "r")  # of that collection (only whole ones collect new blobs)
    most: int = 4  # kinds in a program (then maybe one more operation of any kind)
    examples: int = 100
    schedules: int = 2  # schedules of each example's program


FAMILIES = {
    "sessions": Family(("patch_shared", "put_shared", "purge", "delete_repo", "cancel_shared"), schedules=4),
    "tags": Family(("put", "delete", "untag", "delete_repo"), exact=True, schedules=6),
    "collection_pushes": Family(("put", "push", "clock", "gc"), exact=True, collection_first=True),
    "collection_uploads": Family(("upload", "chunked", "mount", "patch_shared", "put_shared", "clock"),
                                 collection_first=True, scopes=(None,), schedules=3),
    "any": Family(tuple(kinds("I0", repo_, False)), everywhere=True, examples=50),
}


def program(family: Family) -> st.SearchStrategy[list[Op]]:
    """2 to 4 operations of different kinds, and maybe one more of any kind (a second PATCH, say)."""
    first = family.collection_first

    @st.composite
    def build(draw: st.DrawFn) -> list[Op]:
        table = kinds(draw(st.sampled_from(["X", "I0", "F"]), label="focus"),
                      repo_ if family.everywhere else st.just("r"), family.exact)
        chosen = draw(st.lists(st.sampled_from(family.kinds), min_size=1 if first else 2,
                               max_size=family.most - first, unique=True))
        ops = [draw(op("gc", scope=st.sampled_from(family.scopes), dry_run=st.just(False),
                       delete_untagged=st.just(True)))] if first else []
        ops += [draw(table[kind]) for kind in chosen]
        again = draw(st.none() | st.sampled_from(family.kinds))
        if again is not None:
            ops.append(draw(table[again]))
        return ops

    return build()


def setup(advance: st.SearchStrategy[bool] = st.sampled_from([True, True, True, False])) -> st.SearchStrategy[dict]:
    """The registry before the operations: in r, some of these manifests, each untagged or tagged, in this
    order (so that a later one may take an earlier one's tag; for the index X, maybe only its children, as a
    multi-platform build pushes them first), their blobs and the blob O no manifest uses; maybe an image in
    s; the shared upload session in r, holding P. Then (usually) the clock moves past the grace, and a few
    more pushes follow, within the grace."""
    return st.fixed_dictionaries({
        "old": st.fixed_dictionaries({m: st.sampled_from(["children", "untagged", "t1", "t2"] if m == "X"
                                                         else ["untagged", "t1", "t2", None])
                                      for m in ("I0", "X", "I3", "F")}),
        "old_in_s": st.sampled_from([None, "I0", "I3"]),
        "orphan_in_s": st.booleans(),
        "session_is_new": st.booleans(),  # opened after the clock moved (else before: idle by then)
        "advance": advance,
        "new": st.lists(st.tuples(repo_, st.sampled_from(list(MANIFESTS)), some_tag), max_size=2),
    })


# -- the model of what was acknowledged ------------------------------------------------------------------


@dataclass
class Call:
    op: int  # index of the operation that made it
    begun: int  # scheduler step when it began
    since: float  # clock when it began


@dataclass
class Promise:
    """Something acknowledged that must stay readable while it is within `lasts` of `call.since`."""

    kind: str  # "blob", "manifest", "session"
    repo: str
    key: str  # blob or manifest name, or session id
    call: Call
    lasts: float
    size: int = 0  # for a session: the size the PATCH answered
    retired: bool = False


@dataclass
class TagWrite:
    digest: str
    begun: int
    ended: int | None = None
    acked: bool = False


@dataclass
class Stats:
    examples: int = 0
    steps: int = 0
    decisions: int = 0
    schedules: set[int] = field(default_factory=set)
    with_gc: int = 0  # runs with a collection
    gc_removed: int = 0  # runs where a (non-dry) collection removed something
    runs: int = 0  # schedules run to the end without a failure
    first_failure: int | None = None  # the example (counted from 1) that failed first


STATS: dict[str, Stats] = defaultdict(Stats)


def _clone(value: Any, memo: dict[int, Any]) -> Any:
    """A copy of an adapter's state: containers and plain objects are copied, values (bytes, str, numbers,
    digests, names) shared; a deep copy took longer than a whole run. `memo` maps ids to replacements."""
    if id(value) in memo:
        return memo[id(value)]
    if isinstance(value, dict):
        new: Any = copy.copy(value)
        for key, item in value.items():
            new[key] = _clone(item, memo)
    elif isinstance(value, list):
        new = [_clone(item, memo) for item in value]
    elif isinstance(value, (set, bytearray)):
        new = copy.copy(value)
    elif hasattr(value, "__dict__") and not isinstance(value, type):
        new = copy.copy(value)
        for key, item in vars(value).items():
            setattr(new, key, _clone(item, memo))
    else:
        return value
    memo[id(value)] = new
    return new


class World:
    """One run: a registry on memory adapters behind the scheduler's gates, the operations, and the record of
    what they acknowledged. Built afresh (then `setup`), or as a copy of a set-up world's storage, so that
    the schedules of one example share one setup."""

    def __init__(self, choose: Callable[[list[str]], int], ops: list[Op], template: World | None = None) -> None:
        self.ops = ops
        self.clock = FakeClock()
        self.uc = build_container(REGISTRY_SETTINGS, clock=self.clock)
        self.sched = Scheduler(choose, describe)
        adapters = None
        if template is not None:
            self.clock.now = template.clock.now
            adapters = {port: _clone(template.raw[port], {id(template.clock): self.clock})
                        for port in ("blobs", "repos")}
        self.raw = gate_ports(self.uc, self.sched, adapters)  # the real adapters, for checks that must not park
        self.promises: list[Promise] = []
        self.tag_writes: dict[tuple[str, str], list[TagWrite]] = defaultdict(list)
        self.sessions_at: dict[int, set[tuple[str, str]]] = {}
        self.op_sessions: dict[int, set[str]] = defaultdict(set)  # session ids each operation used
        self.op_since: dict[int, float] = {}  # clock when each operation began
        self.shared: tuple[str, str] = ("", "")  # (repo, id) of the shared session
        self.checked_ends: set[int] = set()
        self.checks = 0
        self.last_checked: tuple | None = None
        self.whole_now: set[tuple[str, str]] = set()
        self.live: set[tuple[str, str]] = set()  # upload sessions at the last check
        self.slow: set[tuple[str, str]] = set()
        self.puts: list[list] = []  # manifest PUTs: [repo, name, call, clock when it ended (None: running)]
        if template is not None:
            self.tag_writes.update(copy.deepcopy(template.tag_writes))
            self.shared = template.shared

    # -- setup (not scheduled) -----------------------------------------------------------------------
    async def setup(self, plan: dict) -> None:
        for repo in ("r", "s") if plan["orphan_in_s"] else ("r",):
            await self.uc.upload_blob()(RepositoryName(repo), _digest("O"), body(BLOBS["O"]))
        for name, state in plan["old"].items():
            if state == "children":
                for child in CHILDREN[name]:
                    await self._push_closure("r", child, None)
            elif state is not None:
                await self._push_closure("r", name, None if state == "untagged" else state)
        if plan["old_in_s"]:
            await self._push_closure("s", plan["old_in_s"], "t1")
        if not plan["session_is_new"]:
            await self._open_shared("r")
        if plan["advance"]:
            self.clock.advance(GRACE + 1)
        if plan["session_is_new"]:
            await self._open_shared("r")
        for repo, name, tag in plan["new"]:
            await self._push_closure(repo, name, tag)

    async def _open_shared(self, repo: str) -> None:
        status = await self.uc.start_upload()(RepositoryName(repo))
        await self.uc.append_upload()(RepositoryName(repo), status.upload_id, body(BLOBS["P"]))
        self.shared = (repo, status.upload_id)

    async def _push_closure(self, repo: str, name: str, tag: str | None) -> None:
        name_ = RepositoryName(repo)
        for child in CHILDREN.get(name, []):
            if not await self.raw["repos"].manifest_linked(name_, _digest(child)):
                await self._push_closure(repo, child, None)
        for blob in NEEDS[name]:
            await self.uc.upload_blob()(name_, _digest(blob), body(BLOBS[blob]))
        await self.uc.put_manifest()(name_, Tag(tag) if tag else _digest(name), MANIFESTS[name], None)
        if tag:
            self.tag_writes[(repo, tag)] = [TagWrite(sha256(MANIFESTS[name]), -1, -1, True)]

    # -- bookkeeping for the operations --------------------------------------------------------------
    def begin(self, index: int) -> Call:
        return Call(index, self.sched.step, self.clock.now)

    def promise(self, kind: str, repo: str, key: str, call: Call, size: int = 0) -> Promise:
        lasts = MAX_IDLE if kind == "session" else GRACE
        made = Promise(kind, repo, key, call, lasts, size)
        self.promises.append(made)
        return made

    async def put(self, index: int, repo: str, name: str, tag: str | None) -> None:
        call = self.begin(index)
        record = [repo, name, call, None]
        self.puts.append(record)
        write = None
        if tag:
            write = TagWrite(sha256(MANIFESTS[name]), call.begun)
            self.tag_writes[(repo, tag)].append(write)
        try:
            await self.uc.put_manifest()(RepositoryName(repo), Tag(tag) if tag else _digest(name), MANIFESTS[name],
                                         None)
        finally:
            if write is not None:
                write.ended = self.sched.step
            record[3] = self.clock.now
        if write is not None:
            write.acked = True
        self.promise("manifest", repo, name, call)

    async def push(self, index: int, repo: str, name: str, tag: str | None) -> None:
        """What a client does: an index's children first, an image's blobs, then the manifest."""
        for child in CHILDREN.get(name, []):
            await self.push(index, repo, child, None)
        for blob in NEEDS[name]:
            call = self.begin(index)
            await self.uc.upload_blob()(RepositoryName(repo), _digest(blob), body(BLOBS[blob]))
            self.promise("blob", repo, blob, call)
        await self.put(index, repo, name, tag)

    async def execute(self, index: int, o: Op) -> Any:
        self.op_since[index] = self.clock.now
        uc, repo = self.uc, RepositoryName(o.repo) if o.repo else None
        if o.kind == "upload":
            call = self.begin(index)
            data = BLOBS[o.blob]
            await uc.upload_blob()(repo, _digest(o.blob), body(data[:200], data[200:]))
            self.promise("blob", o.repo, o.blob, call)
        elif o.kind == "chunked":
            data = BLOBS[o.blob]
            first, rest = data[:250], data[250:]
            status = await uc.start_upload()(repo)
            self.op_sessions[index].add(status.upload_id)
            call = self.begin(index)
            status = await uc.append_upload()(repo, status.upload_id, body(first), 0 if o.offsets else None)
            mine = self.promise("session", o.repo, status.upload_id, call, status.size)
            if not o.last_chunk:
                call = self.begin(index)
                status = await uc.append_upload()(repo, status.upload_id, body(rest),
                                                  len(first) if o.offsets else None)
                mine.retired = True
                mine = self.promise("session", o.repo, status.upload_id, call, status.size)
            mine.retired = True  # this operation ends its own session now
            call = self.begin(index)
            await uc.complete_upload()(repo, status.upload_id, _digest(o.blob),
                                       body(rest) if o.last_chunk else None,
                                       len(first) if o.offsets and o.last_chunk else None)
            self.promise("blob", o.repo, o.blob, call)
        elif o.kind == "mount":
            call = self.begin(index)
            size = await uc.mount_blob()(repo, _digest(o.blob), RepositoryName(o.source) if o.source else None)
            if size is not None:
                self.promise("blob", o.repo, o.blob, call)
            return size
        elif o.kind in ("patch_shared", "put_shared", "cancel_shared"):
            repo_name, upload_id = self.shared
            self.op_sessions[index].add(upload_id)
            shared = RepositoryName(repo_name)
            call = self.begin(index)
            rest = BLOBS["Q"]
            if o.kind == "patch_shared":
                status = await uc.append_upload()(shared, upload_id, body(rest[:200], rest[200:]),
                                                  len(BLOBS["P"]) if o.with_start else None)
                self.promise("session", repo_name, upload_id, call, status.size)
            elif o.kind == "put_shared":
                await uc.complete_upload()(shared, upload_id, _digest(o.blob),
                                           body(rest[:200], rest[200:]) if o.last_chunk else None)
                self.promise("blob", repo_name, o.blob, call)
            else:
                await uc.cancel_upload()(shared, upload_id)
        elif o.kind == "push":
            await self.push(index, o.repo, o.manifest, o.tag)
        elif o.kind == "put":
            await self.put(index, o.repo, o.manifest, o.tag)
        elif o.kind == "delete":
            await uc.delete_manifest()(repo, _digest(o.manifest))
        elif o.kind == "untag":
            await uc.delete_manifest()(repo, Tag(o.tag))
        elif o.kind == "delete_repo":
            await uc.delete_repository()(repo)
        elif o.kind == "gc":
            return await uc.collect_garbage()(RepositoryName(o.scope) if o.scope else None, dry_run=o.dry_run,
                                              delete_untagged=o.delete_untagged)
        elif o.kind == "purge":
            return await uc.purge_uploads()()
        elif o.kind == "clock":
            await self.sched.checkpoint("clock.advance")
            self.clock.advance(GRACE + 1)
        else:
            raise AssertionError(o.kind)
        return None

    # -- who may have removed what -------------------------------------------------------------------
    def _removes(self, o: Op, kind: str, repo: str, key: str) -> bool:
        if o.kind == "delete_repo":
            return o.repo == repo
        if kind == "manifest":
            return o.kind == "delete" and o.repo == repo and o.manifest == key
        if kind == "session":
            return o.kind in ("put_shared", "cancel_shared") and (repo, key) == self.shared
        if kind == "tag":
            writes = {w.digest for w in self.tag_writes[(repo, key)]}
            return o.repo == repo and ((o.kind == "untag" and o.tag == key)
                                       or (o.kind == "delete" and sha256(MANIFESTS[o.manifest]) in writes))
        return False

    def _void(self, promise: Promise) -> bool:
        """Whether the promise expired, or an operation that may remove what it promises has started and
        did not end before the promise's call began (so it ran alongside, in an unknown order, or after)."""
        if promise.retired or self.clock.now >= promise.call.since + promise.lasts:
            return True
        return any(self._removes(o, promise.kind, promise.repo, promise.key) and outcome.started is not None
                   and not (outcome.ended is not None and outcome.ended < promise.call.begun)
                   for o, outcome in zip(self.ops, self.sched.outcomes))

    # -- the invariants ------------------------------------------------------------------------------
    async def check(self, full: bool = True) -> None:
        """The invariants (see the module doc), after every step that may have broken one: all of them when
        an operation ended or the clock moved (or after a step of unknown effect), else those the last step
        could have touched. `full=False` only notes the starting state."""
        outcomes = self.sched.outcomes
        sessions: set[tuple[str, str]] = set()
        if any(o.kind == "delete_repo" for o in self.ops):  # what each deletion found when it started
            sessions = {(u.repo.value, u.upload_id) async for u in self.raw["blobs"].all_uploads()}
            self.sessions_at[self.sched.step] = sessions
        state = (self.clock.now, len(self.promises), sum(o.ended is not None for o in outcomes))
        if not full or self.last_checked is None:
            scope: Scope | None = None if full else SKIP
        else:
            scope = None if state != self.last_checked else _scope(self.sched.last)
        self.last_checked = state
        if not full:
            self.live = {(u.repo.value, u.upload_id) async for u in self.raw["blobs"].all_uploads()}
        if scope is SKIP:
            return  # the last step read, waited or only added: no invariant can have broken since the last check
        self.checks += 1
        self.whole_now: set[tuple[str, str]] = set()  # manifests found whole in this check
        self.slow = self._overlong()
        if scope is None or scope.kind == "bytes":
            async for info in self.raw["blobs"].all_blobs():
                if scope is None or str(info.digest) in scope.digests:
                    data = await self.raw["blobs"].get(info.digest)
                    assert sha256(data) == str(info.digest), \
                        f"blob {describe(info.digest)} does not hash to its name ({len(data)} bytes)"
        for repo in REPOS:
            name = RepositoryName(repo)
            for tag in await self.raw["repos"].tags(name):
                target = await self.raw["repos"].resolve_tag(name, Tag(tag))
                if scope is None or scope.reaches(repo, str(target), tag):
                    await self.whole(repo, Tag(tag), f"tag {repo}:{tag}")
            # No operation deletes a child manifest or a blob link by itself, so every manifest a repository
            # links, tagged or not, must be whole at every step: removals go parents first, links last.
            for digest in await self.raw["repos"].manifest_links(name):
                if scope is None or scope.reaches(repo, str(digest)):
                    await self.whole(repo, digest, f"manifest linked in {repo}")
            for tag in TAGS:
                if scope is None or scope.reaches(repo, None, tag):
                    await self._tag_kept(repo, tag)
        for promise in self.promises:
            if not self._void(promise) and (scope is None or scope.reaches_promise(promise)):
                await self._kept(promise)
        live = {(u.repo.value, u.upload_id) async for u in self.raw["blobs"].all_uploads()}
        if scope is not None and scope.kind == "session":
            self._session_removal(scope, self.live - live)
        self.live = live
        for i, (o, outcome) in enumerate(zip(self.ops, outcomes)):
            if o.kind == "delete_repo" and outcome.ended is not None and outcome.error is None \
                    and i not in self.checked_ends:
                self.checked_ends.add(i)
                self._sessions_gone(o.repo, outcome, sessions)

    def _session_removal(self, scope: Scope, removed: set[tuple[str, str]]) -> None:
        """Right after a session was removed, we know who did it: only a request that ends it (PUT, DELETE, the
        repository's deletion) may remove one a PATCH was acknowledged on within the idle limit; the idle
        purge may not, whatever else ran alongside."""
        actor = int(self.sched.trace[-1].split(":", 1)[0])
        for promise in self.promises:
            if promise.kind != "session" or promise.retired or (promise.repo, promise.key) not in removed \
                    or self.clock.now >= promise.call.since + promise.lasts:
                continue
            if not self._removes(self.ops[actor], "session", promise.repo, promise.key) \
                    and actor != promise.call.op:
                raise AssertionError(f"{self.ops[actor]} removed upload session {promise.key[:8]}, written to "
                                     f"(and acknowledged) {self.clock.now - promise.call.since:.0f} s before, "
                                     "within the idle limit")

    def _overlong(self) -> set[tuple[str, str]]:
        """Manifests (and their children) a PUT was making reachable while the clock moved past the grace: a
        push slower than the grace, which the registry does not promise to protect (README: keep the grace
        longer than your slowest push). The clock moves by more than the grace at once in these tests."""
        slow = set()
        for repo, name, call, ended in self.puts:
            if (self.clock.now if ended is None else ended) > call.since:
                slow |= {(repo, sha256(MANIFESTS[m])) for m in (name, *CHILDREN.get(name, []))}
        return slow

    async def whole(self, repo: str, reference: Tag | Digest, why: str) -> None:
        """The manifest and everything it reaches are readable through the use-cases and hash right."""
        name = RepositoryName(repo)
        if (repo, str(reference)) in self.whole_now:
            return
        try:
            stored = await self.uc.get_manifest()(name, reference) if (repo, str(reference)) not in self.slow \
                else None
            if stored is None or (repo, str(stored.digest)) in self.slow:
                return
            assert sha256(stored.raw) == str(stored.digest), "manifest bytes do not hash to its digest"
            if isinstance(reference, Tag):  # what a tag names must be in the repository by digest too
                await self.uc.get_manifest()(name, stored.digest)
            manifest = _parsed(stored.raw)
            for blob in manifest.required_blobs():
                content = await self.uc.read_blob()(name, blob)
                data = b"".join([chunk async for chunk in content.chunks])
                assert sha256(data) == str(blob), f"blob {describe(blob)} has {len(data)} bytes that do not hash to it"
            children = [child.digest for child in manifest.manifests]
        except Exception as error:
            raise AssertionError(f"{why}: {repo}@{describe(reference)} is not whole: "
                                 f"{type(error).__name__}: {error}") from error
        for child in children:
            await self.whole(repo, child, f"{why} -> child {describe(child)}")
        self.whole_now.add((repo, str(reference)))
        self.whole_now.add((repo, str(stored.digest)))

    async def _tag_kept(self, repo: str, tag: str) -> None:
        writes = self.tag_writes.get((repo, tag), [])
        if not any(w.acked for w in writes):
            return
        if any(outcome.started is not None and self._removes(o, "tag", repo, tag)
               for o, outcome in zip(self.ops, self.sched.outcomes)):
            return
        possible = {w.digest for w in writes
                    if not any(a.acked and w.ended is not None and w.ended < a.begun for a in writes)}
        current = await self.raw["repos"].resolve_tag(RepositoryName(repo), Tag(tag))
        shown = sorted(ALIASES.get(d, d) for d in possible)
        assert current is not None, f"acknowledged tag {repo}:{tag} is gone (it named one of {shown})"
        assert str(current) in possible, \
            f"tag {repo}:{tag} names {describe(current)}, not one of {shown} written to it last"

    async def _kept(self, promise: Promise) -> None:
        name = RepositoryName(promise.repo)
        what = f"acknowledged {promise.kind} {promise.repo}/{ALIASES.get(promise.key, promise.key[:8])}"
        if promise.kind == "session":
            size = await self.raw["blobs"].upload_size(name, promise.key)
            assert size is not None and size >= promise.size, \
                f"{what} (answered size {promise.size}) is gone or shrank to {size}, within the idle limit"
        elif promise.kind == "blob":
            try:
                content = await self.uc.read_blob()(name, _digest(promise.key))
                data = b"".join([chunk async for chunk in content.chunks])
            except Exception as error:
                raise AssertionError(f"{what} is lost within the grace: {type(error).__name__}: {error}") from error
            assert data == BLOBS[promise.key], f"{what} reads as {len(data)} other bytes"
        else:
            await self.whole(promise.repo, _digest(promise.key), f"{what} within the grace")

    def _sessions_gone(self, repo: str, deletion: Outcome, now: set[tuple[str, str]]) -> None:
        before = self.sessions_at.get((deletion.started or 1) - 1, set())
        outcomes = self.sched.outcomes
        in_use = set()
        for i, ids in self.op_sessions.items():
            other = outcomes[i]
            if other.started is not None and other.started <= deletion.ended \
                    and (other.ended is None or other.ended >= (deletion.started or 0)):
                in_use |= ids
        left = {upload_id for r, upload_id in now & before if r == repo and upload_id not in in_use}
        assert not left, f"repository {repo} was deleted (acknowledged) but its upload sessions {left} remain"

    # -- judging errors ------------------------------------------------------------------------------
    def refusal_expected(self, index: int, error: Exception) -> bool:
        o, outcomes = self.ops[index], self.sched.outcomes
        mine = outcomes[index]
        overlapping = [self.ops[i] for i, other in enumerate(outcomes) if i != index and other.started is not None
                       and (other.ended is None or mine.started is None or other.ended >= mine.started)]
        alongside = {other.kind for other in overlapping}
        deleted = any(other.kind == "delete_repo" and other.repo == o.repo for other in overlapping)
        slow = self.clock.now >= self.op_since[index] + GRACE  # slower than the grace (and the idle limit)
        purged = o.kind in ("upload", "chunked", "push") and slow and bool(alongside & {"purge", "gc"})
        if isinstance(error, BlobUploadUnknown):
            # the shared session ended by another request; its own one by a repository deletion, or by the
            # idle purge once the clock moved past the idle limit
            return o.kind.endswith("_shared") or purged or o.kind in ("upload", "chunked", "push") and deleted
        if isinstance(error, (BlobUploadInvalid, DigestInvalid)):
            # another request used or changed the shared session (UploadBusy, a digest no longer matching);
            # the idle purge held its own session (UploadBusy)
            return o.kind.endswith("_shared") or purged and isinstance(error, BlobUploadInvalid)
        if isinstance(error, ManifestBlobUnknown):
            # what a PUT references was never pushed there, or was deleted or collected; what a push uploaded
            # itself is gone only with its repository, or once older than the grace
            return o.kind == "put" or o.kind == "push" and (deleted or slow)
        if isinstance(error, (ManifestUnknown, NameUnknown)):
            return o.kind in ("delete", "untag", "delete_repo")
        if isinstance(error, CollectionRunning):
            return o.kind == "gc"
        return False



READS = frozenset({
    "get", "stat", "info", "read", "all_blobs", "all_uploads", "count_uploads", "uploads", "upload_size", "upload_info",
    "read_upload", "exists", "repositories", "has_manifests", "catalog", "blob_links", "blob_linked", "blob_link_time",
    "manifest_linked", "manifest_link_time", "manifest_links", "resolve_tag", "tags", "referrers", "check_writable"})
ADDS = frozenset({"touch", "link_blob", "link_manifest", "add_referrer", "create_upload", "append_upload",
                  "remove_referrer"})  # referrer records are read by no invariant
TOUCHES = {"put": "bytes", "delete": "bytes", "commit_upload": "bytes", "unlink_blob": "link",
           "unlink_manifest": "link", "delete_tag": "tag", "set_tag": "tag", "cancel_upload": "session"}
# Everything a manifest of these tests reaches (itself, children, config, layers), by digest.
CLOSURE: dict[str, frozenset[str]] = {}
for _name in MANIFESTS:
    CLOSURE[sha256(MANIFESTS[_name])] = frozenset(
        [sha256(MANIFESTS[_name]), *(sha256(BLOBS[b]) for b in NEEDS[_name]),
         *(d for child in CHILDREN.get(_name, []) for d in (sha256(MANIFESTS[child]),
                                                              *(sha256(BLOBS[b]) for b in NEEDS[child])))])


@dataclass(frozen=True)
class Scope:
    """What one step may have broken: blob bytes (`bytes`: in every repository), links (`link`) or tags
    (`tag`) of the given repositories, or upload sessions (`session`)."""

    kind: str
    digests: frozenset[str]
    repos: frozenset[str]
    tags: frozenset[str]

    def reaches(self, repo: str, digest: str | None, tag: str | None = None) -> bool:
        """Whether a tag or a manifest (by digest) of `repo` may be affected."""
        if self.kind == "tag":
            return repo in self.repos and tag in self.tags
        if self.kind == "session" or digest is None or (self.kind == "link" and repo not in self.repos):
            return False
        return bool(CLOSURE.get(digest, frozenset([digest])) & self.digests)

    def reaches_promise(self, promise: Promise) -> bool:
        if promise.kind == "session":
            return self.kind == "session"
        return self.reaches(promise.repo, sha256({**BLOBS, **MANIFESTS}[promise.key]))


SKIP = Scope("skip", frozenset(), frozenset(), frozenset())


@functools.lru_cache(maxsize=64)
def _parsed(raw: bytes) -> Manifest:
    return parse_manifest(raw)


def _scope(last: str | PortCall | None) -> Scope | None:
    """What the last step may have broken: SKIP for a read, a lock, a write that only adds or refreshes,
    or a body chunk appended to a session (sessions only grow); None (anything) for a step of unknown
    effect. The end of an operation and a clock move are checked in full anyway."""
    if not isinstance(last, PortCall):
        return None
    if last.port == "locks" or last.part != "call" or last.method in READS | ADDS:
        return SKIP if last.part != "step" or last.method in READS else None
    kind = TOUCHES.get(last.method)
    if kind is None:
        return None
    return Scope(kind, frozenset(str(a) for a in last.args if isinstance(a, Digest)),
                 frozenset(a.value for a in last.args if isinstance(a, RepositoryName)),
                 frozenset(a.value for a in last.args if isinstance(a, Tag)))


# -- the tests ---------------------------------------------------------------------------------------------
SEEDS = st.integers(0, 2**32 - 1)  # of the schedules


def play(world: World) -> list[Outcome]:
    """Run the operations in the order the world's scheduler picks, checking as they go; raise on a broken
    invariant or an error no race explains."""

    async def main() -> list[Outcome]:
        await world.check(full=False)  # the set-up registry itself was checked once, in its template
        outcomes = await world.sched.run(
            [(f"{i}:{o.kind}", (lambda i=i, o=o: world.execute(i, o))) for i, o in enumerate(world.ops)],
            after_step=world.check)
        world.last_checked = None
        await world.check()  # the final state, whatever the last step was
        return outcomes

    outcomes = asyncio.run(main())
    for i, outcome in enumerate(outcomes):
        if outcome.error is not None and not world.refusal_expected(i, outcome.error):
            raise AssertionError(f"operation {outcome.name} failed unexpectedly: "
                                 f"{type(outcome.error).__name__}: {outcome.error}") from outcome.error
    return outcomes


def _explore(family: str, ops: list[Op], plan: dict, seed: int) -> None:
    """Run the example's program under the family's number of schedules, checking each."""
    stats = STATS[family]
    template = World(lambda labels: 0, ops)  # set up once; each schedule runs on a copy of its storage

    async def prepare() -> None:
        await template.setup(plan)
        await template.check()

    asyncio.run(prepare())
    for index in range(SCHEDULES or FAMILIES[family].schedules):
        # Hypothesis often draws the same small seeds (0, 1, ...) again: mixing in the program keeps the
        # schedules of different examples apart, and a stable hash keeps a failing example replayable.
        mixed = hashlib.sha256(f"{seed}/{index}/{ops!r}/{plan!r}".encode()).digest()
        _schedule(stats, random.Random(mixed), ops, plan, template)
    stats.examples += 1


def _schedule(stats: Stats, rng: random.Random, ops: list[Op], plan: dict, template: World) -> None:
    """One schedule, from a seeded policy. (Drawing each decision from hypothesis made examples near-copies
    of one another, as it builds new choice sequences by mutating earlier ones: 75 examples explored a
    handful of interleavings. Seeded schedules are independent; the failing one is noted in full.)"""
    policy = random_policy(rng, READS)
    decisions: list[int] = []

    def choose(labels: list[str]) -> int:
        decisions.append(policy(labels))
        return decisions[-1]

    world = World(choose, ops, template)
    try:
        outcomes = play(world)
    except Exception:
        stats.first_failure = stats.first_failure or stats.examples + 1
        note(f"failing schedule ({world.sched.step} steps): " + " | ".join(world.sched.trace))
        raise
    finally:
        stats.steps += world.sched.step
        stats.decisions += world.sched.decisions
        stats.schedules.add(hash((tuple(map(repr, ops)), repr(plan), tuple(decisions))))
    reports = [outcome.result for o, outcome in zip(ops, outcomes, strict=True) if o.kind == "gc"]
    removed = any(report is not None and not report.dry_run
                  and (report.manifests_removed or report.blobs_removed or report.layer_links_removed)
                  for report in reports)
    stats.runs += 1
    stats.with_gc += bool(reports)
    stats.gc_removed += removed
    event(f"collection removed something: {removed}" if reports else "no collection")


@settings(SETTINGS, max_examples=EXAMPLES or FAMILIES["sessions"].examples)
@given(plan=setup(), ops=program(FAMILIES["sessions"]), seed=SEEDS)
def test_upload_sessions_shared_purged_and_deleted_interleaved(plan: dict, ops: list[Op], seed: int) -> None:
    _explore("sessions", ops, plan, seed)


@settings(SETTINGS, max_examples=EXAMPLES or FAMILIES["tags"].examples)
@given(plan=setup(), ops=program(FAMILIES["tags"]), seed=SEEDS)
def test_manifest_pushes_retags_and_deletes_interleaved(plan: dict, ops: list[Op], seed: int) -> None:
    _explore("tags", ops, plan, seed)


@settings(SETTINGS, max_examples=EXAMPLES or FAMILIES["collection_pushes"].examples)
@given(plan=setup(advance=st.just(True)), ops=program(FAMILIES["collection_pushes"]), seed=SEEDS)
def test_collection_beside_manifest_pushes_interleaved(plan: dict, ops: list[Op], seed: int) -> None:
    _explore("collection_pushes", ops, plan, seed)


@settings(SETTINGS, max_examples=EXAMPLES or FAMILIES["collection_uploads"].examples)
@given(plan=setup(advance=st.just(True)), ops=program(FAMILIES["collection_uploads"]), seed=SEEDS)
def test_collection_beside_blob_uploads_interleaved(plan: dict, ops: list[Op], seed: int) -> None:
    _explore("collection_uploads", ops, plan, seed)


@settings(SETTINGS, max_examples=EXAMPLES or FAMILIES["any"].examples)
@given(plan=setup(), ops=program(FAMILIES["any"]), seed=SEEDS)
def test_any_operations_interleaved(plan: dict, ops: list[Op], seed: int) -> None:
    _explore("any", ops, plan, seed)


@pytest.fixture(scope="module", autouse=True)
def _summary(request: pytest.FixtureRequest):
    """One line per test: how much it explored, and how often a collection removed something."""
    yield
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if capture is None or reporter is None:
        return
    with capture.global_and_fixture_disabled():
        for family, s in STATS.items():
            reporter.write_line(
                f"interleavings[{family}]: {s.examples} examples, {s.runs} schedules run, {len(s.schedules)} "
                f"distinct, {s.steps} steps, {s.decisions} scheduling decisions; a collection ran in {s.with_gc} "
                f"runs and removed something in {s.gc_removed} ({100 * s.gc_removed // max(1, s.with_gc)}%)"
                + (f"; first failure in example {s.first_failure}" if s.first_failure else ""))
