"""Benchmark My Registry against CNCF Distribution 2.8.2 (Debian's docker-registry) on this machine.

    python bench/run.py                 # full run: 1 GiB blobs, several rounds (minutes)
    python bench/run.py --smoke         # tiny sizes, one round: checks the benchmark still works

Both registries start with fresh data directories and production settings, the same workloads run
against each in alternating order for several rounds, and the medians are printed as a table with
the ratio us/Distribution per row, and written as JSON and Markdown under bench/results/.
Physical limits of the machine (sha256, disk write, nginx serving a file) are measured in the same
run for context. Nothing here talks to anything but 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))

MiB = 1024 * 1024


@dataclass
class Sizes:
    blob: int = 1024 * MiB
    chunk: int = 16 * MiB
    parallel_blob: int = 128 * MiB
    parallel: int = 8
    requests: int = 20_000
    connections: int = 50
    layers: int = 10
    layer_size: int = 16 * MiB
    repositories: int = 10_000
    tags: int = 10_000
    gc_images: int = 1_000
    rounds: int = 3


SMOKE = Sizes(blob=2 * MiB, chunk=256 * 1024, parallel_blob=MiB, parallel=4, requests=300, connections=10,
              layers=3, layer_size=64 * 1024, repositories=50, tags=50, gc_images=20, rounds=1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sh(*args: str, timeout: float = 1800, env: dict | None = None) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {result.stderr[-2000:]}")
    return result.stdout


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


# -- the two registries --------------------------------------------------------------------------------
@dataclass
class Registry:
    name: str
    data: str
    workdir: str
    port: int = 0
    process: subprocess.Popen | None = None
    startup_seconds: list[float] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> tuple[list[str], dict]:
        raise NotImplementedError

    def start(self) -> None:
        self.port = free_port()
        args, env = self.command()
        log = open(os.path.join(self.workdir, f"{self.name}.log"), "ab")
        started = time.monotonic()
        self.process = subprocess.Popen(args, env=env, stdout=log, stderr=log, start_new_session=True)
        while time.monotonic() - started < 30:
            try:
                if httpx.get(f"{self.url}/v2/", timeout=1).status_code == 200:
                    self.startup_seconds.append(time.monotonic() - started)
                    return
            except httpx.HTTPError:
                time.sleep(0.01)
        raise RuntimeError(f"{self.name} did not start; see {self.workdir}/{self.name}.log")

    def peak_rss_mb(self) -> tuple[float, float]:
        """(largest process, all processes) peak resident memory, for the server and its workers."""
        children = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True).stdout
        pids = [self.process.pid, *(int(p) for p in children.split())]
        peaks = []
        for pid in pids:
            try:
                with open(f"/proc/{pid}/status") as f:
                    peaks += [int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:")]
            except FileNotFoundError:
                pass
        return max(peaks), sum(peaks)

    def stop(self) -> None:
        """SIGTERM the server's process group; SIGKILL what is left after 20 s."""
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()


class Ours(Registry):
    """Production settings (one worker per core, fsync on), changed only by `settings`."""

    settings: dict[str, str] = {}

    def command(self) -> tuple[list[str], dict]:
        workers = str(os.cpu_count() or 1)
        env = {**os.environ, "PORT": str(self.port), "STORAGE_ROOT": self.data, "REGISTRY_HOST": "127.0.0.1",
               "REGISTRY_WORKERS": workers, "PYTHONPATH": os.path.join(ROOT, "src"), **self.settings}
        return [sys.executable, "-m", "entrypoints.cli", "serve"], env


class Distribution(Registry):
    def config(self) -> str:
        path = os.path.join(self.workdir, f"{self.name}.yml")
        with open(path, "w") as f:
            f.write(f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {self.data}\n"
                    f"  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{self.port}\n")
        return path

    def command(self) -> tuple[list[str], dict]:
        return ["docker-registry", "serve", self.config()], dict(os.environ)


# -- workloads -------------------------------------------------------------------------------------------
def curl_speed(args: list[str]) -> float:
    """Bytes per second curl measured for one transfer."""
    out = sh("curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{speed_upload} %{speed_download}", *args)
    code, up, down = out.split()
    if not code.startswith("2"):
        raise RuntimeError(f"curl {' '.join(args)} answered {code}")
    return max(float(up), float(down))


def new_session(url: str, repo: str) -> str:
    r = httpx.post(f"{url}/v2/{repo}/blobs/uploads/")
    r.raise_for_status()
    location = r.headers["Location"]
    return location if location.startswith("http") else url + location


