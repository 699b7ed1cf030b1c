"""Benchmark My Registry against CNCF Distribution 2.8.2 (Debian's docker-registry) on this machine.

    python bench/run.py                 # full run: 1 GiB blobs, several rounds (minutes)
    python bench/run.py --smoke         # tiny sizes, one round: checks the benchmark still works
    python bench/run.py --only small    # only the small requests (and their two ceilings)

Both registries start with fresh data directories and production settings (ours with its default
worker count, REGISTRY_WORKERS=auto), the same workloads run against each in alternating order for
several rounds, and the medians are printed as a table with the ratio us/Distribution per row, and
written as JSON and Markdown under bench/results/. Physical limits of the machine (sha256, disk write,
nginx serving a file) are measured in the same run for context. Small requests are also sent, under
the same `hey` load and with the same worker count, to two ceilings: nginx serving a tiny static file
(the machine) and a bare Sanic app answering the same manifest from memory (the framework,
bench/bare_sanic.py). Nothing here talks to anything but 127.0.0.1.
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
        # In the scratch directory: a `.env` file where the benchmark is run must not change our settings.
        self.process = subprocess.Popen(args, env=env, stdout=log, stderr=log, start_new_session=True,
                                        cwd=self.workdir)
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
    """Production settings: the defaults (workers "auto": one per CPU this process may use; fsync on),
    changed only by `settings`. No REGISTRY_* variable of the caller's environment is passed on."""

    settings: dict[str, str] = {}

    def command(self) -> tuple[list[str], dict]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        env.update({"PORT": str(self.port), "STORAGE_ROOT": self.data, "REGISTRY_HOST": "127.0.0.1",
                    "PYTHONPATH": os.path.join(ROOT, "src"), **self.settings})
        return [sys.executable, "-m", "entrypoints.cli", "serve"], env

    def workers(self) -> int:
        """The worker count the running server chose, from its start-up log line."""
        with open(os.path.join(self.workdir, f"{self.name}.log"), errors="replace") as f:
            counts = re.findall(r"with (\d+) worker\(s\)", f.read())
        if not counts:
            raise RuntimeError(f"{self.name} did not log its worker count; see {self.workdir}/{self.name}.log")
        return int(counts[-1])


class BareSanic(Registry):
    """The framework's ceiling: bench/bare_sanic.py, the same Sanic, worker count and start-up as ours."""

    def __init__(self, workdir: str, manifest_file: str, media_type: str, blob_size: int, workers: int) -> None:
        super().__init__("bare_sanic", "", workdir)
        self.manifest_file, self.media_type, self.blob_size, self.worker_count = (
            manifest_file, media_type, blob_size, workers)

    def command(self) -> tuple[list[str], dict]:
        env = {**os.environ, "BARE_PORT": str(self.port), "BARE_WORKERS": str(self.worker_count),
               "BARE_MANIFEST": self.manifest_file, "BARE_MEDIA_TYPE": self.media_type,
               "BARE_BLOB_SIZE": str(self.blob_size)}
        return [sys.executable, os.path.join(ROOT, "bench", "bare_sanic.py")], env


class Distribution(Registry):
    def config(self) -> str:
        path = os.path.join(self.workdir, f"{self.name}.yml")
        with open(path, "w") as f:
            f.write(f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {self.data}\n"
                    f"  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{self.port}\n")
        return path

    def command(self) -> tuple[list[str], dict]:
        return ["docker-registry", "serve", self.config()], dict(os.environ)


