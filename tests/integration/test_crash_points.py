"""Crash at every step (issue 9): each multi-step operation runs on the filesystem adapters in a child
process that dies right after its Nth filesystem change, for every N (tests/crashpoints.py). After each
kill the test restarts (a fresh container on the same tree, the catalog reconciled as the server does at
start) and checks that what is there is whole to readers; then it runs the recovery the registry runs
(the purge of idle uploads and of debris, a collection where the operation deletes, the catalog
reconciled) and checks again; then it repeats the operation (a client retrying, an admin repeating a
DELETE, the next collection) and checks that it finishes.

Invariants, read through the use-cases and the ports:
- every tag listed resolves to a whole image: manifest readable and hashing to its digest, children
  linked and whole, config and layers linked in the repository, present and hashing to their digests;
- every manifest linked in a repository whose bytes are stored is whole the same way (an index pinned by
  digest keeps its children; an image keeps its config and layers);
- every blob file hashes to its name;
- after the catalog is reconciled, it lists exactly the repositories that link at least one manifest;
- the operation is all there or not at all, object by object (a tag names its old or its new target, a
  deleted repository keeps a subset of its tags, each still naming what it named);
- after the recovery, no debris is left: no `.tmp-` file, no dot-directory among the tags, no revision
  directory without its link, no idle upload session.

On the code before the fixes (63f4a29) it finds, at the first crash point that shows each: defect 10 in
repository_delete (N=1, the unlink of a `_layers` link: a listed tag's blobs are no longer linked),
defect 11 in gc_delete_untagged (N=1, the unlink of a child's revision link: an untagged index pinned
by digest loses its child), defect 12 in manifest_put_new_tag (the mkdir of the revision directory: the
catalog lists a repository without a manifest) and in manifest_delete_last (the unlink of the last
revision link). Each world is small (layers of 24 bytes): the 13 operations make ~320 crash points, 35-50 s on 2 cores.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from domain.digest import Digest
from domain.errors import ManifestUnknown, NameUnknown, RegistryError
from domain.manifest import parse_manifest
from domain.names import RepositoryName, Tag, parse_reference
from entrypoints.container import Container, build_container
from entrypoints.settings import Settings
from tests.crashpoints import CrashRunner, Outcome, every_crash_point, scratch_dir
from tests.support import OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST, sha256

TARGET = f"{__name__}:child"
OLD = 30 * 24 * 3600  # the template's files are this old: past every grace and idle time
# The recovery runs as if two hours had passed: every session and leftover is idle by then.
LATER = 7200.0


def container(root: str, clock: Callable[[], float] | None = None) -> Container:
    """The registry as the server builds it. Grace 0: the collection operation removes what the test made
    old; sessions older than an hour are idle."""
    settings = Settings(storage_root=root, fsync=False, gc_grace_seconds=0, upload_max_idle_seconds=3600)
    return build_container(settings, clock=clock)


# -- content: small images, fixed at import so the child and the test build the same bytes -------------

@dataclass(frozen=True)
class Img:
    raw: bytes
    blobs: tuple[bytes, ...] = ()
    media_type: str = OCI_MANIFEST

    @property
    def digest(self) -> Digest:
        return Digest.parse(sha256(self.raw))


def blob(seed: str, size: int = 24) -> bytes:
    return hashlib.shake_256(seed.encode()).digest(size)


def image(seed: str, layers: list[bytes] | None = None, subject: Img | None = None) -> Img:
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
    layers = layers if layers is not None else [blob(f"{seed}/layer")]
    doc: dict = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": sha256(b), "size": len(b)} for b in layers],
    }
    if subject is not None:
        doc["artifactType"] = "application/vnd.example.signature"
        doc["subject"] = {"mediaType": subject.media_type, "digest": str(subject.digest), "size": len(subject.raw)}
    return Img(json.dumps(doc).encode(), (config, *layers))


def index(children: list[Img], salt: str = "") -> Img:
    raw = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": c.media_type, "digest": str(c.digest), "size": len(c.raw),
                       "platform": {"architecture": f"arch{i}", "os": "linux"}} for i, c in enumerate(children)],
        "annotations": {"salt": salt},
    }).encode()
    return Img(raw, (), OCI_INDEX)


# world "images": app, fresh (blobs only), solo (one image)
A = image("a")
R = image("r", subject=A)  # a signature of A, tagged "sig"
B = image("b")
C = image("c")  # blobs uploaded to app, no manifest: pushed by digest by an operation
X1, X2 = image("x1"), image("x2")
MULTI = index([X1, X2])
F = image("f")  # blobs uploaded to fresh: its first manifest is pushed by an operation
S = image("s")
# world "repository": doomed (deleted), doomed/inner (nested: stays), keep (shares a layer with doomed)
SHARED = blob("shared")
P1 = image("p1", [SHARED, blob("p1/own")])
P2 = image("p2")
Q1, Q2 = image("q1"), image("q2")
J = index([Q1, Q2])
RP = image("rp", subject=P1)
K = image("k", [SHARED])
N = image("n")
EXTRA = blob("extra")  # linked in doomed by no manifest
# world "gc": gc (a tagged image; an untagged index with children, an untagged image and its referrer),
# other (shares a layer with the untagged image)
T = image("t")
U1, U2 = image("u1"), image("u2")
GC_SHARED = blob("gc-shared")
V = image("v", [GC_SHARED, blob("v/own")])
W = image("w", subject=V)
O_IMG = image("o", [GC_SHARED])
# world "uploads": up (a tagged image, two idle sessions, leftovers of interrupted writes)
E = image("e")
NEW_BLOB = blob("new-blob", 48)


def gc_index(salt: str) -> Img:
    return index([U1, U2], salt)


# -- pushing (template preparation and the operations) ------------------------------------------------

async def _chunks(data: bytes):
    yield data


async def upload(c: Container, repo: str, data: bytes) -> None:
    await c.upload_blob()(RepositoryName(repo), Digest.parse(sha256(data)), _chunks(data))


async def push(c: Container, repo: str, img: Img, reference: str | None = None) -> None:
    for data in img.blobs:
        await upload(c, repo, data)
    await c.put_manifest()(RepositoryName(repo), parse_reference(reference or str(img.digest)), img.raw,
                           img.media_type)


async def open_session(c: Container, repo: str, data: bytes) -> str:
    session = await c.start_upload()(RepositoryName(repo))
    await c.append_upload()(RepositoryName(repo), session.upload_id, _chunks(data))
    return session.upload_id


def v2(root: str) -> str:
    return os.path.join(root, "docker", "registry", "v2")


async def build_images(c: Container, root: str) -> None:
    await push(c, "app", A, "latest")
    await push(c, "app", A, "v1")
    await push(c, "app", R, "sig")
    await push(c, "app", B)
    await push(c, "app", X1)
    await push(c, "app", X2)
    for data in C.blobs:
        await upload(c, "app", data)
    for data in F.blobs:
        await upload(c, "fresh", data)
    await push(c, "solo", S, "only")


async def build_repository(c: Container, root: str) -> None:
    await push(c, "doomed", P1, "t1")
    await push(c, "doomed", P1, "t2")
    await push(c, "doomed", P2, "t3")
    await push(c, "doomed", Q1)
    await push(c, "doomed", Q2)
    await push(c, "doomed", J, "multi")
    await push(c, "doomed", RP)
    await upload(c, "doomed", EXTRA)
    await open_session(c, "doomed", b"half an upload")
    await push(c, "doomed/inner", N, "v1")
    await push(c, "keep", K, "v1")


async def build_gc(c: Container, root: str, salt: str = "") -> None:
    await push(c, "gc", T, "keep")
    await push(c, "gc", U1)
    await push(c, "gc", U2)
    await push(c, "gc", gc_index(salt))
    await push(c, "gc", V)
    await push(c, "gc", W)
    await push(c, "other", O_IMG, "v1")


async def build_uploads(c: Container, root: str) -> None:
    await push(c, "up", E, "v1")
    await open_session(c, "up", b"first idle session")
    await open_session(c, "up", b"second idle session, longer")
    # What writes cut short leave: temporary files beside a blob and a link, a tag half made.
    config = Digest.parse(sha256(E.blobs[0]))
    blob_dir = os.path.join(v2(root), "blobs", "sha256", config.hex[:2], config.hex)
    with open(os.path.join(blob_dir, "data.tmp-" + "ab" * 16), "wb") as f:
        f.write(b"half")
    layers = os.path.join(v2(root), "repositories", "up", "_layers", "sha256", config.hex)
    with open(os.path.join(layers, "link.tmp-" + "cd" * 16), "wb") as f:
        f.write(b"sha256:")
    half_tag = os.path.join(v2(root), "repositories", "up", "_manifests", "tags", ".0123abcd", "current")
    os.makedirs(half_tag)
    with open(os.path.join(half_tag, "link"), "wb") as f:
        f.write(str(E.digest).encode())


def age(root: str, seconds: float) -> None:
    """Every file and directory as if last touched `seconds` ago (copies keep these times)."""
    when = time.time() - seconds
    for directory, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            os.utime(os.path.join(directory, name), (when, when), follow_symlinks=False)
    os.utime(root, (when, when))


def prepare(root: str, world: str) -> None:
    async def build() -> None:
        c = container(root)
        await WORLDS[world](c, root)
        await c.adapters.repos().refresh_catalog()
        if world == "catalog":  # the refresh above made it whole again: break it once more
            await build_catalog_damage(root)
    asyncio.run(build())
    age(root, OLD)


async def build_catalog_damage(root: str) -> None:
    catalog = os.path.join(v2(root), "_myregistry", "catalog")
    for name in (".complete", "app"):
        os.unlink(os.path.join(catalog, name))
    for name in ("ghost", "fresh"):
        open(os.path.join(catalog, name), "ab").close()


def prepare_gc(root: str) -> str:
    """The gc world with an index salt such that, in a copy, a child's revision is listed before the
    index's: a sweep that follows the listing order then unlinks a child first (the order of defect 11).
    The fixed collector must remove the index first whatever the order."""
    probe = root + "-probe"
    for attempt in range(64):
        salt = f"salt{attempt}"
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(probe, ignore_errors=True)
        asyncio.run(_gc_world(root, salt))
        shutil.copytree(root, probe, symlinks=True)
        order = os.listdir(os.path.join(v2(probe), "repositories", "gc", "_manifests", "revisions", "sha256"))
        top = order.index(gc_index(salt).digest.hex)
        if any(order.index(child.digest.hex) < top for child in (U1, U2)):
            break
    shutil.rmtree(probe, ignore_errors=True)
    age(root, OLD)
    return salt


async def _gc_world(root: str, salt: str) -> None:
    c = container(root)
    await build_gc(c, root, salt)
    await c.adapters.repos().refresh_catalog()


WORLDS: dict[str, Callable[[Container, str], Awaitable[None]]] = {
    "images": build_images, "catalog": build_images, "repository": build_repository, "uploads": build_uploads,
}


# -- what the test reads ----------------------------------------------------------------------------

@dataclass
class Snap:
    tags: dict[str, dict[str, Digest]] = field(default_factory=dict)
    manifests: dict[str, set[Digest]] = field(default_factory=dict)
    blob_links: dict[str, set[Digest]] = field(default_factory=dict)
    uploads: dict[str, dict[str, int | None]] = field(default_factory=dict)  # repo -> id -> size
    catalog: list[str] = field(default_factory=list)

    def tags_of(self, repo: str) -> dict[str, Digest]:
        return self.tags.get(repo, {})

    def manifests_of(self, repo: str) -> set[Digest]:
        return self.manifests.get(repo, set())


async def inspect(c: Container) -> tuple[list[str], Snap]:
    """The invariants that hold whatever ran, and a snapshot for the operation's own expectations."""
    repos, blobs, get = c.adapters.repos(), c.adapters.blobs(), c.get_manifest()
    problems: list[str] = []
    snap = Snap()

    async for info in blobs.all_blobs():
        data = await blobs.get(info.digest)
        if Digest.of(data, info.digest.algorithm) != info.digest:
            problems.append(f"blob file {info.digest} holds {len(data)} bytes that hash to something else")

    names = await repos.repositories()
    for name in names:
        repo = RepositoryName(name)
        memo: dict[Digest, list[str]] = {}
        tags: dict[str, Digest] = {}
        for tag in await repos.tags(repo):
            try:
                resolved = await get(repo, Tag(tag))
            except RegistryError as e:
                problems.append(f"tag {name}:{tag} is listed but does not resolve ({e.message})")
                continue
            tags[tag] = resolved.digest
            problems += await whole(c, repo, resolved.digest, f"tag {name}:{tag}", memo)
        links = await repos.manifest_links(repo)
        for digest in links:
            if await blobs.stat(digest) is not None:  # without bytes it answers 404: nothing half is served
                problems += await whole(c, repo, digest, f"{name}@{digest.hex[:12]} (linked)", memo)
        snap.tags[name] = tags
        snap.manifests[name] = set(links)
        snap.blob_links[name] = set(await repos.blob_links(repo))

    async for upload_info in blobs.all_uploads():
        sizes = snap.uploads.setdefault(upload_info.repo.value, {})
        sizes[upload_info.upload_id] = await blobs.upload_size(upload_info.repo, upload_info.upload_id)

    snap.catalog = list(await repos.catalog())
    wanted = sorted(n for n in names if snap.manifests[n])
    if snap.catalog != wanted:
        problems.append(f"the catalog lists {snap.catalog}, the repositories linking a manifest are {wanted}")
    return _unique(problems), snap