def push_monolithic(reg: Registry, path: str, digest: str, repo: str) -> float:
    location = new_session(reg.url, repo)
    sep = "&" if "?" in location else "?"
    size = os.path.getsize(path)
    started = time.monotonic()
    sh("curl", "-sS", "-f", "-o", "/dev/null", "-X", "PUT", "-H", "Content-Type: application/octet-stream",
       "-T", path, f"{location}{sep}digest={digest}")
    return size / (time.monotonic() - started)


def push_chunked(reg: Registry, chunks: list[str], digest: str, repo: str) -> float:
    location = new_session(reg.url, repo)
    total, offset = 0, 0
    started = time.monotonic()
    for chunk in chunks:
        size = os.path.getsize(chunk)
        headers = sh("curl", "-sS", "-f", "-D", "-", "-o", "/dev/null", "-X", "PATCH",
                     "-H", "Content-Type: application/octet-stream",
                     "-H", f"Content-Range: {offset}-{offset + size - 1}", "-T", chunk, location)
        match = re.search(r"(?im)^location:\s*(\S+)", headers)
        location = match.group(1) if match else location
        location = location if location.startswith("http") else reg.url + location
        offset += size
        total += size
    sep = "&" if "?" in location else "?"
    sh("curl", "-sS", "-f", "-o", "/dev/null", "-X", "PUT", f"{location}{sep}digest={digest}")
    return total / (time.monotonic() - started)


def pull(reg: Registry, repo: str, digest: str) -> float:
    return curl_speed([f"{reg.url}/v2/{repo}/blobs/{digest}"])


def drop_caches() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3")
        return True
    except OSError:
        return False


def parallel(reg: Registry, files: list[tuple[str, str]], push: bool) -> float:
    """Aggregate bytes per second of one transfer per file, all at once."""
    def one(item: tuple[int, tuple[str, str]]) -> int:
        i, (path, digest) = item
        if push:
            push_monolithic(reg, path, digest, f"bench/par{i}")
        else:
            pull(reg, f"bench/par{i}", digest)
        return os.path.getsize(path)
    with ThreadPoolExecutor(len(files)) as pool:
        started = time.monotonic()
        total = sum(pool.map(one, enumerate(files)))
        return total / (time.monotonic() - started)


def hey(url: str, method: str, requests: int, connections: int, accept: str | None = None) -> dict[str, float]:
    """Requests per second and latency percentiles from `hey` (wrk cannot send HEAD)."""
    headers = ["-H", f"Accept: {accept}"] if accept else []
    out = sh("hey", "-n", str(requests), "-c", str(connections), "-m", method, *headers, url, timeout=600)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = float(re.search(r"50% in ([\d.]+) secs", out).group(1)) * 1000
    p99 = float(re.search(r"99% in ([\d.]+) secs", out).group(1)) * 1000
    codes = re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)
    bad = sum(int(n) for code, n in codes if not code.startswith("2"))
    if bad:
        raise RuntimeError(f"hey {method} {url}: {bad} non-2xx responses:\n{out[-800:]}")
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99}


