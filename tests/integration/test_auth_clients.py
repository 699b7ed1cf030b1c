"""Real clients with credentials, over TLS with a CA made here (trustme), against a live `myregistry serve`
in each access mode: htpasswd (HTTP Basic) and token (the built-in /auth/token). Every test runs once per
mode, against one server per mode (module-scoped).

- docker (the sandboxed dockerd of tests/dockerd.py): login, push, pull after rmi, logout, then refused;
  a reader refused a push; an anonymous pull of a public repository (token mode only: see that test); a
  wrong password; and without the CA under /etc/docker/certs.d the login fails on the certificate.
- skopeo --creds and --cert-dir; podman login/push/pull/logout; buildah push --creds; containerd's
  `ctr --user --tlscacert`; oras (Python) with the CA bundle.
- Anonymous: skopeo pulls library/* without credentials; pushes and reads of team/** are refused.
- What each client prints when refused is asserted: that is what a user reads.

Users and rules (RULES): alice writes library/* and team/**, bob only reads team/**, admin is admin; anyone
may pull library/*. Passwords are bcrypt with 4 rounds (fast logins).

Docker treats every registry on 127.0.0.0/8 as insecure and would skip certificate checks there, so the
server listens on this machine's first non-loopback IPv4 address and every client uses that address."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import re
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import httpx
import pytest

from adapters.auth.htpasswd import hash_password, write_users
from tests.dockerd import DockerEngine, sandboxed_dockerd
from tests.integration.test_clients import (
    containerd,  # noqa: F401  (a module-scoped fixture)
    file_in_layer,
)
from tests.integration.test_docker import docker_archive, payload
from tests.support import (
    IN_CI,
    REPO_ROOT,
    Server,
    free_port,
    make_image,
    require_tool,
    scratch_build_context,
    sha256,
    wait_until_up,
    write_layout,
)

pytestmark = pytest.mark.clients

PASSWORDS = {"alice": "alice-secret-1", "bob": "bob-secret-1", "admin": "admin-secret-1"}
RULES = """\
admins = ["admin"]

[groups]
writers = ["alice"]

[[repositories]]
match = ["library/*"]
pull = ["anonymous"]
push = ["@writers"]

[[repositories]]
match = ["team/**"]
pull = ["alice", "bob"]
push = ["@writers"]
delete = ["alice"]
"""
MANIFEST_ACCEPT = ", ".join(["application/vnd.oci.image.manifest.v1+json",
                             "application/vnd.docker.distribution.manifest.v2+json",
                             "application/vnd.oci.image.index.v1+json",
                             "application/vnd.docker.distribution.manifest.list.v2+json"])


# --- the address, the PKI, the servers --------------------------------------------------------------------

def host_address() -> str | None:
    """This machine's first non-loopback IPv4 address (SIOCGIFADDR on each interface), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue  # no IPv4 address on this interface
            address = socket.inet_ntoa(packed[20:24])
            if not address.startswith("127."):
                return address
    return None


@dataclass
class Pki:
    ca: str         # the CA certificate (PEM): what clients trust
    cert_dir: str   # a directory holding only ca.crt (skopeo, podman, buildah --cert-dir)
    cert: str
    key: str


@pytest.fixture(scope="module")
def address() -> str:
    found = host_address()
    if found is None:
        message = ("no non-loopback IPv4 address: docker treats 127.0.0.0/8 as insecure (no certificate "
                   "check), so these tests need another address")
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(scope="module")
def pki(tmp_path_factory, address) -> Pki:
    import trustme

    base = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    leaf = ca.issue_cert(address, "127.0.0.1", "localhost")
    paths = Pki(str(base / "ca.pem"), str(base / "certs"), str(base / "cert.pem"), str(base / "key.pem"))
    ca.cert_pem.write_to_path(paths.ca)
    os.makedirs(paths.cert_dir)
    ca.cert_pem.write_to_path(os.path.join(paths.cert_dir, "ca.crt"))
    leaf.cert_chain_pems[0].write_to_path(paths.cert)
    leaf.private_key_pem.write_to_path(paths.key)
    return paths