async def whole(c: Container, repo: RepositoryName, digest: Digest, via: str,
                memo: dict[Digest, list[str]]) -> list[str]:
    """What keeps the manifest from being whole to a reader of `repo` (nothing when it is)."""
    if digest in memo:
        return memo[digest]
    repos, blobs = c.adapters.repos(), c.adapters.blobs()
    found: list[str] = []
    memo[digest] = found
    try:
        raw = (await c.get_manifest()(repo, digest)).raw
    except RegistryError as e:
        found.append(f"{via}: manifest {digest} does not answer by digest in {repo} ({e.message})")
        return found
    if Digest.of(raw, digest.algorithm) != digest:
        found.append(f"{via}: manifest {digest} bytes hash to something else")
        return found
    manifest = parse_manifest(raw)
    for child in manifest.manifests:
        found += await whole(c, repo, child.digest, f"{via} -> child {child.digest.hex[:12]}", memo)
    for needed in manifest.required_blobs():
        if not await repos.blob_linked(repo, needed):
            found.append(f"{via}: blob {needed} of manifest {digest.hex[:12]} is not linked in {repo}")
        try:
            data = await blobs.get(needed)
        except RegistryError:
            found.append(f"{via}: blob {needed} of manifest {digest.hex[:12]} is not stored")
            continue
        if Digest.of(data, needed.algorithm) != needed:
            found.append(f"{via}: blob {needed} does not hash to its digest")
    return found


