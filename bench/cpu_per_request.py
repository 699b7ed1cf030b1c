"""Server CPU time per small request: ours and the bare Sanic app, driven by `hey`.

    .venv/bin/python bench/cpu_per_request.py                 # both, every request type, one worker each
    .venv/bin/python bench/cpu_per_request.py -w 2 -c 50      # as bench/run.py loads them (2 workers here)
    .venv/bin/python bench/cpu_per_request.py --src OTHER/src --only ours   # another version of ours
    .venv/bin/python bench/cpu_per_request.py --profile DIR   # also cProfile our worker (DIR/ours-<label>.prof)

Throughput on a shared 2-core machine swings with the neighbours' load; the CPU a server spends per
request does much less. Each server runs with `-w` workers (default 1: one process; `myregistry serve`
with production settings otherwise, fsync on, metrics in multiprocess mode, access log to a file; the
bare app with BARE_WORKERS), `hey` sends the requests from its own process, and the server's CPU time
(user + system, every thread of every process of its process group, from /proc/*/task/*/schedstat, in
nanoseconds) over the requests, divided by their number, is the figure. Each measurement is repeated
and the smallest kept: neighbours on the machine only ever add to it (shared caches, frequency).
`hey` itself costs about 28 us of CPU per request on this machine, on the same cores: in bench/run.py
the rate ratio ours/bare is about (bare + 28) / (ours + 28) of these figures, when nothing else runs.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import httpx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

from run import ACCEPT, free_port  # noqa: E402

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
SMALL_BLOB = 4096
REQUESTS = {  # label: (method, path), {manifest}, {blob} filled in; bare Sanic has no blob GET
    "GET /v2/": ("GET", "/v2/"),
    "HEAD manifest by tag": ("HEAD", "/v2/bench/app/manifests/latest"),
    "GET manifest by tag": ("GET", "/v2/bench/app/manifests/latest"),
    "GET manifest by digest": ("GET", "/v2/bench/app/manifests/{manifest}"),
    "HEAD blob": ("HEAD", "/v2/bench/app/blobs/{blob}"),
    "GET blob (4 KiB)": ("GET", "/v2/bench/app/blobs/{blob}"),
}
BARE_HAS = {"GET /v2/", "HEAD manifest by tag", "GET manifest by tag", "GET manifest by digest", "HEAD blob"}

# Run our server under cProfile, dumping the stats when it stops (SIGINT).
PROFILED_SERVE = """
import cProfile, sys
from entrypoints import cli
profiler = cProfile.Profile()
sys.argv = ["myregistry", "serve"]
profiler.enable()
try:
    cli.main()
finally:
    profiler.disable()
    profiler.dump_stats(sys.argv_out)
"""


def cpu_ns(group: int) -> int:
    """CPU time of every thread of every process in the process group (the server and its workers)."""
    total = 0
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                if int(f.read().rsplit(")", 1)[1].split()[2]) != group:  # field 5: pgrp
                    continue
            for path in glob.glob(os.path.join(os.path.dirname(stat), "task", "*", "schedstat")):
                with open(path) as f:
                    total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            pass
    return total


def hey(url: str, method: str, n: int, c: int) -> None:
    out = subprocess.run(["hey", "-n", str(n), "-c", str(c), "-m", method, "-H", f"Accept: {ACCEPT}", url],
                         capture_output=True, text=True, check=True).stdout
    codes = dict(re.findall(r"\[(\d{3})\]\s+(\d+) responses", out))
    if set(codes) != {"200"}:
        raise RuntimeError(f"hey {method} {url}: not all 200:\n{out[-600:]}")


class Server:
    def __init__(self, name: str, args: list[str], env: dict[str, str], workdir: str) -> None:
        self.name, self.port = name, free_port()
        env = {**env, "PORT": str(self.port), "BARE_PORT": str(self.port)}
        self.log = open(os.path.join(workdir, f"{name}.log"), "ab")
        self.process = subprocess.Popen(args, env=env, stdout=self.log, stderr=self.log, cwd=workdir,
                                        start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.url}/v2/", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"{name} did not start; see {workdir}/{name}.log")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()


def push(url: str) -> tuple[bytes, str, str]:
    """A 10-layer image (4 KiB layers, as the benchmark's manifest has 10 layers) tagged `latest` in
    bench/app; returns (manifest bytes, manifest digest, the first layer's digest)."""
    layers = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for i in range(11):
            data = hashlib.shake_256(f"layer-{i}".encode()).digest(SMALL_BLOB)
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            r = client.post(f"/v2/bench/app/blobs/uploads/?digest={digest}", content=data,
                            headers={"Content-Type": "application/octet-stream"})
            r.raise_for_status()
            layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest,
                           "size": len(data)})
        config = {**layers.pop(0), "mediaType": "application/vnd.oci.image.config.v1+json"}
        manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config,
                               "layers": layers}).encode()
        r = client.put("/v2/bench/app/manifests/latest", content=manifest, headers={"Content-Type": OCI_MANIFEST})
        r.raise_for_status()
        return manifest, r.headers["Docker-Content-Digest"], layers[0]["digest"]