@pytest.fixture(scope="module")
def auth_files(tmp_path_factory) -> tuple[str, str]:
    base = tmp_path_factory.mktemp("auth")
    write_users(str(base / "htpasswd"), {user: hash_password(pw, 4) for user, pw in PASSWORDS.items()})
    (base / "rules.toml").write_text(RULES)
    return str(base / "htpasswd"), str(base / "rules.toml")


def start_tls_server(base, address: str, pki: Pki, **env: str) -> Server:
    """`myregistry serve` with TLS on `address`, up when /health/live answers over verified TLS."""
    port = free_port()
    environment = {**os.environ, "PORT": str(port), "STORAGE_ROOT": str(base / "data"), "REGISTRY_HOST": address,
                   "REGISTRY_TLS_CERT": pki.cert, "REGISTRY_TLS_KEY": pki.key,
                   "PYTHONPATH": os.path.join(REPO_ROOT, "src"), **env}
    log_path = str(base / "server.log")
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "entrypoints.cli", "serve"], env=environment,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(f"https://{address}:{port}", port, str(base / "data"), process, log_path)
    server.host = f"{address}:{port}"
    return wait_until_up(server, 30, ssl.create_default_context(cafile=pki.ca))


@pytest.fixture(scope="module", params=["htpasswd", "token"])
def registry(request, tmp_path_factory, address, pki, auth_files) -> Server:
    """A TLS registry in the mode of the parameter; two workers, so a token one signs another checks."""
    htpasswd, rules = auth_files
    base = tmp_path_factory.mktemp(f"registry-{request.param}")
    server = start_tls_server(base, address, pki, REGISTRY_AUTH=request.param, REGISTRY_AUTH_HTPASSWD=htpasswd,
                              REGISTRY_AUTH_RULES=rules, REGISTRY_WORKERS="2")
    server.mode = request.param
    yield server
    server.stop()


class RegistryAuth(httpx.Auth):
    """Basic, or a bearer token from the challenge's realm for the challenge's scope: how a client logs in."""

    requires_response_body = True

    def __init__(self, user: str, password: str) -> None:
        self.basic = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def auth_flow(self, request):
        response = yield request
        challenge = response.headers.get("www-authenticate", "")
        if response.status_code != 401:
            return
        if challenge.startswith("Basic"):
            request.headers["Authorization"] = self.basic
        else:
            params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
            token = yield httpx.Request("GET", params.pop("realm"), headers={"Authorization": self.basic},
                                        params={k: v for k, v in params.items() if k in ("service", "scope")})
            assert token.status_code == 200, token.text
            request.headers["Authorization"] = "Bearer " + token.json()["token"]
        yield request


@pytest.fixture(scope="module")
def api(registry, pki):
    """The admin, over the API: checks what the clients stored."""
    with httpx.Client(base_url=registry.url, verify=ssl.create_default_context(cafile=pki.ca), timeout=30,
                      auth=RegistryAuth("admin", PASSWORDS["admin"])) as client:
        yield client


def manifest_of(api: httpx.Client, repo: str, reference: str) -> httpx.Response:
    r = api.get(f"/v2/{repo}/manifests/{reference}", headers={"Accept": MANIFEST_ACCEPT})
    assert r.status_code == 200, r.text
    return r


def blob_of(api: httpx.Client, repo: str, digest: str) -> bytes:
    r = api.get(f"/v2/{repo}/blobs/{digest}", follow_redirects=True)
    assert r.status_code == 200, r.text
    return r.content


def creds(user: str) -> str:
    return f"{user}:{PASSWORDS[user]}"


# --- docker -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def docker() -> DockerEngine:
    with sandboxed_dockerd() as engine:
        yield engine


@pytest.fixture(scope="module")
def docker_ca(registry, pki) -> str:
    """dockerd trusts the test CA for this registry (and only for it) while the module's tests run; what
    this fixture created under /etc/docker is removed afterwards."""
    directory = f"/etc/docker/certs.d/{registry.host}"
    created = [d for d in ("/etc/docker", "/etc/docker/certs.d", directory) if not os.path.isdir(d)]
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "ca.crt")
    shutil.copyfile(pki.ca, path)
    yield path
    shutil.rmtree(directory, ignore_errors=True)
    for d in reversed(created[:-1]):
        with contextlib.suppress(OSError):
            os.rmdir(d)  # only if empty


