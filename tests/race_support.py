"""Helpers for the race and fail-safe tests over HTTP: raw-socket requests held mid-body, collections over
HTTP or the CLI, Distribution's on-disk layout written by hand, and a FIFO that holds a reader still.

The storage paths are spelled out here rather than taken from the code under test, so a test that writes
a data directory "as Distribution writes it" does not depend on our own layout module."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import threading
import time

import httpx

from tests.support import REPO_ROOT, sha256

# -- raw HTTP/1.1 on a socket ---------------------------------------------------------------------------


def open_request(port: int, method: str, path: str, headers: dict[str, str], timeout: float = 30) -> socket.socket:
    """Send a request's line and headers only; the caller sends the body (or not) later."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    return sock


class RawResponse:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def error_code(self) -> str | None:
        try:
            return json.loads(self.body)["errors"][0]["code"]
        except (ValueError, KeyError, IndexError, TypeError):
            return None

    def __repr__(self) -> str:
        return f"RawResponse({self.status}, {self.body[:300]!r})"


def read_response(sock: socket.socket, buffer: bytearray | None = None) -> RawResponse:
    """Read one response (an interim 100 Continue counts as one). `buffer` carries bytes read past it."""
    data = buffer if buffer is not None else bytearray()
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        if not piece:
            raise ConnectionError(f"connection closed before a full response head: {bytes(data[:200])!r}")
        data += piece
    end = data.index(b"\r\n\r\n")
    head = bytes(data[:end]).decode("latin-1")
    del data[:end + 4]
    lines = head.split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0") or 0) if status >= 200 else 0
    while len(data) < length:
        piece = sock.recv(65536)
        if not piece:
            break
        data += piece
    body = bytes(data[:length])
    del data[:length]
    return RawResponse(status, headers, body)


class HeldRequest:
    """A PATCH or PUT on an upload session, sent with `Expect: 100-continue` and its body held back.

    Sanic sends the 100 Continue when the handler first reads the body, i.e. once the use-case has
    looked the session up (and, in the fixed code, taken its lock) and is ready to append: a
    deterministic signal that the request is inside the session. A request refused before it reads its
    body answers its final status instead."""

    def __init__(self, port: int, method: str, path: str, length: int, headers: dict[str, str] | None = None):
        self.sock = open_request(port, method, path, {"Content-Length": str(length), "Expect": "100-continue",
                                                      "Content-Type": "application/octet-stream",
                                                      **(headers or {})})
        self.buffer = bytearray()
        first = read_response(self.sock, self.buffer)
        self.entered = first.status == 100
        self.final: RawResponse | None = None if self.entered else first

    def finish(self, body: bytes) -> RawResponse:
        """Send the held body and read the final response."""
        if self.final is None:
            self.sock.sendall(body)
            self.final = read_response(self.sock, self.buffer)
        self.sock.close()
        return self.final

    def close(self) -> None:
        self.sock.close()


# -- collections -----------------------------------------------------------------------------------------

ENV = {**os.environ, "PYTHONPATH": os.path.join(REPO_ROOT, "src")}


def run_gc(client: httpx.Client, repo: str | None = None, timeout: float = 120, **params: str) -> dict:
    """POST /v2/_gc (or /v2/<repo>/_gc), which answers when the collection ends; return its report."""
    r = client.post(f"/v2/{repo}/_gc" if repo else "/v2/_gc", params=params, timeout=timeout)
    assert r.status_code == 200, (r.status_code, r.text)
    return r.json()


def cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "entrypoints.cli", *args], capture_output=True, text=True,
                          env={**ENV, **env}, timeout=120)


