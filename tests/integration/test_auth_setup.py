"""Setting access control up as an operator does: users managed with the CLI while the registry runs,
client certificates as logins judged by the rules, signing-key rotation, start-up errors."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time

import httpx
import jwt
import pytest
import trustme

from adapters.auth.rules_file import EXAMPLE
from tests.integration.test_tls import pki, start_tls_server, stop  # noqa: F401  (pki is a fixture)
from tests.support import REPO_ROOT, make_image, push_image, start_server


def cli(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "entrypoints.cli", *args], input=stdin, capture_output=True,
                          text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": os.path.join(REPO_ROOT, "src"), **(env or {})})


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_users_added_and_removed_with_the_cli_while_serving(tmp_path):
    htpasswd = str(tmp_path / "htpasswd")
    assert cli("users", "add", "alice", "--file", htpasswd, "--rounds", "4", stdin="first-password\n").returncode == 0
    server = start_server(str(tmp_path / "data"), str(tmp_path / "log"), REGISTRY_AUTH="htpasswd",
                          REGISTRY_AUTH_HTPASSWD=htpasswd, REGISTRY_WORKERS="2")
    try:
        assert httpx.get(f"{server.url}/v2/", headers=basic("alice", "first-password")).status_code == 200
        assert httpx.get(f"{server.url}/v2/", headers=basic("bob", "bobs-password")).status_code == 401
        added = cli("users", "add", "bob", "--file", htpasswd, "--rounds", "4", stdin="bobs-password\n")
        assert added.returncode == 0 and "bobs-password" not in added.stdout + added.stderr
        changed = cli("users", "add", "alice", "--file", htpasswd, "--rounds", "4", stdin="second-password\n")
        assert "changed the password" in changed.stdout
        time.sleep(1.2)  # the file is looked at once a second
        for _ in range(4):  # both workers
            assert httpx.get(f"{server.url}/v2/", headers=basic("bob", "bobs-password")).status_code == 200
            assert httpx.get(f"{server.url}/v2/", headers=basic("alice", "second-password")).status_code == 200
            assert httpx.get(f"{server.url}/v2/", headers=basic("alice", "first-password")).status_code == 401
        assert cli("users", "remove", "bob", "--file", htpasswd).returncode == 0
        assert cli("users", "list", "--file", htpasswd).stdout.split() == ["alice"]
        time.sleep(1.2)
        for _ in range(4):  # the remembered successful check does not outlive the user
            assert httpx.get(f"{server.url}/v2/", headers=basic("bob", "bobs-password")).status_code == 401
        # A file damaged while serving: logged, the last good users stay.
        with open(htpasswd, "a") as f:
            f.write("mallory:plaintext\n")
        time.sleep(1.2)
        assert httpx.get(f"{server.url}/v2/", headers=basic("alice", "second-password")).status_code == 200
    finally:
        server.stop()
    log = server.log()
    assert "kept the previous htpasswd file" in log and "mallory" in log and "not bcrypt" in log
    assert "second-password" not in log and "bobs-password" not in log
    assert os.stat(htpasswd).st_mode & 0o077 == 0


def test_the_cli_refuses_bad_input_and_never_takes_a_password_from_argv(tmp_path):
    htpasswd = str(tmp_path / "htpasswd")
    assert cli("users", "add", "alice", "--file", htpasswd, stdin="short\n").returncode != 0
    assert cli("users", "add", "bad name", "--file", htpasswd, stdin="long-enough-1\n").returncode != 0
    assert cli("users", "add", "alice", "long-enough-1", "--file", htpasswd).returncode != 0  # no argv password
    assert not os.path.exists(htpasswd)
    assert "REGISTRY_AUTH_HTPASSWD" in cli("users", "list").stderr
    rules = cli("config", "--rules").stdout
    assert rules == EXAMPLE
    assert "REGISTRY_AUTH=" in cli("config").stdout


@pytest.mark.parametrize(("env", "message"), [
    ({"REGISTRY_AUTH": "htpasswd"}, "REGISTRY_AUTH_HTPASSWD"),
    ({"REGISTRY_AUTH": "token", "REGISTRY_AUTH_TOKEN_PUBLIC_KEYS": "/k.pem"}, "REGISTRY_AUTH_TOKEN_REALM"),
    ({"REGISTRY_AUTH": "htpasswd", "REGISTRY_AUTH_HTPASSWD": "/nonexistent/htpasswd"}, "/nonexistent/htpasswd"),
    ({"REGISTRY_AUTH": "htpasswd", "REGISTRY_AUTH_HTPASSWD": "{htpasswd}", "REGISTRY_AUTH_RULES": "{bad_rules}"},
     "names group 'ghosts'"),
])
def test_start_up_refuses_an_incomplete_or_broken_setup(tmp_path, env, message):
    (tmp_path / "htpasswd").write_text("")
    (tmp_path / "rules.toml").write_text("[[repositories]]\nmatch = ['a/*']\npull = ['@ghosts']\n")
    env = {k: v.format(htpasswd=tmp_path / "htpasswd", bad_rules=tmp_path / "rules.toml") for k, v in env.items()}
    result = cli("serve", env={"STORAGE_ROOT": str(tmp_path / "data"), "PORT": "1", **env})
    assert result.returncode != 0
    assert message in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_client_certificates_log_in_as_their_cn_and_the_rules_judge_them(tmp_path, pki):  # noqa: F811
    clients_ca = trustme.CA()
    ca_path = os.path.join(pki.directory, "clients-ca.pem")
    clients_ca.cert_pem.write_to_path(ca_path)
    rules = tmp_path / "rules.toml"
    rules.write_text(EXAMPLE)
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("")
    server = start_tls_server(tmp_path, pki, workers=1, REGISTRY_TLS_CLIENT_CA=ca_path, REGISTRY_AUTH="htpasswd",
                              REGISTRY_AUTH_HTPASSWD=str(htpasswd), REGISTRY_AUTH_RULES=str(rules))

    def client(cn: str | None) -> httpx.Client:
        context = pki.client_context()
        if cn:
            clients_ca.issue_cert(f"{cn}.clients.example", common_name=cn).configure_cert(context)
        return httpx.Client(base_url=server.url, verify=context)

    try:
        image = make_image("certs")
        with client("alice") as alice:
            assert alice.get("/v2/").status_code == 200
            assert push_image(alice, "team-a/app", image, "1").status_code == 201
            assert alice.get("/v2/team-b/app/tags/list").status_code == 403
        with client("carol") as carol:  # not in team-a
            assert carol.get("/v2/team-a/app/manifests/1").status_code == 403
            assert carol.get("/v2/library/x/tags/list").status_code == 404  # anyone may pull library/*
        with client(None) as nobody:
            response = nobody.get("/v2/team-a/app/manifests/1")
            assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Basic")
    finally:
        stop(server)
    users = {r.get("user") for r in _access_lines(server)}
    assert {"alice", "carol", None} <= users


def _access_lines(server) -> list[dict]:
    import orjson
    lines = []
    for line in server.log().splitlines():
        if line.startswith("{"):
            record = orjson.loads(line)
            if record.get("logger") == "myregistry.access":
                lines.append(record)
    return lines


def test_rotating_the_signing_key_keeps_tokens_in_use_valid(tmp_path):
    htpasswd = str(tmp_path / "htpasswd")
    assert cli("users", "add", "alice", "--file", htpasswd, "--rounds", "4", stdin="alices-password\n").returncode == 0
    env = {"REGISTRY_AUTH": "token", "REGISTRY_AUTH_HTPASSWD": htpasswd}
    server = start_server(str(tmp_path / "data"), str(tmp_path / "log"), REGISTRY_WORKERS="2", **env)
    try:
        def token() -> str:
            r = httpx.get(f"{server.url}/auth/token", params={"service": "myregistry", "scope": "registry:catalog:*"},
                          headers=basic("alice", "alices-password"))
            assert r.status_code == 200, r.text
            return r.json()["token"]

        before = token()
        shown = cli("token-key", "show", env={**env, "STORAGE_ROOT": str(tmp_path / "data")})
        assert shown.returncode == 0 and jwt.get_unverified_header(before)["kid"] in shown.stdout
        rotated = cli("token-key", "rotate", env={**env, "STORAGE_ROOT": str(tmp_path / "data")})
        assert rotated.returncode == 0, rotated.stderr
        time.sleep(10.5)  # workers look at the key ring every 10 s
        after = token()
        assert jwt.get_unverified_header(after)["kid"] != jwt.get_unverified_header(before)["kid"]
        for bearer in (before, after):
            for _ in range(4):
                r = httpx.get(f"{server.url}/v2/_catalog", headers={"Authorization": f"Bearer {bearer}"})
                assert r.status_code == 200, r.text
    finally:
        server.stop()


def test_the_log_says_who_got_tokens_and_who_failed_to_log_in(tmp_path):
    htpasswd = str(tmp_path / "htpasswd")
    assert cli("users", "add", "bob", "--file", htpasswd, "--rounds", "4", stdin="bobs-password\n").returncode == 0
    server = start_server(str(tmp_path / "data"), str(tmp_path / "log"), REGISTRY_AUTH="token",
                          REGISTRY_AUTH_HTPASSWD=htpasswd, REGISTRY_AUTH_LOGIN_BURST="3", REGISTRY_WORKERS="1")
    try:
        url = f"{server.url}/auth/token"
        got = httpx.get(url, params={"service": "myregistry"}, headers=basic("bob", "bobs-password"))
        assert got.status_code == 200
        assert httpx.post(url, data={"grant_type": "password", "username": "bob",
                                     "password": "bobs-password"}).status_code == 200
        statuses = [httpx.get(url, headers=basic("bob", f"guess-{i}")).status_code for i in range(5)]
        assert statuses == [401, 401, 401, 429, 429]
    finally:
        server.stop()
    lines = [r for r in _access_lines(server) if r["path"] == "/auth/token"]
    assert [(r["status"], r.get("user"), r.get("login_failed")) for r in lines] == [
        (200, "bob", None), (200, "bob", None)] + [(401, None, "bob")] * 3 + [(429, None, "bob")] * 2
    warnings = [line for line in server.log().splitlines() if '"level":"WARNING"' in line]
    assert len(warnings) == 1 and "'bob'" in warnings[0] and "127.0.0.1" in warnings[0]
    assert "guess-" not in server.log()


def test_empty_basic_credentials_are_an_anonymous_caller_at_the_token_endpoint_too(tmp_path):
    """containers/image sends `Basic Og==` (empty user and password) when it has no credentials: the
    registry treats it as anonymous, and so must the token endpoint (it answered 401 before)."""
    htpasswd = str(tmp_path / "htpasswd")
    assert cli("users", "add", "bob", "--file", htpasswd, "--rounds", "4", stdin="bobs-password\n").returncode == 0
    (tmp_path / "rules.toml").write_text(EXAMPLE)
    server = start_server(str(tmp_path / "data"), str(tmp_path / "log"), REGISTRY_AUTH="token",
                          REGISTRY_AUTH_HTPASSWD=htpasswd, REGISTRY_AUTH_RULES=str(tmp_path / "rules.toml"),
                          REGISTRY_WORKERS="1")
    try:
        scope = {"service": "myregistry", "scope": ["repository:library/x:pull,push", "repository:team-a/x:pull"]}
        r = httpx.get(f"{server.url}/auth/token", params=scope, headers={"Authorization": "Basic Og=="})
        assert r.status_code == 200, r.text
        claims = jwt.decode(r.json()["token"], options={"verify_signature": False})
        assert claims["sub"] == "" and claims["access"] == [
            {"type": "repository", "name": "library/x", "actions": ["pull"]}]
        assert httpx.get(f"{server.url}/auth/token", params=scope, headers=basic("bob", "wrong")).status_code == 401
    finally:
        server.stop()