def docker_load(docker: DockerEngine, tmp_path, ref: str, seed: str) -> str:
    """`docker load` a one-layer image unique to `seed`, named `ref`; its Id."""
    archive, config = docker_archive(ref, [{f"app/{seed}.bin": payload(seed)}])
    (tmp_path / f"{seed}.tar").write_bytes(archive)
    docker("load", "-i", str(tmp_path / f"{seed}.tar"))
    return sha256(config)


def docker_login(docker: DockerEngine, registry: Server, user: str, password: str | None = None):
    return docker.run("login", registry.host, "-u", user, "--password-stdin",
                      stdin=(password or PASSWORDS[user]).encode())


def text(result: subprocess.CompletedProcess) -> str:
    return (result.stderr + result.stdout).decode(errors="replace")


def test_docker_login_push_pull_logout(docker, docker_ca, registry, api, tmp_path):
    ref = f"{registry.host}/team/docker-app:1"
    image_id = docker_load(docker, tmp_path, ref, f"docker-app-{registry.mode}")
    login = docker_login(docker, registry, "alice")
    assert login.returncode == 0 and "Login Succeeded" in text(login), text(login)
    with open(os.path.join(docker.env["DOCKER_CONFIG"], "config.json")) as f:
        assert registry.host in json.load(f)["auths"]
    out = docker("push", ref)
    digest = re.search(r"digest: (sha256:[0-9a-f]{64})", out).group(1)
    r = manifest_of(api, "team/docker-app", "1")
    assert r.headers["Docker-Content-Digest"] == digest and r.json()["config"]["digest"] == image_id
    docker("rmi", ref)
    assert not docker.has_image(image_id)
    docker("pull", ref)
    assert docker.inspect(ref)["Id"] == image_id

    docker("logout", registry.host)
    with open(os.path.join(docker.env["DOCKER_CONFIG"], "config.json")) as f:
        assert registry.host not in json.load(f).get("auths", {})
    again = f"{registry.host}/team/docker-app:2"
    docker_load(docker, tmp_path, again, f"docker-app-2-{registry.mode}")
    refused = docker.run("push", again)
    assert refused.returncode != 0
    print(f"[{registry.mode}] docker push after logout:", text(refused).strip())
    # Basic: docker sends nothing without credentials. Token: it got an anonymous token, and the
    # challenge's error_description says what is missing.
    expected = {"htpasswd": "no basic auth credentials",
                "token": "denied: authentication required: log in to push repository team/docker-app"}
    assert expected[registry.mode] in text(refused), text(refused)
    assert api.get("/v2/team/docker-app/manifests/2").status_code == 404
    docker("rmi", ref)
    refused = docker.run("pull", ref)
    assert refused.returncode != 0
    print(f"[{registry.mode}] docker pull after logout:", text(refused).strip())
    expected = {"htpasswd": "no basic auth credentials",
                "token": "authentication required: log in to pull repository team/docker-app"}
    assert expected[registry.mode] in text(refused), text(refused)


def test_docker_reader_may_pull_but_not_push(docker, docker_ca, registry, api, tmp_path):
    ref = f"{registry.host}/team/docker-shared:1"
    image_id = docker_load(docker, tmp_path, ref, f"docker-shared-{registry.mode}")
    assert docker_login(docker, registry, "alice").returncode == 0
    docker("push", ref)
    docker("logout", registry.host)
    docker("rmi", ref)

    assert docker_login(docker, registry, "bob").returncode == 0
    try:
        docker("pull", ref)
        assert docker.inspect(ref)["Id"] == image_id
        mine = f"{registry.host}/team/docker-bob:1"
        docker("tag", ref, mine)
        refused = docker.run("push", mine)
        assert refused.returncode != 0
        print(f"[{registry.mode}] docker push by a reader:", text(refused).strip())
        assert "denied: bob may not push repository team/docker-bob" in text(refused), text(refused)
        assert api.get("/v2/team/docker-bob/manifests/1").status_code == 404
    finally:
        docker("logout", registry.host)