def debris(root: str) -> list[str]:
    """Leftovers of interrupted writes: no port shows them, so the tree is read directly."""
    found = []
    base = v2(root)
    for directory, dirs, files in os.walk(base):
        rel = os.path.relpath(directory, base)
        found += [f"temporary file {rel}/{f} survived the purge" for f in files if ".tmp-" in f]
        if os.path.basename(directory) == "tags":
            found += [f"half-made tag {rel}/{d} survived the purge" for d in dirs if d.startswith(".")]
        if os.path.basename(os.path.dirname(directory)) == "revisions" and os.path.basename(
                os.path.dirname(os.path.dirname(directory))) == "_manifests":
            found += [f"revision directory {rel}/{d} without a link survived the purge" for d in dirs
                      if not os.path.exists(os.path.join(directory, d, "link"))]
    return found


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


# -- the operations ------------------------------------------------------------------------------------

Check = Callable[[Snap, Snap], list[str]]


@dataclass(frozen=True)
class Op:
    name: str
    world: str
    run: Callable[[Container], Awaitable[object]]
    allowed: Check  # the old state or the new one, object by object
    done: Check  # the whole effect
    deletion: bool = False  # the recovery includes a collection; repeating may find nothing left
    catalog_unreconciled: bool = False  # the catalog must be right before any reconciliation


