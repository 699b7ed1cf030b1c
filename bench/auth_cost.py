"""What access control costs a small request: server CPU time per manifest HEAD with REGISTRY_AUTH=none,
htpasswd (Basic credentials on every request, as Docker sends them) and token (a bearer token), one
worker each, driven by `hey`.

    .venv/bin/python bench/auth_cost.py [--requests N] [--repeat N]

CPU time (user + system of every thread, from /proc/<pid>/task/*/schedstat) divided by the requests is
steady on a shared machine where throughput is not. The goal (issue 11): token validation under 10% of
a manifest HEAD. The three servers run side by side and are sampled in turn, `--repeat` rounds; the
smallest sample of each is kept (load from elsewhere only ever adds)."""

from __future__ import annotations

import argparse
import base64
import glob
import json
import os
import signal
import subprocess
import sys
import tempfile

import httpx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "src"), ROOT]

from tests.support import free_port, make_image, push_image, wait_for_answer  # noqa: E402

from adapters.auth.htpasswd import hash_password, write_users  # noqa: E402

PASSWORD = "bench-password"


def cpu_ns(pid: int) -> int:
    total = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(path) as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


class Server:
    """`myregistry serve` with one worker in `mode`, an image pushed, and the `hey` command line that
    sends it manifest HEADs with the mode's credentials."""

    def __init__(self, workdir: str, mode: str) -> None:
        self.mode, port = mode, free_port()
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}, "PORT": str(port),
               "STORAGE_ROOT": os.path.join(workdir, f"data-{mode}"), "REGISTRY_HOST": "127.0.0.1",
               "PYTHONPATH": os.path.join(ROOT, "src"), "REGISTRY_WORKERS": "1", "REGISTRY_AUTH": mode,
               "REGISTRY_AUTH_HTPASSWD": os.path.join(workdir, "htpasswd")}
        with open(os.path.join(workdir, f"{mode}.log"), "wb") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "entrypoints.cli", "serve"], env=env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        wait_for_answer(f"{url}/health/live", 30, f"see {workdir}/{mode}.log")
        headers = {}
        if mode == "htpasswd":
            headers["Authorization"] = "Basic " + base64.b64encode(f"bench:{PASSWORD}".encode()).decode()
        elif mode == "token":
            r = httpx.get(f"{url}/auth/token", auth=("bench", PASSWORD), timeout=30,
                          params={"service": "myregistry", "scope": "repository:bench/app:pull,push"})
            r.raise_for_status()
            headers["Authorization"] = "Bearer " + r.json()["token"]
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
            push_image(client, "bench/app", make_image("auth-cost"), "latest").raise_for_status()
        self.argv = ["hey", "-c", "20", "-m", "HEAD", "-H", "Accept: application/vnd.oci.image.manifest.v1+json"]
        for name, value in headers.items():
            self.argv += ["-H", f"{name}: {value}"]
        self.target = f"{url}/v2/bench/app/manifests/latest"

    def sample(self, requests: int) -> float:
        """Server CPU microseconds per request over `requests` HEADs."""
        before = cpu_ns(self.process.pid)
        out = subprocess.run(self.argv + ["-n", str(requests), self.target], capture_output=True, text=True,
                             check=True).stdout
        if f"[200]\t{requests} responses" not in out.replace("  ", "\t").replace("\t\t", "\t"):
            raise RuntimeError(f"not every HEAD answered 200 ({self.mode}):\n{out[-600:]}")
        return (cpu_ns(self.process.pid) - before) / requests / 1000

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=6)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="myregistry-auth-cost-") as workdir:
        write_users(os.path.join(workdir, "htpasswd"), {"bench": hash_password(PASSWORD, 12)})
        servers = []
        try:
            for mode in ("none", "htpasswd", "token"):
                servers.append(Server(workdir, mode))
            samples: dict[str, list[float]] = {s.mode: [] for s in servers}
            for server in servers:
                server.sample(max(1000, args.requests // 10))  # warm up
            for round_no in range(args.repeat):  # the three in turn, so a change of load falls on all
                for server in servers[round_no % 3:] + servers[:round_no % 3]:
                    samples[server.mode].append(server.sample(args.requests))
        finally:
            for server in servers:
                server.stop()
        cost = {mode: min(values) for mode, values in samples.items()}
    print("| manifest HEAD, server CPU per request | us | over none |")
    print("| --- | ---: | ---: |")
    for mode, us in cost.items():
        extra = "" if mode == "none" else f"+{(us / cost['none'] - 1) * 100:.1f}%"
        print(f"| REGISTRY_AUTH={mode} | {us:.1f} | {extra} |")
    print(json.dumps(cost))


if __name__ == "__main__":
    main()