def test_docker_anonymous_pull_of_a_public_repository(docker, docker_ca, registry, api, tmp_path):
    """Token mode: docker pulls library/* without a login (an anonymous token). Basic mode: docker cannot,
    whatever the server allows: once GET /v2/ has answered with a Basic challenge, docker's client refuses
    to send any request without credentials ("no basic auth credentials", before it reaches the server);
    and /v2/ must challenge, or `docker login` would accept any password and push would send none."""
    ref = f"{registry.host}/library/docker-public:1"
    image_id = docker_load(docker, tmp_path, ref, f"docker-public-{registry.mode}")
    assert docker_login(docker, registry, "alice").returncode == 0
    docker("push", ref)
    docker("logout", registry.host)
    docker("rmi", ref)
    if registry.mode == "token":
        docker("pull", ref)  # no credentials at all
        assert docker.inspect(ref)["Id"] == image_id
    else:
        result = docker.run("pull", ref)
        print(f"[{registry.mode}] docker anonymous pull of library/*:", text(result).strip())
        assert result.returncode != 0 and "no basic auth credentials" in text(result), text(result)


def test_docker_wrong_password_and_untrusted_certificate(docker, docker_ca, registry):
    wrong = docker_login(docker, registry, "alice", "not-the-password")
    assert wrong.returncode != 0
    print(f"[{registry.mode}] docker login with a wrong password:", text(wrong).strip())
    expected = {"htpasswd": "401 Unauthorized", "token": "unauthorized: incorrect user name or password"}
    assert expected[registry.mode] in text(wrong), text(wrong)
    # Without the CA under certs.d, dockerd refuses the server's certificate: it really verifies it.
    os.rename(docker_ca, docker_ca + ".off")
    try:
        untrusted = docker_login(docker, registry, "alice")
    finally:
        os.rename(docker_ca + ".off", docker_ca)
    assert untrusted.returncode != 0
    print(f"[{registry.mode}] docker login without the CA:", text(untrusted).strip())
    assert "x509: certificate signed by unknown authority" in text(untrusted), text(untrusted)
    assert docker_login(docker, registry, "alice").returncode == 0
    docker("logout", registry.host)


# --- skopeo, podman, buildah -----------------------------------------------------------------------------

@pytest.fixture
def containers(tmp_path):
    """podman, buildah and skopeo with vfs storage and their own auth file and HOME in a temp dir, so
    neither the host's images nor any credentials it holds are used."""
    root = tmp_path / "root"
    run = tempfile.mkdtemp(prefix="mr-run-", dir="/tmp")  # podman refuses a runroot over 50 characters
    home = tmp_path / "home"
    home.mkdir()
    conf = tmp_path / "storage.conf"
    conf.write_text(f'[storage]\ndriver = "vfs"\nrunroot = "{run}"\ngraphroot = "{root}"\n')
    (tmp_path / "auth.json").write_text('{"auths": {}}')  # buildah refuses an auth file that does not exist
    env = {"CONTAINERS_STORAGE_CONF": str(conf), "REGISTRY_AUTH_FILE": str(tmp_path / "auth.json"),
           "HOME": str(home), "DOCKER_CONFIG": str(home / ".docker")}
    flags = ["--storage-driver", "vfs", "--root", str(root), "--runroot", run]
    yield env, flags
    shutil.rmtree(run, ignore_errors=True)


def run(*args: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env={**os.environ, **env})


def sh(*args: str, env: dict, timeout: float = 300) -> str:
    result = run(*args, env=env, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}"
    return result.stdout


def refused(*args: str, env: dict, label: str) -> str:
    result = run(*args, env=env)
    assert result.returncode != 0, f"{' '.join(args)} succeeded:\n{result.stdout[-2000:]}"
    print(f"{label}: {' | '.join(result.stderr.strip().splitlines()[-3:])}")
    return result.stderr


def blobs_of_layout(directory) -> dict[str, bytes]:
    base = os.path.join(directory, "blobs", "sha256")
    return {"sha256:" + name: open(os.path.join(base, name), "rb").read() for name in os.listdir(base)}


