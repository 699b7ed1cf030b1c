"""How the garbage collection scales: time and memory of a `delete_untagged` collection over 1k / 10k / 100k
manifests on the filesystem store.

    python bench/gc_scale.py                                  # 1,000 / 10,000 / 100,000 manifests, 10 repositories
    python bench/gc_scale.py --sizes 500,1000,2000 --repos 1  # the review's quadratic-sweep probe

The storage is written directly in Distribution's layout (src/adapters/filesystem/layout.py), much
faster than pushing over HTTP and with no fsync: every manifest is a tiny OCI image with its own config,
one layer from a shared pool and, every other one, a layer of its own. Most manifests are untagged and
older than the grace period (their files' mtimes are set in the past), so the collection removes them with
their configs and own layers; a share is tagged and a share is recent, and those stay. Each collection (a
dry run, then the real one) runs `CollectGarbage` from the composition root, in a fresh child process so
that its peak RSS is its own. Prints a Markdown table (and `--json` the raw figures). Sweep time includes
the blob sweep, the purge of idle uploads and the catalog refresh; the manifest sweep's share is in
parentheses.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))

GRACE = 3600.0
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


class Writer:
    """Writes Distribution's layout under `root` (the paths of layout.Layout, spelled out here so that the
    benchmark also runs against older code): plain writes, no fsync, no temporary files."""

    def __init__(self, root: str) -> None:
        self.v2 = os.path.join(root, "docker", "registry", "v2")
        self.blobs: dict[str, int] = {}  # hex -> size, to write each blob once
        self.files = 0

    def _write(self, path: str, data: bytes, mtime: float | None) -> None:
        try:
            f = open(path, "wb")  # the common case: no makedirs call
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            f = open(path, "wb")
        with f:
            f.write(data)
        if mtime is not None:
            os.utime(path, (mtime, mtime))
        self.files += 1

    def blob(self, data: bytes, mtime: float | None) -> str:
        hex_ = hashlib.sha256(data).hexdigest()
        if hex_ not in self.blobs:
            self._write(os.path.join(self.v2, "blobs", "sha256", hex_[:2], hex_, "data"), data, mtime)
            self.blobs[hex_] = len(data)
        return hex_

    def _link(self, path: str, hex_: str, mtime: float | None) -> None:
        self._write(path, f"sha256:{hex_}".encode(), mtime)

    def layer_link(self, repo: str, hex_: str, mtime: float | None) -> None:
        self._link(os.path.join(self.v2, "repositories", repo, "_layers", "sha256", hex_, "link"), hex_, mtime)

    def revision_link(self, repo: str, hex_: str, mtime: float | None) -> None:
        self._link(os.path.join(self.v2, "repositories", repo, "_manifests", "revisions", "sha256", hex_, "link"),
                   hex_, mtime)

    def tag(self, repo: str, tag: str, hex_: str, mtime: float | None) -> None:
        base = os.path.join(self.v2, "repositories", repo, "_manifests", "tags", tag)
        self._link(os.path.join(base, "index", "sha256", hex_, "link"), hex_, mtime)
        self._link(os.path.join(base, "current", "link"), hex_, mtime)

    def catalog(self, repos: list[str]) -> None:
        for repo in repos:
            self._write(os.path.join(self.v2, "_myregistry", "catalog", repo.replace("/", "+")), b"", None)
        self._write(os.path.join(self.v2, "_myregistry", "catalog", ".complete"), b"", None)


def build(root: str, manifests: int, repos: int, tagged_every: int, recent_every: int) -> dict:
    """Write the storage; returns what it holds and what a correct collection removes."""
    started = time.monotonic()
    old = time.time() - 2 * GRACE
    w = Writer(root)
    names = [f"bench/r{i:04d}" for i in range(repos)]
    pool = [f"shared layer {i}".encode() * 8 for i in range(max(100, manifests // 20))]
    expected_removed = tagged = 0
    linked_pool: set[tuple[str, int]] = set()  # (repository, pool index) linked already
    for i in range(manifests):
        repo = names[i % repos]
        is_tagged, is_recent = i % tagged_every == 0, i % recent_every == 1
        mtime = None if is_recent else old  # recent files keep their time: now
        config = json.dumps({"architecture": "amd64", "os": "linux", "n": i}).encode()
        config_hex = w.blob(config, mtime)
        w.layer_link(repo, config_hex, mtime)
        shared = (i * 7919) % len(pool)
        layers = [(pool[shared], old, (repo, shared) not in linked_pool)]  # (bytes, mtime, link it here)
        linked_pool.add((repo, shared))
        if i % 2:
            layers.append((f"own layer of image {i}".encode() * 4, mtime, True))
        descriptors = []
        for layer, layer_mtime, link in layers:
            layer_hex = w.blob(layer, layer_mtime)
            if link:
                w.layer_link(repo, layer_hex, layer_mtime)
            descriptors.append({"mediaType": OCI_LAYER, "digest": f"sha256:{layer_hex}", "size": len(layer)})
        raw = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                          "config": {"mediaType": OCI_CONFIG, "digest": f"sha256:{config_hex}", "size": len(config)},
                          "layers": descriptors}).encode()
        manifest_hex = w.blob(raw, mtime)
        w.revision_link(repo, manifest_hex, mtime)
        if is_tagged:
            w.tag(repo, f"v{i}", manifest_hex, mtime)
            tagged += 1
        elif not is_recent:
            expected_removed += 1
    w.catalog(names)
    return {"manifests": manifests, "repositories": repos, "tagged": tagged, "blobs": len(w.blobs),
            "files": w.files, "expected_manifests_removed": expected_removed,
            "build_seconds": round(time.monotonic() - started, 1)}


def collect(root: str, dry_run: bool) -> dict:
    """One collection in this process (run as a child): its phases' times, what it removed, peak RSS."""
    from entrypoints.container import build_container
    from entrypoints.settings import Settings

    container = build_container(Settings(storage_root=root, fsync=False, gc_grace_seconds=GRACE))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    marks: dict[str, float] = {}

    def progress(phase: str, done: int, total: int) -> None:
        marks[phase] = time.monotonic()  # the last notification of a phase is its end

    started = time.monotonic()
    report = asyncio.run(container.collect_garbage()(None, dry_run=dry_run, delete_untagged=True,
                                                      progress=progress))
    total = time.monotonic() - started
    mark = marks.get("mark", started) - started
    manifest_sweep = marks.get("manifests", started + mark) - started - mark
    return {"dry_run": dry_run, "mark_seconds": round(mark, 2), "sweep_seconds": round(total - mark, 2),
            "manifest_sweep_seconds": round(manifest_sweep, 2),
            "total_seconds": round(total, 2), "manifests_removed": len(report.manifests_removed),
            "layer_links_removed": report.layer_links_removed, "blobs_removed": len(report.blobs_removed),
            "rss_before_mb": round(rss_before, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def run_child(root: str, dry_run: bool) -> dict:
    args = [sys.executable, os.path.abspath(__file__), "--collect", root] + (["--dry-run"] if dry_run else [])
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000", help="manifest counts, comma-separated")
    parser.add_argument("--repos", type=int, default=10, help="repositories the manifests are spread over")
    parser.add_argument("--tagged-every", type=int, default=10, help="every Nth manifest is tagged")
    parser.add_argument("--recent-every", type=int, default=20, help="every Nth manifest is within the grace")
    parser.add_argument("--workdir", default=None, help="where to build the storage (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the storage directories")
    parser.add_argument("--json", action="store_true", help="also print the raw figures as JSON")
    parser.add_argument("--collect", metavar="ROOT", help=argparse.SUPPRESS)
    parser.add_argument("--dry-run", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.collect:
        print(json.dumps(collect(args.collect, args.dry_run)))
        return

    rows = []
    code = subprocess.run(["git", "-C", ROOT, "log", "--oneline", "-1"], capture_output=True, text=True).stdout
    print(f"code: {ROOT} ({code.strip() or 'not a git checkout'}); grace {GRACE:.0f} s; "
          f"{args.repos} repositories; every {args.tagged_every}th manifest tagged, every {args.recent_every}th recent",
          flush=True)
    for size in (int(s) for s in args.sizes.split(",")):
        root = tempfile.mkdtemp(prefix=f"gc-scale-{size}-", dir=args.workdir)
        try:
            built = build(root, size, args.repos, args.tagged_every, args.recent_every)
            print(f"built {size} manifests ({built['files']} files) in {built['build_seconds']} s", flush=True)
            for dry_run in (True, False):
                result = run_child(root, dry_run)
                rows.append({**built, **result})
                print(f"  {'dry run' if dry_run else 'real run'}: {result['total_seconds']} s", flush=True)
            assert rows[-1]["manifests_removed"] == built["expected_manifests_removed"], rows[-1]
        finally:
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)
    print()
    print("| manifests | repositories | run | mark s | sweep s (of which manifests) | total s | manifests removed "
          "| blob links removed | blobs removed | peak RSS MB | storage build s |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['manifests']:,} | {r['repositories']} | {'dry' if r['dry_run'] else 'real'} | {r['mark_seconds']} "
              f"| {r['sweep_seconds']} ({r['manifest_sweep_seconds']}) | {r['total_seconds']} "
              f"| {r['manifests_removed']:,} "
              f"| {r['layer_links_removed']:,} | {r['blobs_removed']:,} | {r['peak_rss_mb']} | {r['build_seconds']} |")
    if args.json:
        print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
