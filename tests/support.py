"""Helpers the tests share: a live registry process, required tools, OCI image layouts built in Python."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field

import httpx
import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def require_tool(name: str) -> str:
    """The tool's path. Missing: a failure in CI (it must be installed there), a skip elsewhere."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (.ci/run installs it)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    port: int
    storage_root: str
    process: subprocess.Popen
    log_path: str
    host: str = field(init=False)

    def __post_init__(self) -> None:
        self.host = f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_process_group(self.process)

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()


def stop_process_group(process: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM the server's main process, which stops its workers; SIGKILL whatever is left of its
    process group after `timeout`, so no worker outlives a test. (A SIGTERM to the whole group would
    also kill Sanic's state server under the main process, which then logs a BrokenPipeError.)"""
    if process.poll() is None:
        try:
            os.kill(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def start_server(storage_root: str, log_path: str, **env: str) -> Server:
    port = free_port()
    environment = {**os.environ, "PORT": str(port), "STORAGE_ROOT": storage_root,
                   "REGISTRY_HOST": "127.0.0.1", "PYTHONPATH": os.path.join(REPO_ROOT, "src"), **env}
    log = open(log_path, "wb")
    process = subprocess.Popen([sys.executable, "-m", "entrypoints.cli", "serve"], env=environment,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return wait_until_up(Server(f"http://127.0.0.1:{port}", port, storage_root, process, log_path))


def wait_for_answer(url: str, timeout: float, what: str) -> None:
    """Until `url` answers at all (any status); `what` says where to look when it does not in time."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no answer from {url} within {timeout:.0f} s; {what}") from None
            time.sleep(0.05)


def scratch_build_context(directory, payload: bytes):
    """A directory holding `payload.bin` and a Containerfile copying it into a FROM scratch image."""
    directory.mkdir()
    (directory / "payload.bin").write_bytes(payload)
    (directory / "Containerfile").write_text("FROM scratch\nCOPY payload.bin /payload.bin\n")
    return directory


def wait_until_up(server: Server, timeout: float = 20, verify: object = True) -> Server:
    """The server, once /health/live answers 200 (over TLS checked with `verify`); its log in the
    error if it exits or stays silent."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"registry exited at start:\n{server.log()}")
        try:
            if httpx.get(f"{server.url}/health/live", timeout=1, verify=verify).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"registry did not answer within {timeout:.0f} s:\n{server.log()}")


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tar_of(files: dict[str, bytes]) -> bytes:
    """An uncompressed tar holding the given files, byte-for-byte reproducible."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, content in sorted(files.items()):
            info = tarfile.TarInfo(path)
            info.size, info.mtime, info.mode = len(content), 0, 0o644
            tar.addfile(info, io.BytesIO(content))
    return raw.getvalue()


def layer_tar(files: dict[str, bytes]) -> bytes:
    """A gzipped tar layer holding the given files, byte-for-byte reproducible."""
    return gzip.compress(tar_of(files), mtime=0)


OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


@dataclass
class Image:
    manifest: bytes
    config: bytes
    layers: list[bytes]

    @property
    def digest(self) -> str:
        return sha256(self.manifest)

    def blobs(self) -> list[bytes]:
        return [self.config, *self.layers]


def make_image(seed: str, layers: int = 2, layer_size: int = 4096, arch: str = "amd64") -> Image:
    """An OCI image whose layers hold pseudo-random files derived from `seed`."""
    layer_blobs = []
    for i in range(layers):
        content = hashlib.shake_256(f"{seed}/{i}".encode()).digest(layer_size)
        layer_blobs.append(layer_tar({f"data/{seed}-{i}.bin": content}))
    config = json.dumps({
        "architecture": arch, "os": "linux", "config": {"Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers",
                   "diff_ids": [sha256(gzip.decompress(b)) for b in layer_blobs]},
    }, sort_keys=True).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": sha256(b), "size": len(b)} for b in layer_blobs],
    }, indent=3).encode()
    return Image(manifest, config, layer_blobs)


def make_index(images: list[tuple[Image, str]]) -> bytes:
    return json.dumps({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": img.digest, "size": len(img.manifest),
                       "platform": {"architecture": arch, "os": "linux"}} for img, arch in images],
    }).encode()


def write_layout(directory: str, top: bytes, blobs: list[bytes], tag: str, media_type: str = OCI_MANIFEST) -> None:
    """An OCI image layout directory whose index.json names `top` as `tag`."""
    os.makedirs(os.path.join(directory, "blobs", "sha256"), exist_ok=True)
    for blob in [*blobs, top]:
        with open(os.path.join(directory, "blobs", "sha256", sha256(blob)[7:]), "wb") as f:
            f.write(blob)
    with open(os.path.join(directory, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    with open(os.path.join(directory, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [{
            "mediaType": media_type, "digest": sha256(top), "size": len(top),
            "annotations": {"org.opencontainers.image.ref.name": tag}}]}, f)


def push_image(client: httpx.Client, repo: str, image: Image, tag: str | None = None) -> httpx.Response:
    """Push over the API the simple way (one POST per blob); the tests of uploads cover the rest."""
    for blob in image.blobs():
        r = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": sha256(blob)}, content=blob)
        assert r.status_code == 201, r.text
    r = client.put(f"/v2/{repo}/manifests/{tag or image.digest}", content=image.manifest,
                   headers={"Content-Type": OCI_MANIFEST})
    assert r.status_code == 201, r.text
    return r