def test_skopeo_creds_push_and_pull(registry, api, pki, containers, tmp_path):
    require_tool("skopeo")
    env, _ = containers
    image = make_image(f"skopeo-auth-{registry.mode}", layers=2, layer_size=50_000)
    write_layout(str(tmp_path / "src"), image.manifest, image.blobs(), "v1")
    ref = f"docker://{registry.host}/team/skopeo"
    sh("skopeo", "copy", "--dest-creds", creds("alice"), "--dest-cert-dir", pki.cert_dir,
       f"oci:{tmp_path / 'src'}:v1", f"{ref}:v1", env=env)
    assert manifest_of(api, "team/skopeo", "v1").content == image.manifest
    raw = sh("skopeo", "inspect", "--raw", "--creds", creds("bob"), "--cert-dir", pki.cert_dir, f"{ref}:v1", env=env)
    assert raw.encode() == image.manifest
    sh("skopeo", "copy", "--src-creds", creds("bob"), "--src-cert-dir", pki.cert_dir, f"{ref}:v1",
       f"oci:{tmp_path / 'back'}:v1", env=env)
    back = blobs_of_layout(tmp_path / "back")
    for blob in [image.manifest, *image.blobs()]:
        assert back[sha256(blob)] == blob
    stderr = refused("skopeo", "copy", "--dest-creds", creds("bob"), "--dest-cert-dir", pki.cert_dir,
                     f"oci:{tmp_path / 'src'}:v1", f"{ref}:bob", env=env,
                     label=f"[{registry.mode}] skopeo push by a reader")
    assert "denied: bob may not push repository team/skopeo" in stderr
    assert api.get("/v2/team/skopeo/manifests/bob").status_code == 404
    stderr = refused("skopeo", "inspect", "--raw", "--creds", "alice:wrong-password", "--cert-dir", pki.cert_dir,
                     f"{ref}:v1", env=env, label=f"[{registry.mode}] skopeo with a wrong password")
    assert "unauthorized: incorrect user name or password" in stderr


def test_anonymous_pull_of_public_repository_and_refused_push(registry, api, pki, containers, tmp_path):
    require_tool("skopeo")
    env, _ = containers
    image = make_image(f"public-{registry.mode}", layers=1)
    write_layout(str(tmp_path / "src"), image.manifest, image.blobs(), "v1")
    public = f"docker://{registry.host}/library/public"
    sh("skopeo", "copy", "--dest-creds", creds("alice"), "--dest-cert-dir", pki.cert_dir,
       f"oci:{tmp_path / 'src'}:v1", f"{public}:v1", env=env)
    # No credentials: an anonymous pull of library/* works.
    raw = sh("skopeo", "inspect", "--raw", "--cert-dir", pki.cert_dir, f"{public}:v1", env=env)
    assert raw.encode() == image.manifest
    sh("skopeo", "copy", "--src-cert-dir", pki.cert_dir, f"{public}:v1", f"oci:{tmp_path / 'back'}:v1", env=env)
    back = blobs_of_layout(tmp_path / "back")
    for blob in [image.manifest, *image.blobs()]:
        assert back[sha256(blob)] == blob
    # An anonymous push, to the public repository or any other, is refused; team/** is not readable.
    stderr = refused("skopeo", "copy", "--dest-cert-dir", pki.cert_dir, f"oci:{tmp_path / 'src'}:v1",
                     f"{public}:anonymous", env=env, label=f"[{registry.mode}] skopeo anonymous push")
    assert "authentication required: log in to push repository library/public" in stderr
    assert api.get("/v2/library/public/manifests/anonymous").status_code == 404
    sh("skopeo", "copy", "--dest-creds", creds("alice"), "--dest-cert-dir", pki.cert_dir,
       f"oci:{tmp_path / 'src'}:v1", f"docker://{registry.host}/team/private:v1", env=env)
    stderr = refused("skopeo", "inspect", "--raw", "--cert-dir", pki.cert_dir,
                     f"docker://{registry.host}/team/private:v1", env=env,
                     label=f"[{registry.mode}] skopeo anonymous pull of a private repository")
    assert "authentication required: log in to pull repository team/private" in stderr


