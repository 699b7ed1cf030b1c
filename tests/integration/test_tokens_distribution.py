"""Differential test: Distribution 2.8.2 configured to trust our token endpoint's key accepts the tokens
we issue, for exactly the scopes we put in them, and both registries refuse the same tampered tokens.
So our tokens are the Docker token spec's tokens (kid in libtrust form, claims, signature), not only
something our own verifier agrees with."""

from __future__ import annotations

import base64
import datetime
import json
import subprocess
import time

import httpx
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from adapters.auth.htpasswd import hash_password, write_users
from domain.manifest import OCI_MANIFEST
from tests.support import free_port, make_image, require_tool, sha256, start_server, stop_process_group, wait_for_answer

pytestmark = pytest.mark.distribution
RULES = """
[[repositories]]
match = ["team-a/**"]
pull = ["alice"]
push = ["alice"]
"""


def signing_pair(directory) -> tuple[str, str, rsa.RSAPrivateKey]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "token signer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30)).sign(key, hashes.SHA256()))
    key_path, cert_path = directory / "signer.key", directory / "signer.crt"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(key_path), str(cert_path), key


def test_distribution_accepts_our_tokens_and_refuses_the_same_forgeries(tmp_path):
    require_tool("docker-registry")
    key_path, cert_path, key = signing_pair(tmp_path)
    htpasswd = str(tmp_path / "htpasswd")
    write_users(htpasswd, {"alice": hash_password("alices-password", 4)})
    (tmp_path / "rules.toml").write_text(RULES)
    ours = start_server(str(tmp_path / "ours"), str(tmp_path / "ours.log"), REGISTRY_AUTH="token",
                        REGISTRY_AUTH_HTPASSWD=htpasswd, REGISTRY_AUTH_RULES=str(tmp_path / "rules.toml"),
                        REGISTRY_AUTH_TOKEN_SIGNING_KEY=key_path, REGISTRY_AUTH_TOKEN_SERVICE="svc",
                        REGISTRY_AUTH_TOKEN_ISSUER="issuer", REGISTRY_WORKERS="1")
    port = free_port()
    config = tmp_path / "distribution.yml"
    config.write_text(f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
                      f"    rootdirectory: {tmp_path}/dist\nhttp:\n  addr: 127.0.0.1:{port}\n"
                      f"auth:\n  token:\n    realm: {ours.url}/auth/token\n"
                      f"    service: svc\n    issuer: issuer\n    rootcertbundle: {cert_path}\n")
    with open(tmp_path / "distribution.log", "wb") as log:
        distribution = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=log,
                                        start_new_session=True)
    dist_url = f"http://127.0.0.1:{port}"
    try:
        wait_for_answer(f"{dist_url}/v2/", 20, f"see {tmp_path}/distribution.log")

        def token(*scopes: str) -> str:
            r = httpx.get(f"{ours.url}/auth/token", params={"service": "svc", "scope": list(scopes)},
                          auth=("alice", "alices-password"))
            assert r.status_code == 200, r.text
            return r.json()["token"]

        def status(url: str, method: str, path: str, bearer: str | None, **kwargs) -> int:
            headers = {"Accept": OCI_MANIFEST}  # Distribution hides OCI manifests from clients not asking
            if bearer:
                headers["Authorization"] = f"Bearer {bearer}"
            return httpx.request(method, url + path, headers=headers, **kwargs).status_code

        # The challenge: the same realm, service and scope from both.
        for url in (ours.url, dist_url):
            challenge = httpx.get(f"{url}/v2/team-a/app/tags/list").headers["WWW-Authenticate"]
            assert f'realm="{ours.url}/auth/token"' in challenge and 'service="svc"' in challenge
            assert 'scope="repository:team-a/app:pull"' in challenge

        # A push with one token, to both registries, and reads back.
        push_token = token("repository:team-a/app:pull,push")
        image = make_image("tokens-distribution")
        for url in (ours.url, dist_url):
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {push_token}"}) as client:
                for blob in image.blobs():  # a session and a PUT, as Distribution takes them
                    session = client.post("/v2/team-a/app/blobs/uploads/")
                    assert session.status_code == 202, session.text
                    location = session.headers["Location"]
                    location += ("&" if "?" in location else "?") + f"digest={sha256(blob)}"
                    done = client.put(location, content=blob)
                    assert done.status_code == 201, done.text
                assert client.put("/v2/team-a/app/manifests/1", content=image.manifest,
                                  headers={"Content-Type": OCI_MANIFEST}).status_code == 201
                assert client.get("/v2/team-a/app/tags/list").json()["tags"] == ["1"]

        pull_only = token("repository:team-a/app:pull", "repository:team-b/app:pull")
        claims = jwt.decode(pull_only, options={"verify_signature": False})
        assert claims["access"] == [{"type": "repository", "name": "team-a/app", "actions": ["pull"]}]
        header, payload, signature = pull_only.split(".")

        def tampered(change) -> str:
            body = json.loads(base64.urlsafe_b64decode(payload + "=="))
            change(body)
            encoded = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
            return f"{header}.{encoded}.{signature}"

        kid = jwt.get_unverified_header(pull_only)["kid"]
        now = int(time.time())
        base_claims = {"iss": "issuer", "aud": "svc", "sub": "alice", "iat": now, "nbf": now, "exp": now + 300}
        escalated = [{"type": "repository", "name": "team-a/app", "actions": ["pull", "push"]}]
        cases = {
            "pull with a pull token": ("GET", "/v2/team-a/app/manifests/1", pull_only, 200),
            "push with a pull token": ("POST", "/v2/team-a/app/blobs/uploads/", pull_only, 401),
            "another repository": ("GET", "/v2/team-b/app/tags/list", pull_only, 401),
            "push added to the claim": ("POST", "/v2/team-a/app/blobs/uploads/",
                                        tampered(lambda c: c.update(access=escalated)), 401),
            "another audience": ("GET", "/v2/team-a/app/tags/list", tampered(lambda c: c.update(aud="x")), 401),
            "alg none": ("GET", "/v2/team-a/app/tags/list",
                         jwt.encode({**base_claims, "access": escalated}, None, algorithm="none",
                                    headers={"kid": kid}), 401),
            "expired": ("GET", "/v2/team-a/app/tags/list",
                        jwt.encode({**base_claims, "iat": now - 900, "nbf": now - 900, "exp": now - 600,
                                    "access": escalated}, key, algorithm="RS256", headers={"kid": kid}), 401),
            "our key, another issuer": ("GET", "/v2/team-a/app/tags/list",
                                        jwt.encode({**base_claims, "iss": "evil", "access": escalated}, key,
                                                   algorithm="RS256", headers={"kid": kid}), 401),
            "signed by our key by hand": ("GET", "/v2/team-a/app/tags/list",
                                          jwt.encode({**base_claims, "access": escalated}, key, algorithm="RS256",
                                                     headers={"kid": kid}), 200),
        }
        answers = {name: (status(ours.url, method, path, bearer), status(dist_url, method, path, bearer))
                   for name, (method, path, bearer, _) in cases.items()}
        expected = {name: (want, want) for name, (_, _, _, want) in cases.items()}
        assert answers == expected
    finally:
        stop_process_group(distribution)
        ours.stop()