def same(repo: str, *, but_tags: tuple[str, ...] = (), but_manifests: tuple[Digest, ...] = ()) -> Check:
    """The repository's tags and manifests are as before, except those named."""
    def check(before: Snap, now: Snap) -> list[str]:
        problems = []
        old_tags = {t: d for t, d in before.tags_of(repo).items() if t not in but_tags}
        new_tags = {t: d for t, d in now.tags_of(repo).items() if t not in but_tags}
        if old_tags != new_tags:
            problems.append(f"{repo}'s other tags changed: {_show(old_tags)} became {_show(new_tags)}")
        if before.manifests_of(repo) - set(but_manifests) != now.manifests_of(repo) - set(but_manifests):
            problems.append(f"{repo}'s other manifests changed")
        return problems
    return check


def tag_is(repo: str, tag: str, *choices: Digest | None) -> Check:
    def check(before: Snap, now: Snap) -> list[str]:
        target = now.tags_of(repo).get(tag)
        if target in choices:
            return []
        shown = [str(d)[:19] if d else "absent" for d in choices]
        return [f"{repo}:{tag} is {str(target)[:19] if target else 'absent'}, expected one of {shown}"]
    return check


def linked(repo: str, digest: Digest, *choices: bool) -> Check:
    def check(before: Snap, now: Snap) -> list[str]:
        state = digest in now.manifests_of(repo)
        return [] if state in choices else [f"{repo}@{digest.hex[:12]} is {'' if state else 'not '}linked"]
    return check


