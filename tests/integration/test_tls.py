"""TLS against a live `myregistry serve`: HTTPS with a CA the tests make (trustme), plain HTTP refused,
SIGHUP re-reading the certificate in every worker while open connections carry on, a broken replacement
keeping the old certificate, client certificates, and start-up errors that name the file."""

from __future__ import annotations

import datetime
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass

import httpx
import orjson
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.support import REPO_ROOT, Server, free_port, make_image, push_image, require_tool, sha256, wait_until_up

# `myregistry serve` with one extra route answering client_certificate_user(request) for the connection,
# and whether the connection had it cached before (the auth middleware will call it on every request).
WHOAMI = """
from entrypoints import cli
from entrypoints.http import app as app_module
from entrypoints.tls import client_certificate_user

create_app = app_module.create_app

def create_app_with_whoami(*args, **kwargs):
    from sanic.response import json
    app = create_app(*args, **kwargs)

    @app.get("/_test/whoami")
    async def whoami(request):
        cached = hasattr(request.conn_info.ctx, "myregistry_tls_user")
        return json({"user": client_certificate_user(request), "cached_before": cached})
    return app

app_module.create_app = create_app_with_whoami
cli.main(["serve"])
"""


def serial_of(pem: bytes) -> int:
    return x509.load_pem_x509_certificate(pem).serial_number


@dataclass
class Pki:
    """A CA, two server certificates it signed (A, then B for the renewal), and the live paths the
    server reads."""
    directory: str
    ca: trustme.CA
    ca_path: str
    a: trustme.LeafCert
    b: trustme.LeafCert
    cert_path: str
    key_path: str

    @property
    def serial_a(self) -> int:
        return serial_of(self.a.cert_chain_pems[0].bytes())

    @property
    def serial_b(self) -> int:
        return serial_of(self.b.cert_chain_pems[0].bytes())

    def install(self, cert: bytes, key: bytes) -> None:
        """Replace the live files the way renewal tools do: write aside, rename over."""
        for path, data in ((self.cert_path, cert), (self.key_path, key)):
            with open(path + ".new", "wb") as f:
                f.write(data)
            os.replace(path + ".new", path)

    def install_leaf(self, leaf: trustme.LeafCert) -> None:
        self.install(b"".join(p.bytes() for p in leaf.cert_chain_pems), leaf.private_key_pem.bytes())

    def client_context(self, **kwargs) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_path, **kwargs)


@pytest.fixture
def pki(tmp_path) -> Pki:
    directory = tmp_path / "tls"
    directory.mkdir()
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    pki = Pki(str(directory), ca, str(directory / "ca.pem"), ca.issue_cert("localhost", "127.0.0.1"),
              ca.issue_cert("localhost", "127.0.0.1"), str(directory / "server.crt"), str(directory / "server.key"))
    pki.install_leaf(pki.a)
    return pki


def server_env(tmp_path, pki: Pki, workers: int, **env: str) -> dict[str, str]:
    return {**os.environ, "STORAGE_ROOT": str(tmp_path / "data"), "REGISTRY_HOST": "127.0.0.1",
            "PYTHONPATH": os.path.join(REPO_ROOT, "src"), "REGISTRY_FSYNC": "false",
            "REGISTRY_WORKERS": str(workers), "REGISTRY_TLS_CERT": pki.cert_path,
            "REGISTRY_TLS_KEY": pki.key_path, **env}