def measure(server: Server, labels: list[str], fill: dict[str, str], n: int, c: int, repeat: int) -> dict:
    results = {}
    for label in labels:
        method, path = REQUESTS[label]
        url = server.url + path.format(**fill)
        hey(url, method, max(1000, n // 10), c)  # warm up
        samples = []
        for _ in range(repeat):
            before = cpu_ns(server.process.pid)
            hey(url, method, n, c)
            samples.append((cpu_ns(server.process.pid) - before) / n / 1000)
        results[label] = round(min(samples), 1)
        print(f"{server.name:6} {label:24} {results[label]:7.1f} us/request  (samples {[round(s) for s in samples]})",
              file=sys.stderr, flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--requests", type=int, default=20000)
    parser.add_argument("-c", "--connections", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", choices=["ours", "bare"])
    parser.add_argument("-w", "--workers", type=int, default=1, help="worker processes of each server (CPU summed)")
    parser.add_argument("--requests-only", nargs="*", help="labels to measure (default all)")
    parser.add_argument("--profile", help="directory for cProfile stats of our worker, one file per request type")
    parser.add_argument("--workdir", help="scratch directory, kept afterwards (servers' logs, data)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for our server (repeatable), e.g. --env REGISTRY_LOG_LEVEL=WARNING")
    parser.add_argument("--src", default=os.path.join(ROOT, "src"),
                        help="our source tree (another checkout's src/, to compare two versions)")
    args = parser.parse_args()
    workdir = os.path.abspath(args.workdir) if args.workdir else tempfile.mkdtemp(prefix="myregistry-cpu-")
    os.makedirs(workdir, exist_ok=True)
    labels = args.requests_only or list(REQUESTS)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    ours_env = {**base_env, "STORAGE_ROOT": os.path.join(workdir, "data"), "REGISTRY_HOST": "127.0.0.1",
                "REGISTRY_WORKERS": str(args.workers), "PYTHONPATH": os.path.abspath(args.src),
                **dict(pair.split("=", 1) for pair in args.env)}
    out: dict[str, dict] = {}
    try:
        ours = Server("ours", [sys.executable, "-m", "entrypoints.cli", "serve"], ours_env, workdir)
        try:
            manifest, manifest_digest, blob = push(ours.url)
            fill = {"manifest": manifest_digest, "blob": blob}
            if args.only != "bare":
                out["ours"] = measure(ours, labels, fill, args.requests, args.connections, args.repeat)
        finally:
            ours.stop()
        if args.profile:
            os.makedirs(args.profile, exist_ok=True)
            for label in labels:
                stats = os.path.abspath(os.path.join(args.profile, "ours-" + label.replace(" ", "_").replace("/", "")
                                                     + ".prof"))
                code = PROFILED_SERVE.replace("sys.argv_out", repr(stats))
                prof = Server("ours-profiled", [sys.executable, "-c", code], ours_env, workdir)
                try:
                    measure(prof, [label], fill, args.requests, args.connections, 1)
                finally:
                    prof.stop()
        if args.only != "ours":
            manifest_file = os.path.join(workdir, "manifest.json")
            with open(manifest_file, "wb") as f:
                f.write(manifest)
            bare_env = {**os.environ, "BARE_WORKERS": str(args.workers), "BARE_MANIFEST": manifest_file,
                        "BARE_MEDIA_TYPE": OCI_MANIFEST, "BARE_BLOB_SIZE": str(SMALL_BLOB)}
            bare = Server("bare", [sys.executable, os.path.join(ROOT, "bench", "bare_sanic.py")], bare_env, workdir)
            try:
                out["bare"] = measure(bare, [x for x in labels if x in BARE_HAS], fill, args.requests,
                                      args.connections, args.repeat)
            finally:
                bare.stop()
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