def test_podman_login_push_pull_logout(registry, api, pki, containers, tmp_path):
    require_tool("podman")
    env, flags = containers
    image = make_image(f"podman-auth-{registry.mode}", layers=2, layer_size=30_000)
    write_layout(str(tmp_path / "src"), image.manifest, image.blobs(), "v1")
    ref = f"{registry.host}/team/podman:v1"
    result = subprocess.run(["podman", *flags, "login", "--cert-dir", pki.cert_dir, "-u", "alice",
                             "--password-stdin", registry.host], input=PASSWORDS["alice"], capture_output=True,
                            text=True, timeout=120, env={**os.environ, **env})
    assert result.returncode == 0 and "Login Succeeded" in result.stdout, result.stderr
    assert registry.host in json.loads((tmp_path / "auth.json").read_text())["auths"]
    sh("podman", *flags, "pull", f"oci:{tmp_path / 'src'}:v1", env=env)
    sh("podman", *flags, "tag", image_id_of(flags, env), ref, env=env)
    sh("podman", *flags, "push", "--cert-dir", pki.cert_dir, ref, env=env)
    pushed = manifest_of(api, "team/podman", "v1").json()
    config = json.loads(blob_of(api, "team/podman", pushed["config"]["digest"]))
    assert config["rootfs"]["diff_ids"] == json.loads(image.config)["rootfs"]["diff_ids"]
    sh("podman", *flags, "rmi", "-a", "-f", env=env)
    sh("podman", *flags, "pull", "--cert-dir", pki.cert_dir, ref, env=env)
    digest = sh("podman", *flags, "image", "inspect", "--format", "{{.Digest}}", ref, env=env).strip()
    assert digest == sha256(manifest_of(api, "team/podman", "v1").content)
    sh("podman", *flags, "logout", registry.host, env=env)
    stderr = refused("podman", *flags, "push", "--cert-dir", pki.cert_dir, ref, f"{registry.host}/team/podman:v2",
                     env=env, label=f"[{registry.mode}] podman push after logout")
    # podman first asks whether the blobs exist (a HEAD, which needs pull and whose 401 has no body).
    expected = {"htpasswd": "unauthorized: authentication required",
                "token": "denied: authentication required: log in to pull repository team/podman"}
    assert expected[registry.mode] in stderr
    assert api.get("/v2/team/podman/manifests/v2").status_code == 404


def image_id_of(flags: list[str], env: dict) -> str:
    """The Id of the only image in this podman storage."""
    ids = sh("podman", *flags, "images", "-q", env=env).split()
    assert len(ids) == 1, ids
    return ids[0]


def test_buildah_push_with_creds(registry, api, pki, containers, tmp_path):
    require_tool("buildah")
    env, flags = containers
    data = os.urandom(100_000)
    ctx = scratch_build_context(tmp_path / "ctx", data)
    ref = f"{registry.host}/team/buildah:v1"
    sh("buildah", *flags, "bud", "--isolation", "chroot", "-t", ref, str(ctx), env=env)
    sh("buildah", *flags, "push", "--creds", creds("alice"), "--cert-dir", pki.cert_dir, ref, env=env)
    manifest = manifest_of(api, "team/buildah", "v1").json()
    layer = blob_of(api, "team/buildah", manifest["layers"][0]["digest"])
    assert file_in_layer(layer, "payload.bin") == data
    stderr = refused("buildah", *flags, "push", "--creds", creds("bob"), "--cert-dir", pki.cert_dir, ref,
                     f"docker://{registry.host}/team/buildah:bob", env=env,
                     label=f"[{registry.mode}] buildah push by a reader")
    assert "bob may not push repository team/buildah" in stderr


# --- containerd -------------------------------------------------------------------------------------------