def all_of(*checks: Check) -> Check:
    def check(before: Snap, now: Snap) -> list[str]:
        return [p for c in checks for p in c(before, now)]
    return check


def _show(tags: dict[str, Digest]) -> str:
    return "{" + ", ".join(f"{t}: {d.hex[:8]}" for t, d in sorted(tags.items())) + "}"


def repository_subset(repo: str) -> Check:
    """A repository being deleted keeps a subset of its tags, each naming what it named, and of its
    manifests."""
    def check(before: Snap, now: Snap) -> list[str]:
        problems = []
        for tag, digest in now.tags_of(repo).items():
            if before.tags_of(repo).get(tag) != digest:
                problems.append(f"{repo}:{tag} names {digest.hex[:12]}, not what it named before")
        if not now.manifests_of(repo) <= before.manifests_of(repo):
            problems.append(f"{repo} gained manifests while being deleted")
        return problems
    return check


def repository_gone(repo: str) -> Check:
    def check(before: Snap, now: Snap) -> list[str]:
        left = [what for what, there in (("tags", now.tags_of(repo)), ("manifests", now.manifests_of(repo)),
                                         ("blob links", now.blob_links.get(repo)), ("uploads", now.uploads.get(repo)),
                                         ("a catalog entry", repo in now.catalog)) if there]
        return [f"{repo} still has {', '.join(left)} after its deletion finished"] if left else []
    return check


def uploads_subset(repo: str) -> Check:
    """A purge cut short leaves each session whole or gone (a session without its data answers 404 to
    status, PATCH and PUT alike: gone to clients, and the next purge removes the rest)."""
    def check(before: Snap, now: Snap) -> list[str]:
        old = before.uploads.get(repo, {})
        return [f"upload {uid} in {repo} has {size} bytes, it had {old.get(uid)}"
                for uid, size in now.uploads.get(repo, {}).items() if size is not None and old.get(uid) != size]
    return check


def no_uploads(repo: str) -> Check:
    def check(before: Snap, now: Snap) -> list[str]:
        left = set(before.uploads.get(repo, {})) & set(now.uploads.get(repo, {}))
        return [f"idle uploads {sorted(left)} of {repo} are still open"] if left else []
    return check


def blob_there(repo: str, data: bytes) -> Check:
    def check(before: Snap, now: Snap) -> list[str]:
        digest = Digest.parse(sha256(data))
        return [] if digest in now.blob_links.get(repo, set()) else [f"blob {digest} is not linked in {repo}"]
    return check


def shrinks(repo: str, keep: Digest) -> Check:
    """A collection cut short has removed some of the repository's manifests, never the tagged one."""
    def check(before: Snap, now: Snap) -> list[str]:
        problems = same(repo, but_manifests=tuple(before.manifests_of(repo)))(before, now)
        if not now.manifests_of(repo) <= before.manifests_of(repo) or keep not in now.manifests_of(repo):
            problems.append(f"{repo}'s manifests went from {len(before.manifests_of(repo))} to "
                            f"{len(now.manifests_of(repo))}, tagged {keep.hex[:12]} among them: "
                            f"{keep in now.manifests_of(repo)}")
        return problems
    return check


