"""Garbage collection as a state machine: push images, indexes and referrers, tag, untag, delete, move
the clock, collect. Whatever happens, everything a tag reaches stays readable with the right digest,
and after a whole-registry collection nothing unreferenced and older than the grace survives."""

from __future__ import annotations

import asyncio
import json

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from domain.digest import Digest
from domain.manifest import parse_manifest
from domain.names import RepositoryName, Tag
from tests.support import OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST, sha256

from .gc_support import GRACE, FakeClock, chunks_of, push_raw, registry

REPOS = ["a", "b/c"]
TAGS = ["t1", "t2", "t3"]
LAYERS = [f"layer-{i}".encode() * (i + 1) for i in range(6)]


def run(coro):
    return asyncio.run(coro)


class GarbageCollection(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.uc = registry(self.clock)
        self.tags: dict[tuple[str, str], str] = {}
        self.manifests: dict[str, set[str]] = {r: set() for r in REPOS}
        self.counter = 0

    # -- helpers -----------------------------------------------------------------------------------
    def _upload(self, repo: str, blob: bytes) -> None:
        run(self.uc.upload_blob()(RepositoryName(repo), Digest.parse(sha256(blob)), chunks_of(blob)))

    def _put(self, repo: str, raw: bytes, tag: str | None) -> str:
        digest = str(run(push_raw(self.uc, repo, raw, tag)))
        self.manifests[repo].add(digest)
        if tag:
            self.tags[(repo, tag)] = digest
        return digest

    def _refresh_model(self) -> None:
        for repo in REPOS:
            self.manifests[repo] = {str(d) for d in run(self.uc.adapters.repos().manifest_links(RepositoryName(repo)))}

    # -- rules -------------------------------------------------------------------------------------
    @rule(repo=st.sampled_from(REPOS), layers=st.sets(st.integers(0, len(LAYERS) - 1), max_size=3),
          tag=st.none() | st.sampled_from(TAGS))
    def push_image(self, repo, layers, tag):
        self.counter += 1
        config = json.dumps({"n": self.counter}).encode()
        for blob in [config, *(LAYERS[i] for i in sorted(layers))]:
            self._upload(repo, blob)
        raw = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                          "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
                          "layers": [{"mediaType": OCI_LAYER, "digest": sha256(LAYERS[i]), "size": len(LAYERS[i])}
                                     for i in sorted(layers)]}).encode()
        self._put(repo, raw, tag)

    @rule(repo=st.sampled_from(REPOS), data=st.data(), tag=st.none() | st.sampled_from(TAGS))
    def push_index(self, repo, data, tag):
        images = sorted(d for d in self.manifests[repo] if not self._is_index(d))
        if not images:
            return
        children = data.draw(st.lists(st.sampled_from(images), min_size=1, max_size=3, unique=True))
        raw = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": d, "size": self._size(d)} for d in children]}).encode()
        self._put(repo, raw, tag)

    @rule(repo=st.sampled_from(REPOS), data=st.data(), missing_subject=st.booleans())
    def push_referrer(self, repo, data, missing_subject):
        candidates = sorted(self.manifests[repo])
        if missing_subject or not candidates:
            subject, size = sha256(f"absent-{self.counter}".encode()), 10
        else:
            subject = data.draw(st.sampled_from(candidates))
            size = self._size(subject)
        self.counter += 1
        self._upload(repo, b"{}")
        raw = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": f"x/{self.counter}",
                          "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256(b"{}"),
                                     "size": 2}, "layers": [],
                          "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": size}}).encode()
        self._put(repo, raw, None)

    @rule(repo=st.sampled_from(REPOS), data=st.data(), tag=st.sampled_from(TAGS))
    def retag(self, repo, data, tag):
        if self.manifests[repo]:
            digest = data.draw(st.sampled_from(sorted(self.manifests[repo])))
            raw = run(self.uc.get_manifest()(RepositoryName(repo), Digest.parse(digest))).raw
            self._put(repo, raw, tag)

    @rule(repo=st.sampled_from(REPOS), tag=st.sampled_from(TAGS))
    def untag(self, repo, tag):
        if self.tags.pop((repo, tag), None) is not None:
            run(self.uc.delete_manifest()(RepositoryName(repo), Tag(tag)))

    @rule(repo=st.sampled_from(REPOS), data=st.data())
    def delete_manifest(self, repo, data):
        # A user may delete any manifest, but deleting an index's child breaks that index by request
        # (as in Distribution); the collector must never do it on its own, which is what we check.
        children = {str(c.digest) for d in self.manifests[repo]
                    for c in parse_manifest(run(self.uc.adapters.blobs().get(Digest.parse(d)))).manifests}
        deletable = sorted(self.manifests[repo] - children)
        if not deletable:
            return
        digest = data.draw(st.sampled_from(deletable))
        run(self.uc.delete_manifest()(RepositoryName(repo), Digest.parse(digest)))
        self.manifests[repo].discard(digest)
        for key in [k for k, v in self.tags.items() if k[0] == repo and v == digest]:
            del self.tags[key]

    @rule(seconds=st.sampled_from([1, 600, GRACE / 2, GRACE + 1, 3 * GRACE]))
    def advance(self, seconds):
        self.clock.advance(seconds)

    @rule(repo=st.sampled_from(REPOS), blob=st.binary(min_size=1, max_size=20))
    def upload_orphan(self, repo, blob):
        self._upload(repo, blob)

    @rule(delete_untagged=st.booleans(), scope=st.none() | st.sampled_from(REPOS), dry_run=st.booleans())
    def collect(self, delete_untagged, scope, dry_run):
        horizon = self.clock() - GRACE
        report = run(self.uc.collect_garbage()(RepositoryName(scope) if scope else None,
                                               delete_untagged=delete_untagged, dry_run=dry_run))
        event(f"collection removed manifests: {bool(report.manifests_removed)}")
        event(f"collection removed blobs: {bool(report.blobs_removed)}")
        self._refresh_model()
        if scope is not None or dry_run:
            return
        referenced: set[str] = set()
        for repo in REPOS:
            for digest in self.manifests[repo]:
                referenced.add(digest)
                manifest = parse_manifest(run(self.uc.adapters.blobs().get(Digest.parse(digest))))
                referenced.update(str(d) for d in manifest.required_blobs())
        for info in list(self.uc.adapters.blobs().blobs):
            used = self.uc.adapters.blobs().used[info]
            assert str(info) in referenced or used >= horizon, f"{info} survived unreferenced and stale"

    # -- what must always hold ----------------------------------------------------------------------
    @invariant()
    def tagged_content_is_intact(self):
        for (repo, tag), digest in self.tags.items():
            stored = run(self.uc.get_manifest()(RepositoryName(repo), Tag(tag)))
            assert str(stored.digest) == digest and sha256(stored.raw) == digest
            self._check_reachable(repo, stored.raw)

    def _check_reachable(self, repo: str, raw: bytes) -> None:
        manifest = parse_manifest(raw)
        for blob in manifest.required_blobs():
            content = run(self.uc.read_blob()(RepositoryName(repo), blob))
            data = b"".join(run(_collect(content.chunks)))
            assert sha256(data) == str(blob)
        for child in manifest.manifests:
            self._check_reachable(repo, run(self.uc.get_manifest()(RepositoryName(repo), child.digest)).raw)

    def _is_index(self, digest: str) -> bool:
        return parse_manifest(run(self.uc.adapters.blobs().get(Digest.parse(digest)))).is_index

    def _size(self, digest: str) -> int:
        return len(run(self.uc.adapters.blobs().get(Digest.parse(digest))))


async def _collect(chunks):
    return [c async for c in chunks]


GarbageCollection.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None,
                                               suppress_health_check=list(HealthCheck))
TestGarbageCollection = GarbageCollection.TestCase