class Nginx:
    """nginx serving the scratch directory: the pull ceiling (the test blob) and the small-request
    ceiling (a tiny file), with as many worker processes as our registry has workers."""

    def __init__(self, root: str, workers: int) -> None:
        self.root, self.workers, self.port = root, workers, 0
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.port = free_port()
        conf = os.path.join(self.root, "nginx.conf")
        with open(conf, "w") as f:
            # keepalive_requests: like Sanic, never close a busy keep-alive connection during a run.
            f.write(f"daemon off; worker_processes {self.workers}; pid {self.root}/nginx.pid;\n"
                    f"error_log {self.root}/nginx.err;\n"
                    f"events {{ worker_connections 1024; }}\n"
                    f"http {{ access_log off; sendfile on; keepalive_requests 1000000;\n"
                    f"  server {{ listen 127.0.0.1:{self.port}; root {self.root}; }} }}\n")
        self.process = subprocess.Popen(["nginx", "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            try:
                httpx.get(f"{self.url}/", timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError(f"nginx did not start; see {self.root}/nginx.err")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


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
def physical(blob_path: str, workdir: str, nginx: Nginx | None) -> dict[str, float]:
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
    if nginx is not None:
        nginx_speed = curl_speed([f"{nginx.url}/{os.path.relpath(blob_path, nginx.root)}"])
    return {"sha256_MBps": sha / 1e6, "disk_write_MBps": disk / 1e6, "nginx_pull_MBps": nginx_speed / 1e6}


# -- small requests and their ceilings ---------------------------------------------------------------------
SMALL_REQUESTS = {  # label: (method, path on a registry)
    "GET /v2/": ("GET", "/v2/"),
    "GET manifest by tag": ("GET", "/v2/bench/skopeo/manifests/latest"),
    "HEAD manifest by tag": ("HEAD", "/v2/bench/skopeo/manifests/latest"),
    "GET manifest by digest": ("GET", "/v2/bench/skopeo/manifests/{manifest}"),
    "HEAD blob": ("HEAD", "/v2/bench/mono/blobs/{blob}"),
}
TARGETS = ("ours", "distribution", "bare_sanic", "nginx")
TINY_FILE = "tiny/manifest.json"  # what nginx serves for every small request (the manifest's bytes)
ACCEPT = "application/vnd.oci.image.manifest.v1+json"


def default_workers(workdir: str) -> int:
    """The worker count our server resolves with its defaults (REGISTRY_WORKERS=auto) in the
    benchmark's environment, from its own Settings, so the ceilings get the same count."""
    _, env = Ours("probe", workdir, workdir, port=5000).command()
    code = "from entrypoints.settings import Settings; print(Settings().workers)"
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=workdir, capture_output=True, text=True,
                            timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"could not resolve the default worker count: {result.stderr[-2000:]}")
    return int(result.stdout.strip())


def small_round(sizes: Sizes, workdir: str, layout: str, blob: str, blob_digest: str, nginx: Nginx | None,
                workers: int, round_no: int, record) -> None:
    """Every small request against ours, Distribution, the bare Sanic app and nginx, all running side by
    side, one request type at a time with the four in rotating order, so a change in the (shared)
    machine's load falls on every column alike."""
    regs: dict[str, Registry] = {}
    try:
        for who, cls in (("ours", Ours), ("distribution", Distribution)):
            data = os.path.join(workdir, f"small-{who}")
            shutil.rmtree(data, ignore_errors=True)
            os.makedirs(data)
            regs[who] = reg = cls(f"small-{who}", data, workdir)
            reg.start()
            push_monolithic(reg, blob, blob_digest, "bench/mono")
            sh("skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:latest",
               f"docker://127.0.0.1:{reg.port}/bench/skopeo:latest")
        ours = regs["ours"]
        if ours.workers() != workers:
            raise RuntimeError(f"our server runs {ours.workers()} workers, its settings resolved {workers}")
        r = httpx.get(f"{ours.url}/v2/bench/skopeo/manifests/latest", headers={"Accept": ACCEPT})
        r.raise_for_status()
        manifest_digest = r.headers["Docker-Content-Digest"]
        tiny = os.path.join(workdir, TINY_FILE)
        os.makedirs(os.path.dirname(tiny), exist_ok=True)
        with open(tiny, "wb") as f:
            f.write(r.content)
        regs["bare_sanic"] = bare = BareSanic(workdir, tiny, r.headers["Content-Type"], os.path.getsize(blob),
                                              workers)
        bare.start()
        for i, (label, (method, path)) in enumerate(SMALL_REQUESTS.items()):
            shift = (round_no + i) % len(TARGETS)
            for who in TARGETS[shift:] + TARGETS[:shift]:
                if who == "nginx":
                    if nginx is None:
                        continue
                    url = f"{nginx.url}/{TINY_FILE}"
                else:
                    url = regs[who].url + path.format(manifest=manifest_digest, blob=blob_digest)
                for key, value in hey(url, method, sizes.requests, sizes.connections, ACCEPT).items():
                    record(f"{label} {key}", who, value)
    finally:
        for reg in regs.values():
            reg.stop()
        for who in ("ours", "distribution"):
            shutil.rmtree(os.path.join(workdir, f"small-{who}"), ignore_errors=True)


# -- the run ----------------------------------------------------------------------------------------------
def write_blob(path: str, size: int, seed: str) -> str:
    with open(path, "wb") as f:
        for i in range(max(1, size // MiB)):
            f.write(hashlib.shake_256(f"{seed}-{i}".encode()).digest(min(MiB, size)))
    return sha256_file(path)


def run(sizes: Sizes, out_dir: str, workdir: str, only: str | None = None) -> dict:
    samples: dict[str, dict[str, list[float]]] = {}

    def record(metric: str, who: str, value: float) -> None:
        samples.setdefault(metric, {who: [] for who in TARGETS})[who].append(value)

    workers = default_workers(workdir)
    print(f"our registry runs with its default worker count (REGISTRY_WORKERS unset: auto) = {workers}; "
          f"the bare Sanic app gets {workers} workers and nginx {workers} worker processes",
          file=sys.stderr, flush=True)
    nginx = Nginx(workdir, workers) if shutil.which("nginx") else None
    if nginx is None:
        print("nginx is not installed: no machine ceiling", file=sys.stderr, flush=True)
    head_blob = os.path.join(workdir, "head.bin")  # HEAD blob only stats it: its size does not matter
    head_digest = write_blob(head_blob, MiB, "head")
    layout = os.path.join(workdir, "layout")
    # The manifest's shape (number of layers) is what small requests see; --only small skips big layers.
    write_layout(layout, sizes.layers, 64 * 1024 if only == "small" else sizes.layer_size, "bench")
    if nginx is not None:
        nginx.start()
    try:
        if only == "small":
            limits: dict[str, float] = {}
            for round_no in range(sizes.rounds):
                print(f"round {round_no + 1}/{sizes.rounds}: small requests", file=sys.stderr, flush=True)
                small_round(sizes, workdir, layout, head_blob, head_digest, nginx, workers, round_no, record)
        else:
            limits = full_rounds(sizes, workdir, layout, nginx, record,
                                 lambda round_no: small_round(sizes, workdir, layout, head_blob, head_digest,
                                                              nginx, workers, round_no, record))
    finally:
        if nginx is not None:
            nginx.stop()
    return report(samples, limits, sizes, out_dir, {"ours": workers, "bare_sanic": workers,
                                                    "nginx": workers if nginx else 0}, only)


def full_rounds(sizes: Sizes, workdir: str, layout: str, nginx: Nginx | None, record, small) -> dict[str, float]:
    blob = os.path.join(workdir, "blob.bin")
    digest = write_blob(blob, sizes.blob, "blob")
    chunks = []
    with open(blob, "rb") as f:
        i = 0
        while data := f.read(sizes.chunk):
            path = os.path.join(workdir, f"chunk{i:04d}")
            with open(path, "wb") as c:
                c.write(data)
            chunks.append(path)
            i += 1
    parallel_files = []
    for i in range(sizes.parallel):
        path = os.path.join(workdir, f"par{i}.bin")
        parallel_files.append((path, write_blob(path, sizes.parallel_blob, f"par-{i}")))

    print("measuring physical limits...", file=sys.stderr, flush=True)
    limits = physical(blob, workdir, nginx)

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
                record("push_parallel_MBps", who, parallel(reg, parallel_files, push=True) / 1e6)
                record("pull_parallel_MBps", who, parallel(reg, parallel_files, push=False) / 1e6)
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
        print(f"round {round_no + 1}/{sizes.rounds}: small requests", file=sys.stderr, flush=True)
        small(round_no)
    return limits


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


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _round_ratios(ours: list[float], other: list[float]) -> list[float]:
    """ours/other round by round: each round measures the two one after the other on the same machine
    load (small_round rotates their order), so pairing them leaves out what moved between rounds."""
    return [a / b for a, b in zip(ours, other) if b] if len(ours) == len(other) else []


def report(samples: dict, limits: dict, sizes: Sizes, out_dir: str, workers: dict[str, int],
           only: str | None = None) -> dict:
    rows = []
    for metric, values in samples.items():
        medians = {who: _median(values.get(who, [])) for who in TARGETS}
        by_round = _round_ratios(values.get("ours", []), values.get("bare_sanic", []))
        rows.append({"metric": metric, "ours": medians["ours"], "distribution": medians["distribution"],
                     "ratio": _ratio(medians["ours"], medians["distribution"]),
                     "bare_sanic": medians["bare_sanic"], "nginx": medians["nginx"],
                     "ours_per_bare_sanic": _ratio(medians["ours"], medians["bare_sanic"]),
                     "ours_per_bare_sanic_by_round": by_round,
                     "ours_per_nginx": _ratio(medians["ours"], medians["nginx"]),
                     "better": "lower" if metric.endswith(LOWER_IS_BETTER) else "higher",
                     "samples": {who: v for who, v in values.items() if v}})
    result = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": {
        "cpus": os.cpu_count(), "python": sys.version.split()[0],
        "load_average": [round(x, 2) for x in os.getloadavg()]}, "sizes": sizes.__dict__, "only": only,
        "workers": workers, "limits": limits, "rows": rows}
    os.makedirs(out_dir, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with open(os.path.join(out_dir, f"bench-{stamp}.json"), "w") as f:
        json.dump(result, f, indent=2)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [f"# Benchmark {result['when']}" + (f" (only {only})" if only else ""), "",
             f"Sizes: blob {sizes.blob // MiB} MiB, chunks {sizes.chunk // 1024} KiB, {sizes.parallel} x "
             f"{sizes.parallel_blob // 1024} KiB in parallel, {sizes.requests} requests at {sizes.connections} "
             f"connections, {sizes.repositories} repositories, {sizes.tags} tags, {sizes.gc_images} images for GC, "
             f"{sizes.rounds} round(s); medians.", "",
             f"Workers: ours {workers['ours']} (its default, REGISTRY_WORKERS=auto), bare Sanic "
             f"{workers['bare_sanic']}, nginx {workers['nginx']} worker processes; {os.cpu_count()} CPUs, "
             f"load average at the end {load}.", "",
             "Machine limits: " + (", ".join(f"{k} {v:.0f}" for k, v in limits.items()) or "not measured"), "",
             "| metric | ours | Distribution 2.8.2 | ours/Distribution | better |",
             "| --- | ---: | ---: | ---: | --- |"]
    for row in rows:
        lines.append(f"| {row['metric']} | {_fmt(row['ours'])} | {_fmt(row['distribution'])} | "
                     f"{_fmt_ratio(row['ratio'])} | {row['better']} |")
    by_metric = {row["metric"]: row for row in rows}
    if any(f"{label} rps" in by_metric for label in SMALL_REQUESTS):
        lines += ["", "Small requests against the two ceilings, same `hey` load, same worker count: a bare Sanic "
                  "app answering the same manifest from memory (the framework), nginx serving it as a static "
                  "file (the machine).", "",
                  "| request | ours rps | Distribution rps | bare Sanic rps | nginx rps | ours/Distribution | "
                  "ours/bare Sanic | ours/bare Sanic by round: median (range) | ours/nginx | p99 ms ours | "
                  "p99 Distribution | p99 bare Sanic | p99 nginx |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for label in SMALL_REQUESTS:
            rps, p99 = by_metric.get(f"{label} rps"), by_metric.get(f"{label} p99_ms")
            if rps is None or p99 is None:
                continue
            lines.append(f"| {label} | {_fmt(rps['ours'])} | {_fmt(rps['distribution'])} | {_fmt(rps['bare_sanic'])}"
                         f" | {_fmt(rps['nginx'])} | {_fmt_ratio(rps['ratio'])} | "
                         f"{_fmt_ratio(rps['ours_per_bare_sanic'])} | "
                         f"{_fmt_rounds(rps['ours_per_bare_sanic_by_round'])} | {_fmt_ratio(rps['ours_per_nginx'])} | "
                         f"{_fmt(p99['ours'])} | {_fmt(p99['distribution'])} | {_fmt(p99['bare_sanic'])} | "
                         f"{_fmt(p99['nginx'])} |")
    markdown = "\n".join(lines) + "\n"
    with open(os.path.join(out_dir, f"bench-{stamp}.md"), "w") as f:
        f.write(markdown)
    print(markdown)
    return result


def _fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _fmt_rounds(ratios: list[float]) -> str:
    if not ratios:
        return "-"
    return f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"


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
    parser.add_argument("--only", choices=["small"],
                        help="run one part only: small = the small requests against ours, Distribution, "
                             "the bare Sanic app and nginx")
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else Sizes()
    if args.rounds:
        sizes.rounds = args.rounds
    for tool in ("docker-registry", "curl", "hey", "skopeo"):
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} is not installed (scripts/setup installs it)")
    workdir = os.path.abspath(args.workdir or tempfile.mkdtemp(prefix="myregistry-bench-"))
    os.makedirs(workdir, exist_ok=True)
    os.chmod(workdir, 0o755)  # nginx's workers run as an unprivileged user and must read the test files
    try:
        return run(sizes, os.path.abspath(args.out), workdir, args.only)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