def gc_left(before: Snap, now: Snap) -> list[str]:
    """The collection removes every untagged manifest of gc, and nothing else."""
    extra = now.manifests_of("gc") - {T.digest}
    return [f"gc still links {sorted(d.hex[:12] for d in extra)} after a delete_untagged collection"] if extra else []


async def _put(c: Container, repo: str, img: Img, reference: str | None = None) -> None:
    await c.put_manifest()(RepositoryName(repo), parse_reference(reference or str(img.digest)), img.raw,
                           img.media_type)


async def _delete(c: Container, repo: str, reference: str) -> None:
    await c.delete_manifest()(RepositoryName(repo), parse_reference(reference))


async def _commit_blob(c: Container) -> None:
    repo = RepositoryName("up")
    session = await c.start_upload()(repo)
    half = len(NEW_BLOB) // 2
    await c.append_upload()(repo, session.upload_id, _chunks(NEW_BLOB[:half]))
    await c.append_upload()(repo, session.upload_id, _chunks(NEW_BLOB[half:]))
    await c.complete_upload()(repo, session.upload_id, Digest.parse(sha256(NEW_BLOB)))


def _gc_run(delete_untagged: bool) -> Callable[[Container], Awaitable[object]]:
    async def run(c: Container) -> object:
        return await c.collect_garbage()(delete_untagged=delete_untagged)
    return run


OPS = [
    Op("manifest_put_new_tag", "images", lambda c: _put(c, "fresh", F, "v1"),
       allowed=all_of(tag_is("fresh", "v1", None, F.digest), same("fresh", but_tags=("v1",), but_manifests=(F.digest,)),
                      same("app"), same("solo")),
       done=all_of(tag_is("fresh", "v1", F.digest), linked("fresh", F.digest, True))),
    Op("manifest_put_by_digest", "images", lambda c: _put(c, "app", C),
       allowed=all_of(same("app", but_manifests=(C.digest,)), same("fresh"), same("solo")),
       done=linked("app", C.digest, True)),
    Op("tag_move", "images", lambda c: _put(c, "app", B, "latest"),
       allowed=all_of(tag_is("app", "latest", A.digest, B.digest), same("app", but_tags=("latest",))),
       done=tag_is("app", "latest", B.digest)),
    Op("index_put", "images", lambda c: _put(c, "app", MULTI, "multi"),
       allowed=all_of(tag_is("app", "multi", None, MULTI.digest),
                      same("app", but_tags=("multi",), but_manifests=(MULTI.digest,))),
       done=all_of(tag_is("app", "multi", MULTI.digest), linked("app", MULTI.digest, True))),
    Op("manifest_delete_tagged", "images", lambda c: _delete(c, "app", str(A.digest)),
       allowed=all_of(tag_is("app", "latest", None, A.digest), tag_is("app", "v1", None, A.digest),
                      same("app", but_tags=("latest", "v1"), but_manifests=(A.digest,)), same("solo")),
       done=all_of(linked("app", A.digest, False), tag_is("app", "latest", None), tag_is("app", "v1", None)),
       deletion=True),
    Op("manifest_delete_referrer", "images", lambda c: _delete(c, "app", str(R.digest)),
       allowed=all_of(tag_is("app", "sig", None, R.digest), same("app", but_tags=("sig",), but_manifests=(R.digest,))),
       done=all_of(linked("app", R.digest, False), tag_is("app", "sig", None), linked("app", A.digest, True)),
       deletion=True),
    Op("tag_delete", "images", lambda c: _delete(c, "app", "v1"),
       allowed=all_of(tag_is("app", "v1", None, A.digest), same("app", but_tags=("v1",))),
       done=all_of(tag_is("app", "v1", None), tag_is("app", "latest", A.digest)),
       deletion=True),
    Op("manifest_delete_last", "images", lambda c: _delete(c, "solo", str(S.digest)),
       allowed=all_of(tag_is("solo", "only", None, S.digest), same("app")),
       done=all_of(linked("solo", S.digest, False), tag_is("solo", "only", None)),
       deletion=True),
    Op("repository_delete", "repository", lambda c: c.delete_repository()(RepositoryName("doomed")),
       allowed=all_of(repository_subset("doomed"), same("doomed/inner"), same("keep")),
       done=all_of(repository_gone("doomed"), same("doomed/inner"), same("keep")),
       deletion=True),
    Op("gc_delete_untagged", "gc", _gc_run(True),
       allowed=all_of(shrinks("gc", T.digest), same("other")),
       done=all_of(gc_left, same("other")),
       deletion=True),
    Op("upload_purge", "uploads", lambda c: c.purge_uploads()(),
       allowed=all_of(same("up"), uploads_subset("up")),
       done=all_of(same("up"), no_uploads("up"))),
    Op("catalog_rebuild", "catalog", lambda c: c.adapters.repos().refresh_catalog(),
       allowed=all_of(same("app"), same("solo")),
       done=all_of(same("app"), same("solo")),
       catalog_unreconciled=True),
    Op("blob_upload_commit", "uploads", _commit_blob,
       allowed=same("up"),
       done=all_of(same("up"), blob_there("up", NEW_BLOB))),
]
OPS_BY_NAME = {op.name: op for op in OPS}