def start_tls_server(tmp_path, pki: Pki, workers: int = 1, whoami: bool = False, **env: str) -> Server:
    port = free_port()
    log_path = str(tmp_path / f"server-{port}.log")
    argv = [sys.executable, "-c", WHOAMI] if whoami else [sys.executable, "-m", "entrypoints.cli", "serve"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, env={**server_env(tmp_path, pki, workers, **env), "PORT": str(port)},
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(f"https://127.0.0.1:{port}", port, str(tmp_path / "data"), process, log_path)
    return wait_until_up(server, 20, pki.client_context())


def stop(server: Server) -> None:
    """SIGTERM to the main process only, as `kill PID` does: a SIGTERM to the whole process group also
    reaches Sanic's multiprocessing state server, and the main process, which still asks it about its
    workers while stopping, then logs an ERROR with a BrokenPipeError (2 stops in 8 with 2 workers,
    with or without TLS)."""
    if server.process.poll() is None:
        os.kill(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(10)
        except subprocess.TimeoutExpired:
            pass
    server.stop()  # whatever is left


def records(server: Server) -> list[dict]:
    return [orjson.loads(line) for line in server.log().splitlines() if line.startswith("{")]


def problems(server: Server) -> list[dict]:
    return [r for r in records(server) if r["level"] in ("WARNING", "ERROR", "CRITICAL")]


def wait_for_log(server: Server, predicate, count: int = 1, timeout: float = 10) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        found = [r for r in records(server) if predicate(r)]
        if len(found) >= count:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{count} matching log line(s) expected, found {len(found)}:\n{server.log()}")
        time.sleep(0.05)


class Connection:
    """One keep-alive HTTPS connection; every request must travel on the same socket."""

    def __init__(self, server: Server, context: ssl.SSLContext) -> None:
        self.server = server
        self.http = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=10)
        self.http.connect()
        self.local = self.http.sock.getsockname()

    def get(self, path: str = "/v2/") -> tuple[int, bytes, int]:
        """Status, body and the pid of the worker that answered (from the access line)."""
        rid = uuid.uuid4().hex
        self.http.request("GET", path, headers={"X-Request-Id": rid})
        response = self.http.getresponse()
        body = response.read()
        assert self.http.sock is not None and self.http.sock.getsockname() == self.local, "connection was replaced"
        line = wait_for_log(self.server, lambda r: r.get("request_id") == rid and r.get("message") == "request")
        return response.status, body, line[0]["pid"]

    def serial(self) -> int:
        return x509.load_der_x509_certificate(self.http.sock.getpeercert(binary_form=True)).serial_number

    def close(self) -> None:
        self.http.close()


def test_https_with_the_ca_and_not_without(tmp_path, pki):
    server = start_tls_server(tmp_path, pki, workers=2)
    try:
        context = pki.client_context()
        with httpx.Client(base_url=server.url, verify=context, timeout=30) as c:
            assert c.get("/v2/").status_code == 200
            # Blob bodies go through the TLS transport (no sendfile there), whole and in ranges.
            image = make_image("tls", layers=2, layer_size=3 << 20)
            push_image(c, "tls/app", image, "v1")
            layer = image.layers[0]
            assert c.get(f"/v2/tls/app/blobs/{sha256(layer)}").content == layer
            r = c.get(f"/v2/tls/app/blobs/{sha256(layer)}", headers={"Range": "bytes=100-199"})
            assert r.status_code == 206 and r.content == layer[100:200]
            assert c.get("/v2/tls/app/manifests/v1").content == image.manifest
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{server.url}/v2/", timeout=10)  # the system's CAs only
        # Modern protocols: TLS 1.3 by default; a TLS 1.2 client gets a forward-secret AEAD cipher.
        conn = Connection(server, context)
        assert conn.http.sock.version() == "TLSv1.3"
        conn.close()
        tls12 = pki.client_context()
        tls12.maximum_version = ssl.TLSVersion.TLSv1_2
        conn = Connection(server, tls12)
        name, version, _ = conn.http.sock.cipher()
        assert version == "TLSv1.2" and name.startswith("ECDHE-") and ("GCM" in name or "CHACHA20" in name)
        assert conn.get()[0] == 200
        conn.close()
    finally:
        stop(server)
    starts = [r["message"] for r in records(server) if r["message"].startswith("serving ")]
    assert len(starts) == 1 and f"on https://127.0.0.1:{server.port} " in starts[0]
    assert problems(server) == []


def test_plain_http_to_the_tls_port_is_refused_cleanly(tmp_path, pki):
    server = start_tls_server(tmp_path, pki)
    try:
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert s.recv(4096) == b""  # closed at once, nothing sent back in clear text
        assert time.monotonic() - started < 2
        with httpx.Client(verify=pki.client_context()) as c:
            assert c.get(f"{server.url}/v2/").status_code == 200
    finally:
        stop(server)
    assert problems(server) == []
    assert "Traceback" not in server.log()


def worker_pids(server: Server, workers: int) -> set[int]:
    if workers == 1:
        return {server.process.pid}
    ready = wait_for_log(server, lambda r: r["message"].startswith("Worker ready"), count=workers)
    return {r["pid"] for r in ready}


def connections_on_every_worker(server: Server, context: ssl.SSLContext, pids: set[int], serial: int,
                                timeout: float = 15) -> list[Connection]:
    """New connections until each worker answered one presenting `serial` (the others are closed)."""
    kept: dict[int, Connection] = {}
    seen = []
    deadline = time.monotonic() + timeout
    while set(kept) != pids:
        if time.monotonic() > deadline:
            raise AssertionError(f"not every worker {sorted(pids)} presented serial {serial:x} within "
                                 f"{timeout} s; seen (pid, serial): {seen}")
        conn = Connection(server, context)
        status, _, pid = conn.get()
        assert status == 200
        seen.append((pid, f"{conn.serial():x}"))
        if conn.serial() == serial and pid not in kept:
            kept[pid] = conn
        else:
            conn.close()
    return list(kept.values())


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_reloads_the_certificate_in_every_worker_and_keeps_open_connections(tmp_path, pki, workers):
    server = start_tls_server(tmp_path, pki, workers=workers)
    try:
        context = pki.client_context()
        pids = worker_pids(server, workers)
        assert len(pids) == workers
        # Keep-alive connections on every worker, presenting A.
        before = connections_on_every_worker(server, context, pids, pki.serial_a)
        pki.install_leaf(pki.b)
        os.kill(server.process.pid, signal.SIGHUP)
        wait_for_log(server, lambda r: r["message"].startswith("TLS certificate reloaded"))
        # Every worker presents B to new connections...
        after = connections_on_every_worker(server, context, pids, pki.serial_b)
        for _ in range(6):
            conn = Connection(server, context)
            assert conn.get()[0] == 200 and conn.serial() == pki.serial_b
            conn.close()
        # ...while the connections opened before carry on, on the same socket with their session.
        for conn in before:
            status, body, pid = conn.get()
            assert (status, body) == (200, b"{}") and conn.serial() == pki.serial_a
        for conn in before + after:
            conn.close()
        assert server.process.poll() is None
        if workers > 1:  # nobody restarted
            assert len([r for r in records(server) if r["message"].startswith("Starting worker")]) == workers
        served_by = {r["pid"] for r in records(server) if r.get("message") == "request"}
        assert served_by == pids
    finally:
        stop(server)
    reloaded = [r for r in records(server) if r["message"].startswith("TLS certificate reloaded")]
    assert len(reloaded) == 1 and reloaded[0]["level"] == "INFO", reloaded
    assert f"serial {pki.serial_b:x}" in reloaded[0]["message"]
    assert problems(server) == []


@pytest.mark.parametrize("workers", [1, 2])
def test_a_broken_replacement_keeps_the_old_certificate_and_says_what_is_wrong(tmp_path, pki, workers):
    server = start_tls_server(tmp_path, pki, workers=workers)
    try:
        context = pki.client_context()
        pids = worker_pids(server, workers)
        open_conn = Connection(server, context)
        a_key = pki.a.private_key_pem.bytes()
        b_cert = pki.b.cert_chain_pems[0].bytes()
        broken = [
            ((b_cert, a_key), [f"REGISTRY_TLS_KEY={pki.key_path}", "does not match the certificate"]),
            ((b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n", a_key),
             [f"REGISTRY_TLS_CERT={pki.cert_path}", "no PEM certificate"]),
            ((b_cert, b""), [f"REGISTRY_TLS_KEY={pki.key_path}", "empty"]),
            (rsa_1024_self_signed(), ["OpenSSL refuses them", "too small"]),
        ]
        for n, ((cert, key), words) in enumerate(broken, 1):
            pki.install(cert, key)
            os.kill(server.process.pid, signal.SIGHUP)
            errors = wait_for_log(server, lambda r: r["level"] == "ERROR", count=n)
            for word in [*words, "not reloaded", "Still serving the previous one", f"serial {pki.serial_a:x}"]:
                assert word in errors[-1]["message"], errors[-1]
            # The old certificate still works, on every worker, for new and open connections.
            for conn in connections_on_every_worker(server, context, pids, pki.serial_a):
                conn.close()
            assert open_conn.get()[0] == 200
        os.remove(pki.key_path)
        os.kill(server.process.pid, signal.SIGHUP)
        errors = wait_for_log(server, lambda r: r["level"] == "ERROR", count=len(broken) + 1)
        assert f"REGISTRY_TLS_KEY={pki.key_path}: no such file" in errors[-1]["message"]
        # Fixed: the next SIGHUP takes it.
        pki.install_leaf(pki.b)
        os.kill(server.process.pid, signal.SIGHUP)
        for conn in connections_on_every_worker(server, context, pids, pki.serial_b):
            conn.close()
        assert open_conn.get()[0] == 200
        open_conn.close()
        assert server.process.poll() is None
    finally:
        stop(server)
    errors = [r for r in records(server) if r["level"] in ("ERROR", "CRITICAL")]
    assert len(errors) == len(broken) + 1  # one line per failed reload, not one per worker
    assert "Traceback" not in server.log()


def test_client_certificates(tmp_path, pki):
    clients_ca, other_ca = trustme.CA(), trustme.CA()
    ca_path = os.path.join(pki.directory, "clients-ca.pem")
    clients_ca.cert_pem.write_to_path(ca_path)
    server = start_tls_server(tmp_path, pki, workers=2, whoami=True, REGISTRY_TLS_CLIENT_CA=ca_path)
    try:
        alice = pki.client_context()
        clients_ca.issue_cert("alice.clients.example", common_name="alice").configure_cert(alice)
        conn = Connection(server, alice)
        status, body, _ = conn.get("/_test/whoami")
        assert status == 200 and json.loads(body) == {"user": "alice", "cached_before": False}
        status, body, _ = conn.get("/_test/whoami")  # same connection: read once, then cached
        assert status == 200 and json.loads(body) == {"user": "alice", "cached_before": True}
        conn.close()
        # No certificate: still connects (and will use a password or token), no user.
        anonymous = Connection(server, pki.client_context())
        status, body, _ = anonymous.get("/_test/whoami")
        assert status == 200 and json.loads(body)["user"] is None
        anonymous.close()
        # A certificate another CA signed: the handshake fails (TLS 1.3 reports it at the first read).
        mallory = pki.client_context()
        other_ca.issue_cert("alice.clients.example", common_name="alice").configure_cert(mallory)
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
            Connection(server, mallory).get("/_test/whoami")
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            alice.maximum_version = alice.minimum_version = version
            conn = Connection(server, alice)
            assert json.loads(conn.get("/_test/whoami")[1])["user"] == "alice"
            conn.close()
    finally:
        stop(server)
    assert "clients-ca.pem" in next(r["message"] for r in records(server) if r["message"].startswith("TLS on"))
    assert problems(server) == []


def test_no_client_certificate_is_asked_for_without_a_client_ca(tmp_path, pki):
    clients_ca = trustme.CA()
    server = start_tls_server(tmp_path, pki, whoami=True)
    try:
        alice = pki.client_context()
        clients_ca.issue_cert("alice.clients.example", common_name="alice").configure_cert(alice)
        conn = Connection(server, alice)
        assert json.loads(conn.get("/_test/whoami")[1])["user"] is None
        conn.close()
    finally:
        stop(server)


def rsa_1024_self_signed() -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def break_missing_cert(pki):
    os.remove(pki.cert_path)
    return {}, [f"REGISTRY_TLS_CERT={pki.cert_path}: no such file"]


def break_key_mismatch(pki):
    pki.install(pki.a.cert_chain_pems[0].bytes(), pki.b.private_key_pem.bytes())
    return {}, [f"REGISTRY_TLS_KEY={pki.key_path}: this key does not match the certificate in {pki.cert_path}"]


def break_swapped(pki):
    return ({"REGISTRY_TLS_CERT": pki.key_path, "REGISTRY_TLS_KEY": pki.cert_path},
            [f"REGISTRY_TLS_CERT={pki.key_path}: no PEM certificate", "swapped"])


def break_encrypted_key(pki):
    key = serialization.load_pem_private_key(pki.a.private_key_pem.bytes(), None)
    encrypted = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.BestAvailableEncryption(b"secret"))
    pki.install(pki.a.cert_chain_pems[0].bytes(), encrypted)
    return {}, [f"REGISTRY_TLS_KEY={pki.key_path}: the private key is encrypted"]


def break_chain_order(pki):
    pki.install(pki.ca.cert_pem.bytes() + pki.a.cert_chain_pems[0].bytes(), pki.a.private_key_pem.bytes())
    return {}, ["belongs to certificate #2 of this file", "must come first"]


def break_weak_key(pki):
    pki.install(*rsa_1024_self_signed())
    return {}, ["OpenSSL refuses them", "too small"]


def break_directory(pki):
    return {"REGISTRY_TLS_KEY": pki.directory}, [f"REGISTRY_TLS_KEY={pki.directory}: is a directory"]


def break_unreadable(pki):  # as root (CI), a key readable by nobody is read anyway: the run is the same
    os.chmod(pki.key_path, 0)
    if os.getuid() == 0:
        return {"REGISTRY_TLS_KEY": pki.key_path + ".missing"}, [f"REGISTRY_TLS_KEY={pki.key_path}.missing"]
    return {}, [f"REGISTRY_TLS_KEY={pki.key_path}: permission denied"]


def break_client_ca(pki):
    return ({"REGISTRY_TLS_CLIENT_CA": os.path.join(pki.directory, "nope.pem")},
            [f"REGISTRY_TLS_CLIENT_CA={os.path.join(pki.directory, 'nope.pem')}: no such file"])


def break_half(pki):  # an empty value is no value: not a plain-HTTP server with a key lying around
    return {"REGISTRY_TLS_CERT": ""}, ["REGISTRY_TLS_CERT and REGISTRY_TLS_KEY go together"]


@pytest.mark.parametrize("breaker", [break_missing_cert, break_key_mismatch, break_swapped, break_encrypted_key,
                                     break_chain_order, break_weak_key, break_directory, break_unreadable,
                                     break_client_ca, break_half], ids=lambda f: f.__name__[6:])
def test_start_up_errors_name_the_file_and_the_problem(tmp_path, pki, breaker):
    env, words = breaker(pki)
    result = subprocess.run([sys.executable, "-m", "entrypoints.cli", "serve"], capture_output=True, text=True,
                            env={**server_env(tmp_path, pki, 1, **env), "PORT": str(free_port())}, timeout=30)
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
    for word in words:
        assert word in result.stderr, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert message, result.stdout


def test_skopeo_and_curl_trust_it_with_the_ca(tmp_path, pki):
    require_tool("skopeo")
    require_tool("curl")
    server = start_tls_server(tmp_path, pki)
    try:
        with httpx.Client(base_url=server.url, verify=pki.client_context(), timeout=30) as c:
            image = make_image("tls-skopeo", layers=1)
            push_image(c, "tls/skopeo", image, "v1")
        cert_dir = tmp_path / "certs.d"
        cert_dir.mkdir()
        shutil.copy(pki.ca_path, cert_dir / "ca.crt")
        out = subprocess.run(["skopeo", "inspect", "--raw", "--cert-dir", str(cert_dir),
                              f"docker://127.0.0.1:{server.port}/tls/skopeo:v1"],
                             capture_output=True, timeout=60)
        assert out.returncode == 0, out.stderr.decode()
        assert out.stdout == image.manifest
        refused = subprocess.run(["skopeo", "inspect", "--raw", f"docker://127.0.0.1:{server.port}/tls/skopeo:v1"],
                                 capture_output=True, timeout=60)
        assert refused.returncode != 0 and b"certificate" in refused.stderr
        out = subprocess.run(["curl", "-sS", "--cacert", pki.ca_path, f"{server.url}/v2/tls/skopeo/tags/list"],
                             capture_output=True, timeout=30)
        assert out.returncode == 0 and json.loads(out.stdout) == {"name": "tls/skopeo", "tags": ["v1"]}
    finally:
        stop(server)


def test_clients_hanging_up_on_their_answers_log_no_error(tmp_path, pki):
    """A client that abandons requests (ctr does, once a push is refused) hangs up while the error
    answer goes out. Sanic then ran the exception handlers again on the dead stream and logged an
    ERROR with a traceback and a WARNING; now the request is logged 499 and nothing else."""
    from adapters.auth.htpasswd import hash_password, write_users

    htpasswd = str(tmp_path / "htpasswd")
    write_users(htpasswd, {"alice": hash_password("alices-password", 4)})
    server = start_tls_server(tmp_path, pki, workers=1, REGISTRY_AUTH="htpasswd", REGISTRY_AUTH_HTPASSWD=htpasswd)
    context = ssl.create_default_context(cafile=pki.ca_path)
    authorization = "Basic " + __import__("base64").b64encode(b"alice:alices-password").decode()
    try:
        for i in range(400):
            with socket.create_connection(("127.0.0.1", server.port)) as raw:
                if i % 2:  # half of them reset the connection rather than close it
                    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                with context.wrap_socket(raw, server_hostname="localhost") as s:
                    s.sendall(f"HEAD /v2/x/y/blobs/sha256:{'a' * 64} HTTP/1.1\r\nHost: x\r\n"
                              f"Authorization: {authorization}\r\n\r\n".encode())
                    time.sleep(0.0005 * (i % 40))
        time.sleep(0.5)
    finally:
        stop(server)
    assert problems(server) == []