def test_ctr_pull_and_push_with_user(registry, api, pki, containers, containerd, tmp_path):  # noqa: F811
    require_tool("skopeo")
    env, _ = containers
    image = make_image(f"ctr-auth-{registry.mode}", layers=2, layer_size=30_000)
    write_layout(str(tmp_path / "src"), image.manifest, image.blobs(), "v1")
    ref = f"{registry.host}/team/ctr:v1"
    sh("skopeo", "copy", "--dest-creds", creds("alice"), "--dest-cert-dir", pki.cert_dir,
       f"oci:{tmp_path / 'src'}:v1", f"docker://{ref}", env=env)
    log_before = len(registry.log())
    sh(*containerd, "images", "pull", "--user", creds("bob"), "--tlscacert", pki.ca, ref, env={})
    other = f"{registry.host}/team/ctr-pushed:v9"
    sh(*containerd, "images", "tag", "--force", ref, other, env={})
    sh(*containerd, "images", "push", "--user", creds("alice"), "--tlscacert", pki.ca, other, env={})
    r = manifest_of(api, "team/ctr-pushed", "v9")
    assert r.content == image.manifest and r.headers["Docker-Content-Digest"] == image.digest
    for blob in image.blobs():
        assert blob_of(api, "team/ctr-pushed", sha256(blob)) == blob
    if registry.mode == "token":  # containerd asks for tokens with the OAuth2 POST form
        posts = [json.loads(line) for line in registry.log()[log_before:].splitlines()
                 if '"path":"/auth/token"' in line and '"method":"POST"' in line]
        assert posts and all(p["status"] == 200 for p in posts), posts
    denied = f"{registry.host}/team/ctr-bob:v1"
    sh(*containerd, "images", "tag", "--force", ref, denied, env={})
    result = run(*containerd, "images", "push", "--user", creds("bob"), "--tlscacert", pki.ca, denied, env={})
    assert result.returncode != 0
    print(f"[{registry.mode}] ctr push by a reader: {result.stderr.strip()}")
    # ctr prints no response body: the status (Basic) or the challenge's error (token) is all it says.
    assert {"htpasswd": "403 Forbidden", "token": "insufficient_scope"}[registry.mode] in result.stderr
    assert api.get("/v2/team/ctr-bob/manifests/v1").status_code == 404


# --- oras (Python) ----------------------------------------------------------------------------------------

def test_oras_push_and_pull_an_artifact(registry, api, pki, tmp_path, monkeypatch):
    import oras.provider

    monkeypatch.setenv("HOME", str(tmp_path))  # no docker config of the host's user is read
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / ".docker"))
    monkeypatch.chdir(tmp_path)
    artifact = tmp_path / "artifact.bin"
    artifact.write_bytes(os.urandom(70_000))
    backend = "token" if registry.mode == "token" else "basic"

    client = oras.provider.Registry(hostname=registry.host, tls_verify=pki.ca, auth_backend=backend)
    client.auth.set_basic_auth("alice", PASSWORDS["alice"])
    if registry.mode == "token":
        # oras-py keeps the first token it gets and asks again only after a 403. Its push starts with a
        # HEAD of the blob (challenge: pull), then POSTs an upload (needs push), which a registry that
        # scopes its tokens (this one, Distribution) answers 401 insufficient_scope: oras-py resends the
        # same token and gives up. So it gets its token for pull,push first, from the same endpoint.
        from oras.auth.utils import parse_auth_header
        client.auth.token = client.auth.request_token(parse_auth_header(
            f'Bearer realm="{registry.url}/auth/token",service="myregistry",scope="repository:team/oras:pull,push"'))
        assert client.auth.token
    target = f"{registry.host}/team/oras:v1"
    response = client.push(target=target, files=["artifact.bin"])
    assert response.status_code == 201, response.text
    manifest = manifest_of(api, "team/oras", "v1").json()
    assert [layer["digest"] for layer in manifest["layers"]] == [sha256(artifact.read_bytes())]

    reader = oras.provider.Registry(hostname=registry.host, tls_verify=pki.ca, auth_backend=backend)
    reader.auth.set_basic_auth("bob", PASSWORDS["bob"])
    files = reader.pull(target=target, outdir=str(tmp_path / "out"))
    assert [open(f, "rb").read() for f in files] == [artifact.read_bytes()]


# --- last: what the server logged (this test runs after the others of its mode) --------------------------

def test_the_log_names_who_pushed_and_holds_no_secret_and_no_error(registry):
    lines = registry.log().splitlines()
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    pushes = [e for e in entries if e.get("logger") == "myregistry.access" and e.get("method") == "PUT"
              and "/manifests/" in e.get("path", "") and e.get("status") == 201]
    assert pushes and {e["user"] for e in pushes} == {"alice"}, pushes  # every push in this file is alice's
    log = registry.log()
    for secret in PASSWORDS.values():
        assert secret not in log
    assert "eyJ" not in log, "a token (base64 JSON) in the log"
    problems = [e for e in entries if e.get("level") in ("ERROR", "WARNING")]
    assert not problems, "\n".join(json.dumps(e)[:3000] for e in problems[:6])