def child(root: str, name: str) -> Awaitable[object]:
    """Runs in the crash child: the operation on a container built there, as a server would."""
    return OPS_BY_NAME[name].run(container(root))


# -- the restart and the checks ----------------------------------------------------------------------

async def after_crash(op: Op, before: Snap, root: str, outcome: Outcome) -> list[str]:
    problems: list[str] = []

    def note(phase: str, found: list[str]) -> None:
        problems.extend(f"{phase}: {p}" for p in found)

    # The restart: a new process on the same tree, which reconciles the catalog index at start.
    c = container(root)
    if op.catalog_unreconciled:
        listed, linking = await c.adapters.repos().catalog(), await _linking(c)
        if listed != linking:
            note("restart, before reconciling",
                 [f"the catalog lists {listed}, the repositories linking a manifest are {linking}"])
    await c.adapters.repos().refresh_catalog()
    found, snap = await inspect(c)
    found += op.allowed(before, snap)
    if not outcome.crashed:
        found += op.done(before, snap)
    note("restart", found)

    # The recovery the registry runs: the purge (idle uploads, debris), a collection after a deletion.
    c = container(root, clock=lambda: time.time() + LATER)
    await c.purge_uploads()()
    if op.deletion:
        await c.collect_garbage()()
    await c.adapters.repos().refresh_catalog()
    found, snap = await inspect(c)
    found += op.allowed(before, snap) + debris(root)
    found += [f"upload {uid} of {repo} survived the purge of idle sessions"
              for repo, ids in snap.uploads.items() for uid in ids]
    note("recovery", found)

    # Repeating the operation finishes it.
    c = container(root)
    try:
        await op.run(c)
    except (ManifestUnknown, NameUnknown):
        if not op.deletion:
            raise
    found, snap = await inspect(c)
    note("repeated", found + op.done(before, snap))
    return _unique(problems)


async def _linking(c: Container) -> list[str]:
    repos = c.adapters.repos()
    return sorted([n for n in await repos.repositories() if await repos.manifest_links(RepositoryName(n))])


# -- the test --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def runner():
    with CrashRunner() as r:
        yield r


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory):
    """Templates and copies live here (a tmpfs when there is one: see scratch_dir)."""
    fallback = str(tmp_path_factory.mktemp("crash-scratch"))
    path = scratch_dir(fallback)
    yield path
    if path != fallback:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def templates(scratch: str) -> Callable[[str], str]:
    """Each world is prepared once, then copied for every crash point of every operation using it."""
    made: dict[str, str] = {}

    def get(world: str) -> str:
        if world not in made:
            root = os.path.join(scratch, "template-" + world)
            if world == "gc":
                prepare_gc(root)
            else:
                prepare(root, world)
            made[world] = root
        return made[world]
    return get