def cli_background(*args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "entrypoints.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**ENV, **env})


# -- Distribution's layout, written by hand --------------------------------------------------------------


class Tree:
    """Paths and writes under <root>/docker/registry/v2, as CNCF Distribution lays them out."""

    def __init__(self, root: str) -> None:
        self.v2 = os.path.join(root, "docker", "registry", "v2")

    def blob_data(self, digest: str) -> str:
        hex_ = digest.split(":", 1)[1]
        return os.path.join(self.v2, "blobs", "sha256", hex_[:2], hex_, "data")

    def repository(self, repo: str) -> str:
        return os.path.join(self.v2, "repositories", *repo.split("/"))

    def layer_link(self, repo: str, digest: str) -> str:
        return os.path.join(self.repository(repo), "_layers", "sha256", digest.split(":", 1)[1], "link")

    def revision_dir(self, repo: str, digest: str) -> str:
        return os.path.join(self.repository(repo), "_manifests", "revisions", "sha256", digest.split(":", 1)[1])

    def tags_dir(self, repo: str) -> str:
        return os.path.join(self.repository(repo), "_manifests", "tags")

    def upload_dir(self, repo: str, upload_id: str) -> str:
        return os.path.join(self.repository(repo), "_uploads", upload_id)

    def catalog_dir(self) -> str:
        return os.path.join(self.v2, "_myregistry", "catalog")

    @staticmethod
    def _write(path: str, data: bytes) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)

    def write_blob(self, data: bytes) -> str:
        digest = sha256(data)
        self._write(self.blob_data(digest), data)
        return digest

    def link_layer(self, repo: str, digest: str) -> None:
        self._write(self.layer_link(repo, digest), digest.encode())

    def link_revision(self, repo: str, digest: str) -> None:
        self._write(os.path.join(self.revision_dir(repo, digest), "link"), digest.encode())

    def set_tag(self, repo: str, tag: str, digest: str) -> None:
        base = os.path.join(self.tags_dir(repo), tag)
        self._write(os.path.join(base, "current", "link"), digest.encode())
        self._write(os.path.join(base, "index", "sha256", digest.split(":", 1)[1], "link"), digest.encode())

    def link_files(self, repo: str) -> list[str]:
        return [os.path.join(d, f) for d, _, files in os.walk(self.repository(repo)) for f in files]


def backdate(seconds: float, *paths: str) -> None:
    """Set the mtime of each path `seconds` into the past, as if nobody had used it since."""
    when = time.time() - seconds
    for path in paths:
        os.utime(path, (when, when))


def backdate_tree(seconds: float, top: str) -> None:
    """Every file and directory under `top` (and `top`) `seconds` into the past."""
    when = time.time() - seconds
    for directory, _dirs, files in os.walk(top):
        for f in files:
            os.utime(os.path.join(directory, f), (when, when))
        os.utime(directory, (when, when))


# -- a FIFO in place of a manifest's bytes: whoever reads it waits until the test says so ------------------


class FifoBlob:
    """Replace a stored blob's data file with a named pipe. A reader (the collector's mark) blocks in
    open() until `release()`; from then on every reader gets `content`, served by a thread for as long as
    the test runs. `reader_waiting()` tells, without blocking, that a reader has the pipe open."""

    def __init__(self, path: str, content: bytes) -> None:
        self.path, self.content = path, content
        os.unlink(path)
        os.mkfifo(path)
        self._released = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._first_fd: int | None = None

    def wait_for_reader(self, timeout: float) -> bool:
        """Poll until a reader has opened the pipe (opening for writing without blocking fails with ENXIO
        while nobody reads). The write end is kept for `release`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self._first_fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
                return True
            except OSError as e:
                if e.errno != errno.ENXIO:
                    raise
            time.sleep(0.005)
        return False

    def release(self) -> None:
        if self._first_fd is not None:
            os.set_blocking(self._first_fd, True)
            os.write(self._first_fd, self.content)
            os.close(self._first_fd)
            self._first_fd = None
        self._thread.start()

    def _serve(self) -> None:
        while not self._stopped.is_set():
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                time.sleep(0.005)
                continue
            try:
                os.set_blocking(fd, True)
                os.write(fd, self.content)
            except OSError:
                pass
            finally:
                os.close(fd)

    def restore(self) -> None:
        """Stop serving and put a plain file with the same content back."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(5)
        if self._first_fd is not None:
            os.close(self._first_fd)
            self._first_fd = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return  # collected meanwhile
        with open(self.path, "wb") as f:
            f.write(self.content)
