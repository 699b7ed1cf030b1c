"""No credential reaches the server's log: not an Authorization header, not a token in a query string or
a path, whatever the request and its answer. The access line names the user (none here: no access
control)."""

from __future__ import annotations

import httpx
import orjson

from tests.support import start_server

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLWJ5dGVzLXRoYXQtbG9vaw"
BASIC = "YWxpY2U6aHVudGVyMi1zZWNyZXQ="  # alice:hunter2-secret


def test_no_credential_is_logged(tmp_path):
    server = start_server(str(tmp_path / "data"), str(tmp_path / "server.log"), REGISTRY_WORKERS="1",
                          REGISTRY_FSYNC="false")
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            for auth in (f"Bearer {JWT}", f"Basic {BASIC}"):
                c.get("/v2/", headers={"Authorization": auth, "X-Request-ID": "secrets-1"})
                c.get("/v2/app/manifests/latest", headers={"Authorization": auth})
            c.get("/v2/_catalog", params={"access_token": JWT, "password": "hunter2-secret", "n": "5"})
            c.get(f"/v2/app/manifests/{JWT}")  # a token where a tag goes: 404, and logged without it
            c.get(f"/v2/{JWT}/tags/list", params={"refresh_token": "opaque-refresh-secret"})  # 400: not a name
            c.get("/v2/app/manifests/BEARER%20opaque-upper-case-secret")  # 404, logged without it
            # An X-Request-ID shaped like a token is neither logged nor echoed: the server makes its own.
            r = c.get("/v2/", headers={"X-Request-ID": JWT})
            assert r.headers["X-Request-ID"] != JWT and len(r.headers["X-Request-ID"]) == 32
            for method in ("PROPFIND", JWT):  # odd methods: answered 405, logged without the token
                c.request(method, "/v2/")
    finally:
        server.stop()
    log = server.log()
    for secret in (JWT, BASIC, "hunter2-secret", "opaque-refresh-secret", "opaque-upper-case-secret"):
        assert secret not in log, f"{secret[:12]}... is in the log"
    access = [orjson.loads(line) for line in log.splitlines() if '"message":"request"' in line]
    assert len(access) >= 7
    assert all("user" in line and line["user"] is None for line in access)
    catalog = next(line for line in access if line["path"] == "/v2/_catalog")
    assert "n=5" in catalog["query"] and "[redacted]" in catalog["query"]