def snapshot(template: str) -> Snap:
    """The state before the operation, read on a copy: reading the catalog may reconcile its index."""
    root = template + "-snapshot"
    shutil.copytree(template, root, symlinks=True)

    async def read() -> Snap:
        problems, snap = await inspect(container(root))
        assert not problems, f"the template is not whole: {problems}"
        return snap
    try:
        return asyncio.run(read())
    finally:
        shutil.rmtree(root)


@pytest.mark.parametrize("op", OPS, ids=[op.name for op in OPS])
def test_crash_at_every_step(op: Op, runner: CrashRunner, templates, scratch: str, tmp_path) -> None:
    template = templates(op.world)
    before = snapshot(template)
    workdir = os.path.join(scratch, op.name)
    os.mkdir(workdir)
    sweep = every_crash_point(runner, TARGET, template, workdir,
                              lambda root, outcome: asyncio.run(after_crash(op, before, root, outcome)),
                              args=(op.name,), keep_failed=str(tmp_path))
    print(f"\n{op.name}: {sweep.points} crash points in {sweep.seconds:.1f} s")
    assert sweep.points > 0, "the operation changed nothing on disk: the counter is not counting"
    assert not sweep.failures, f"{op.name}: {sweep.describe()}\n(first failing copy kept under {tmp_path})"


def test_cancel_never_leaves_a_session_without_its_lock(tmp_path, monkeypatch):
    """A session's lock is a flock on its `startedat`; if a crash removed that file but left `data`, two
    requests could append at once again (blob poisoning). Directory order decides what rmtree removes
    first (ext4 hashes names): list `startedat` first and check the bytes still go before the lock."""
    import asyncio

    from adapters.filesystem import FilesystemBlobStore, Layout
    from domain.names import RepositoryName

    store = FilesystemBlobStore(Layout(str(tmp_path)))
    repo, upload_id = RepositoryName("app"), "0b7f4a1e-3f0c-4a8e-9a55-0123456789ab"
    asyncio.run(store.create_upload(repo, upload_id, 0.0))
    real_scandir, real_unlink, removed = os.scandir, os.unlink, []

    class _Listing:
        def __init__(self, entries):
            self.entries = sorted(entries, key=lambda e: e.name, reverse=True)  # startedat before data

        def __enter__(self):
            return iter(self.entries)

        def __exit__(self, *exc):
            return False

        def __iter__(self):
            return iter(self.entries)

    def scandir(path=".", *args, **kwargs):
        with real_scandir(path, *args, **kwargs) as it:
            return _Listing(list(it))

    def unlink(path, *args, **kwargs):
        removed.append(os.path.basename(path))
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(os, "unlink", unlink)
    assert asyncio.run(store.cancel_upload(repo, upload_id))
    assert removed.index("data") < removed.index("startedat"), removed


def test_a_purge_during_a_commit_keeps_the_blob(tmp_path, monkeypatch):
    """A commit moves an idle session's bytes under a temporary name beside the blob; the purge of debris
    (temporary files older than the idle limit) running at that moment must not take them."""
    import asyncio
    import time

    from adapters.filesystem import FilesystemBlobStore, Layout
    from adapters.filesystem.files import remove_debris
    from domain.digest import Digest
    from domain.names import RepositoryName

    layout = Layout(str(tmp_path))
    store = FilesystemBlobStore(layout)
    repo, upload_id, data = RepositoryName("app"), "0b7f4a1e-3f0c-4a8e-9a55-0123456789ab", b"idle for a day"

    async def chunks():
        yield data

    asyncio.run(store.create_upload(repo, upload_id, 0.0))
    asyncio.run(store.append_upload(repo, upload_id, chunks()))
    os.utime(layout.upload_data(repo, upload_id), (time.time() - 86400,) * 2)
    real_rename, purged = os.rename, []

    def rename(src, dst, *args, **kwargs):
        real_rename(src, dst, *args, **kwargs)
        if ".tmp-" in str(dst):  # the purge runs right after the bytes left the session
            purged.append(remove_debris(layout.blobs_root, layout.is_debris, time.time() - 3600, False))

    monkeypatch.setattr(os, "rename", rename)
    asyncio.run(store.commit_upload(repo, upload_id, Digest.of(data), len(data)))
    assert purged == [0] and asyncio.run(store.get(Digest.of(data))) == data
