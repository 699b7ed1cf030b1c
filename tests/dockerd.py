"""A Docker engine in a sandbox for the tests: Debian's `dockerd` started by hand (no systemd), with its own
data and exec roots, socket, pidfile, daemon.json, trust key and client config under one temp dir, vfs
storage and no iptables or bridge, so a host's own Docker (if any) is neither used nor touched.

Known leftovers outside the sandbox: dockerd creates an empty `/run/docker/plugins` (a fixed path), and
it uses a system containerd if one listens on `/run/containerd/containerd.sock` (else it starts its own
under the exec root); nothing runs in a container here, so that containerd holds no state of ours."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support import IN_CI, require_tool


class DockerdUnavailable(Exception):
    """dockerd could not be started here (the message says why, with the end of its log)."""


@dataclass
class DockerEngine:
    base: str
    socket_path: str
    cli: str
    env: dict[str, str]
    process: subprocess.Popen
    log_path: str
    started_in: float  # seconds from spawning dockerd to its API answering

    def run(self, *args: str, timeout: float = 120, stdin: bytes | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([self.cli, "-H", f"unix://{self.socket_path}", *args], input=stdin,
                              capture_output=True, timeout=timeout, env=self.env)

    def __call__(self, *args: str, timeout: float = 120, stdin: bytes | None = None) -> str:
        """Run `docker ARGS`; its stdout. A failure shows the command's stderr and the daemon's last lines."""
        result = self.run(*args, timeout=timeout, stdin=stdin)
        assert result.returncode == 0, (
            f"docker {' '.join(args)} failed ({result.returncode}):\n{result.stderr.decode(errors='replace')}"
            f"\n{result.stdout.decode(errors='replace')[-2000:]}\n--- dockerd log (end) ---\n{self.log_tail()}")
        return result.stdout.decode(errors="replace")

    def fails(self, *args: str, timeout: float = 120) -> str:
        """Run `docker ARGS`, which must fail; its stderr."""
        result = self.run(*args, timeout=timeout)
        assert result.returncode != 0, f"docker {' '.join(args)} succeeded:\n{result.stdout.decode()}"
        return result.stderr.decode(errors="replace")

    def inspect(self, ref: str) -> dict:
        return json.loads(self("image", "inspect", ref))[0]

    def has_image(self, ref: str) -> bool:
        return self.run("image", "inspect", ref).returncode == 0

    def version(self) -> dict:
        return json.loads(self("version", "--format", "{{json .}}"))

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def log_tail(self, lines: int = 25) -> str:
        """The daemon's last lines, without its gRPC connection chatter."""
        return "\n".join([line for line in self.log().splitlines() if "module=grpc" not in line][-lines:])

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM dockerd (it stops the containerd it started), SIGKILL its group if it hangs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def _pings(socket_path: str) -> bool:
    """The daemon's API answers `GET /_ping` on its socket."""
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(socket_path)
            s.sendall(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def _cli_for(dockerd: str) -> str:
    """The client of the same installation as the daemon (Debian: /usr/sbin/dockerd, /usr/bin/docker), not
    whichever newer `docker` comes first on PATH, so the pair is the one a Debian user runs."""
    prefix = os.path.dirname(os.path.dirname(os.path.realpath(dockerd)))
    paired = os.path.join(prefix, "bin", "docker")
    return paired if os.access(paired, os.X_OK) else require_tool("docker")


def start_dockerd(base: str, timeout: float = 60) -> DockerEngine:
    """Start a sandboxed dockerd whose every path is under `base` (keep it short: the socket's path must
    fit in 108 bytes). Raises DockerdUnavailable when it cannot run here."""
    # Debian puts dockerd in /usr/sbin, which a non-root PATH may lack.
    dockerd = shutil.which("dockerd") or shutil.which("dockerd", path="/usr/sbin:/sbin") or require_tool("dockerd")
    cli = _cli_for(dockerd)
    if os.geteuid() != 0:
        raise DockerdUnavailable("dockerd needs root (rootless Docker is not set up by the tests)")
    sock = os.path.join(base, "docker.sock")
    if len(sock) >= 108:
        raise DockerdUnavailable(f"socket path too long for a unix socket: {sock}")
    for sub in ("data", "exec", "client"):
        os.makedirs(os.path.join(base, sub), exist_ok=True)
    config = os.path.join(base, "daemon.json")
    with open(config, "w") as f:
        # 127.0.0.0/8 is insecure (plain HTTP allowed) by default; said here so the sandbox doesn't depend
        # on it, and so /etc/docker/daemon.json and /etc/docker/key.json are neither read nor written.
        json.dump({"insecure-registries": ["127.0.0.0/8"],
                   "deprecated-key-path": os.path.join(base, "key.json")}, f)
    log_path = os.path.join(base, "dockerd.log")
    log = open(log_path, "wb")
    started = time.monotonic()
    process = subprocess.Popen(
        [dockerd, "--config-file", config, "--storage-driver=vfs", "--iptables=false", "--ip6tables=false",
         "--bridge=none", "--data-root", os.path.join(base, "data"), "--exec-root", os.path.join(base, "exec"),
         "-H", f"unix://{sock}", "--pidfile", os.path.join(base, "dockerd.pid")],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    # DOCKER_CONFIG: the client's config (and `docker manifest create`'s lists) stay in the sandbox too.
    # Debian's 20.10 client runs `docker manifest` without DOCKER_CLI_EXPERIMENTAL, as a user types it.
    env = {**os.environ, "DOCKER_HOST": f"unix://{sock}", "DOCKER_CONFIG": os.path.join(base, "client")}
    engine = DockerEngine(base, sock, cli, env, process, log_path, 0.0)
    deadline = started + timeout
    # No readiness signal but the API itself: poll the socket (each try is one connect on a local socket).
    while not _pings(sock):
        if process.poll() is not None:
            raise DockerdUnavailable(f"dockerd exited ({process.returncode}) at start:\n{engine.log_tail(40)}")
        if time.monotonic() > deadline:
            engine.stop()
            raise DockerdUnavailable(f"dockerd did not answer within {timeout:.0f} s:\n{engine.log_tail(40)}")
        time.sleep(0.05)
    engine.started_in = time.monotonic() - started
    return engine


@contextlib.contextmanager
def sandboxed_dockerd() -> Iterator[DockerEngine]:
    """A running sandboxed dockerd for a fixture: a skip where it cannot start outside CI, a failure in CI
    (with the daemon's log); stopped and its directory removed at the end."""
    base = tempfile.mkdtemp(prefix="mr-dk-", dir="/tmp")
    engine = None
    try:
        try:
            engine = start_dockerd(base)
        except DockerdUnavailable as err:
            if IN_CI:
                pytest.fail(f"dockerd must run in CI: {err}")
            pytest.skip(f"no Docker engine here: {err}")
        yield engine
    finally:
        if engine is not None:
            engine.stop()
        shutil.rmtree(base, ignore_errors=True)