def write_layout(directory: str, layers: int, layer_size: int, seed: str) -> None:
    from domain.manifest import OCI_MANIFEST
    oci_config, oci_layer = "application/vnd.oci.image.config.v1+json", "application/vnd.oci.image.layer.v1.tar"
    os.makedirs(os.path.join(directory, "blobs", "sha256"), exist_ok=True)
    descriptors = []
    for i in range(layers):
        data = hashlib.shake_256(f"{seed}-{i}".encode()).digest(layer_size)
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(directory, "blobs", "sha256", digest), "wb") as f:
            f.write(data)
        descriptors.append({"mediaType": oci_layer, "digest": f"sha256:{digest}", "size": len(data)})
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": oci_config, "digest": "sha256:" + hashlib.sha256(config).hexdigest(),
                                      "size": len(config)}, "layers": descriptors}).encode()
    for blob in (config, manifest):
        with open(os.path.join(directory, "blobs", "sha256", hashlib.sha256(blob).hexdigest()), "wb") as f:
            f.write(blob)
    with open(os.path.join(directory, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    with open(os.path.join(directory, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": "sha256:" + hashlib.sha256(manifest).hexdigest(), "size": len(manifest),
            "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}, f)


def populate(data: str, repositories: int, tags: int, gc_images: int) -> None:
    """Many repositories, one repository with many tags, and images for the collector, written through
    our filesystem adapters straight into Distribution's layout (both registries read it)."""
    from adapters.filesystem import FilesystemBlobStore, FilesystemRepositoryStore, Layout
    from domain.digest import Digest
    from domain.names import RepositoryName, Tag

    layout = Layout(data)
    blobs, repos = FilesystemBlobStore(layout), FilesystemRepositoryStore(layout)

    async def image(repo: RepositoryName, seed: str) -> Digest:
        config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
        layer = hashlib.shake_256(seed.encode()).digest(1024)
        for blob in (config, layer):
            await blobs.put(Digest.of(blob), blob)
            await repos.link_blob(repo, Digest.of(blob))
        manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                               "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                          "digest": str(Digest.of(config)), "size": len(config)},
                               "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                           "digest": str(Digest.of(layer)), "size": len(layer)}]}).encode()
        await blobs.put(Digest.of(manifest), manifest)
        await repos.link_manifest(repo, Digest.of(manifest))
        return Digest.of(manifest)

    async def fill() -> None:
        shared = await image(RepositoryName("bench/catalog-base"), "catalog")
        for i in range(repositories):
            repo = RepositoryName(f"catalog/r{i:05d}")
            await repos.link_blob(repo, shared)
            await repos.link_manifest(repo, shared)
            await repos.set_tag(repo, Tag("latest"), shared)
        tagged = RepositoryName("bench/tags")
        digest = await image(tagged, "tags")
        for i in range(tags):
            await repos.set_tag(tagged, Tag(f"t{i:05d}"), digest)
        gc_repo = RepositoryName("bench/gc")
        for i in range(gc_images):
            digest = await image(gc_repo, f"gc-{i}")
            if i % 2 == 0:
                await repos.set_tag(gc_repo, Tag(f"v{i}"), digest)
            else:
                await repos.unlink_manifest(gc_repo, digest)  # deleted: its blobs are garbage
    asyncio.run(fill())


def list_all(url: str, first: str) -> tuple[float, int]:
    """Seconds to read a whole paginated listing, following Link headers, and how many entries."""
    count, next_url = 0, first
    started = time.monotonic()
    with httpx.Client(timeout=600) as client:
        while next_url:
            r = client.get(next_url)
            r.raise_for_status()
            body = r.json()
            count += len(body.get("repositories") or body.get("tags") or [])
            link = r.headers.get("Link")
            next_url = url + link[1:link.index(">")] if link else None
    return time.monotonic() - started, count


# -- physical limits --------------------------------------------------------------------------------------
def physical(blob_path: str, workdir: str) -> dict[str, float]:
    size = os.path.getsize(blob_path)
    started = time.process_time()
    sha256_file(blob_path)
    sha = size / max(time.process_time() - started, 1e-9)
    target = os.path.join(workdir, "dd.out")
    started = time.monotonic()
    sh("dd", "if=" + blob_path, "of=" + target, "bs=4M", "conv=fdatasync", "status=none")
    disk = size / (time.monotonic() - started)
    os.unlink(target)
    nginx_speed = 0.0
    if shutil.which("nginx"):
        port = free_port()
        conf = os.path.join(workdir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"daemon off; pid {workdir}/nginx.pid; error_log {workdir}/nginx.err;\n"
                    f"events {{}}\nhttp {{ access_log off; sendfile on;\n"
                    f"  server {{ listen 127.0.0.1:{port}; root {os.path.dirname(blob_path)}; }} }}\n")
        proc = subprocess.Popen(["nginx", "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(100):
                try:
                    httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                    break
                except httpx.HTTPError:
                    time.sleep(0.05)
            nginx_speed = curl_speed([f"http://127.0.0.1:{port}/{os.path.basename(blob_path)}"])
        finally:
            proc.terminate()
            proc.wait(10)
    return {"sha256_MBps": sha / 1e6, "disk_write_MBps": disk / 1e6, "nginx_pull_MBps": nginx_speed / 1e6}


# -- the run ----------------------------------------------------------------------------------------------
def run(sizes: Sizes, out_dir: str, workdir: str) -> dict:
    samples: dict[str, dict[str, list[float]]] = {}

    def record(metric: str, who: str, value: float) -> None:
        samples.setdefault(metric, {"ours": [], "distribution": []})[who].append(value)

    blob = os.path.join(workdir, "blob.bin")
    with open(blob, "wb") as f:
        for i in range(sizes.blob // MiB or 1):
            f.write(hashlib.shake_256(f"blob-{i}".encode()).digest(min(MiB, sizes.blob)))
    digest = sha256_file(blob)
    chunks = []
    with open(blob, "rb") as f:
        i = 0
        while data := f.read(sizes.chunk):
            path = os.path.join(workdir, f"chunk{i:04d}")
            with open(path, "wb") as c:
                c.write(data)
            chunks.append(path)
            i += 1
    small = []
    for i in range(sizes.parallel):
        path = os.path.join(workdir, f"par{i}.bin")
        with open(path, "wb") as f:
            for j in range(max(1, sizes.parallel_blob // MiB)):
                f.write(hashlib.shake_256(f"par-{i}-{j}".encode()).digest(min(MiB, sizes.parallel_blob)))
        small.append((path, sha256_file(path)))
    layout = os.path.join(workdir, "layout")
    write_layout(layout, sizes.layers, sizes.layer_size, "bench")

    print("measuring physical limits...", file=sys.stderr, flush=True)
    limits = physical(blob, workdir)

    for round_no in range(sizes.rounds):
        order = [Ours, Distribution] if round_no % 2 == 0 else [Distribution, Ours]
        for cls in order:
            who = "ours" if cls is Ours else "distribution"
            data = os.path.join(workdir, f"data-{who}")
            shutil.rmtree(data, ignore_errors=True)
            os.makedirs(data)
            print(f"round {round_no + 1}/{sizes.rounds}: {who}", file=sys.stderr, flush=True)
            populate(data, sizes.repositories, sizes.tags, sizes.gc_images)
            reg = cls(who, data, workdir)
            reg.start()
            try:
                record("startup_s", who, reg.startup_seconds[-1])
                record("push_monolithic_MBps", who, push_monolithic(reg, blob, digest, "bench/mono") / 1e6)
                record("push_chunked_MBps", who, push_chunked(reg, chunks, digest, "bench/chunked") / 1e6)
                record("pull_cold_MBps" if drop_caches() else "pull_first_MBps", who,
                       pull(reg, "bench/mono", digest) / 1e6)
                record("pull_warm_MBps", who, pull(reg, "bench/mono", digest) / 1e6)
                record("push_parallel_MBps", who, parallel(reg, small, push=True) / 1e6)
                record("pull_parallel_MBps", who, parallel(reg, small, push=False) / 1e6)
                started = time.monotonic()
                sh("skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:latest",
                   f"docker://127.0.0.1:{reg.port}/bench/skopeo:latest")
                record("skopeo_push_s", who, time.monotonic() - started)
                pulled = os.path.join(workdir, f"pulled-{who}")
                shutil.rmtree(pulled, ignore_errors=True)
                started = time.monotonic()
                sh("skopeo", "copy", "--src-tls-verify=false", f"docker://127.0.0.1:{reg.port}/bench/skopeo:latest",
                   f"dir:{pulled}")
                record("skopeo_pull_s", who, time.monotonic() - started)
                accept = "application/vnd.oci.image.manifest.v1+json"
                manifest_digest = httpx.head(f"{reg.url}/v2/bench/skopeo/manifests/latest",
                                             headers={"Accept": accept}).headers["Docker-Content-Digest"]
                small_requests = {
                    "GET /v2/": ("GET", f"{reg.url}/v2/"),
                    "GET manifest by tag": ("GET", f"{reg.url}/v2/bench/skopeo/manifests/latest"),
                    "HEAD manifest by tag": ("HEAD", f"{reg.url}/v2/bench/skopeo/manifests/latest"),
                    "GET manifest by digest": ("GET", f"{reg.url}/v2/bench/skopeo/manifests/{manifest_digest}"),
                    "HEAD blob": ("HEAD", f"{reg.url}/v2/bench/mono/blobs/{digest}"),
                }
                for label, (method, url) in small_requests.items():
                    result = hey(url, method, sizes.requests, sizes.connections, accept)
                    for key, value in result.items():
                        record(f"{label} {key}", who, value)
                seconds, count = list_all(reg.url, f"{reg.url}/v2/_catalog?n=1000")
                assert count >= sizes.repositories, f"{who} catalog listed {count}"
                record("catalog_10k_s", who, seconds)
                seconds, count = list_all(reg.url, f"{reg.url}/v2/bench/tags/tags/list?n=1000")
                assert count >= sizes.tags, f"{who} tags list gave {count}"
                record("tags_list_10k_s", who, seconds)
                largest, total = reg.peak_rss_mb()
                record("peak_rss_per_process_MB", who, largest)
                record("peak_rss_total_MB", who, total)
            finally:
                reg.stop()
            if who == "ours":
                # Distribution never syncs: the same push without our fsync, for a like-for-like figure.
                reg.settings = {"REGISTRY_FSYNC": "false"}
                reg.start()
                try:
                    record("push_monolithic_MBps fsync off", who,
                           push_monolithic(reg, blob, digest, "bench/mono-nofsync") / 1e6)
                finally:
                    reg.stop()
            record("gc_s", who, collect(who, reg, data, workdir))
            shutil.rmtree(data, ignore_errors=True)
    return report(samples, limits, sizes, out_dir)


def collect(who: str, reg: Registry, data: str, workdir: str) -> float:
    """Seconds for a whole-registry collection: ours online (server restarted), Distribution's offline."""
    if who == "ours":
        reg.settings = {"REGISTRY_GC_GRACE_SECONDS": "0"}  # collect what was deleted a moment ago
        reg.start()
        try:
            started = time.monotonic()
            r = httpx.post(f"{reg.url}/v2/_gc", timeout=1800)
            r.raise_for_status()
            return time.monotonic() - started
        finally:
            reg.stop()
    config = os.path.join(workdir, "gc.yml")
    with open(config, "w") as f:
        f.write(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\n")
    started = time.monotonic()
    sh("docker-registry", "garbage-collect", config)
    return time.monotonic() - started


LOWER_IS_BETTER = ("_s", "_ms", "_MB")


def report(samples: dict, limits: dict, sizes: Sizes, out_dir: str) -> dict:
    rows = []
    for metric, values in samples.items():
        ours = statistics.median(values["ours"]) if values["ours"] else None
        theirs = statistics.median(values["distribution"]) if values["distribution"] else None
        ratio = ours / theirs if ours is not None and theirs else None
        rows.append({"metric": metric, "ours": ours, "distribution": theirs, "ratio": ratio,
                     "better": "lower" if metric.endswith(LOWER_IS_BETTER) else "higher",
                     "samples": values})
    result = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": {
        "cpus": os.cpu_count(), "python": sys.version.split()[0]}, "sizes": sizes.__dict__, "limits": limits,
        "rows": rows}
    os.makedirs(out_dir, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with open(os.path.join(out_dir, f"bench-{stamp}.json"), "w") as f:
        json.dump(result, f, indent=2)
    lines = [f"# Benchmark {result['when']}", "",
             f"Sizes: blob {sizes.blob // MiB} MiB, chunks {sizes.chunk // 1024} KiB, {sizes.parallel} x "
             f"{sizes.parallel_blob // 1024} KiB in parallel, {sizes.requests} requests at {sizes.connections} "
             f"connections, {sizes.repositories} repositories, {sizes.tags} tags, {sizes.gc_images} images for GC, "
             f"{sizes.rounds} round(s); medians.", "",
             "Machine limits: " + ", ".join(f"{k} {v:.0f}" for k, v in limits.items()), "",
             "| metric | ours | Distribution 2.8.2 | ours/Distribution | better |",
             "| --- | ---: | ---: | ---: | --- |"]
    for row in rows:
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}"
        lines.append(f"| {row['metric']} | {_fmt(row['ours'])} | {_fmt(row['distribution'])} | {ratio} | "
                     f"{row['better']} |")
    markdown = "\n".join(lines) + "\n"
    with open(os.path.join(out_dir, f"bench-{stamp}.md"), "w") as f:
        f.write(markdown)
    print(markdown)
    return result


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 10 else f"{value:.0f}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one round (the test suite runs this)")
    parser.add_argument("--rounds", type=int, help="rounds per registry (default 3; smoke 1)")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results"), help="where results go")
    parser.add_argument("--workdir", help="scratch directory (default: a temp dir, removed afterwards)")
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else Sizes()
    if args.rounds:
        sizes.rounds = args.rounds
    for tool in ("docker-registry", "curl", "hey", "skopeo"):
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} is not installed (scripts/setup installs it)")
    workdir = args.workdir or tempfile.mkdtemp(prefix="myregistry-bench-")
    os.chmod(workdir, 0o755)  # nginx's workers run as an unprivileged user and must read the test file
    try:
        return run(sizes, args.out, workdir)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
