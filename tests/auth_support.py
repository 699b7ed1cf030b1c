"""What the access-control tests share: the users and rules they run with, the rights those rules give
(written out by hand, so the tests check the rules engine rather than repeat it), a live server in
htpasswd or token mode, and a client that logs in as docker does (Basic with every request, or the
token dance: 401 challenge, GET the realm with the challenge's scope, retry with the bearer token)."""

from __future__ import annotations

import base64
import os
import re
import socket
from dataclasses import dataclass, field

import httpx

from adapters.auth.htpasswd import hash_password, write_users
from tests.support import Server, start_server

PASSWORDS = {
    "reader": "pw-reader-1",
    "writer": "pw-writer-2",
    "deleter": "pw-deleter-3",
    "admin": "pw-admin-4",
    "other": "pw-other-5",
}
CALLERS = ("anonymous", "reader", "writer", "deleter", "admin", "other")

PRIVATE, PUBLIC, OTHERS = "team-a/app", "library/pub", "team-b/app"

RULES = """\
admins = ["admin"]

[groups]
team-a = ["reader", "writer"]

[[repositories]]
match = ["team-a/**"]
pull = ["@team-a"]
push = ["writer"]
delete = ["deleter"]

[[repositories]]
match = ["team-b/**"]
pull = ["other"]
push = ["other"]

[[repositories]]
match = ["library/**"]
pull = ["anonymous"]
push = ["writer"]
"""

# What RULES grant, by repository family. The deleter may delete in team-a without pulling there.
_RIGHTS: dict[str, dict[str, frozenset[str]]] = {
    "team-a/": {"reader": frozenset({"pull"}), "writer": frozenset({"pull", "push"}),
                "deleter": frozenset({"delete"})},
    "team-b/": {"other": frozenset({"pull", "push"})},
    "library/": {c: frozenset({"pull"}) for c in CALLERS} | {"writer": frozenset({"pull", "push"})},
}
ALL = frozenset({"pull", "push", "delete"})


def rights(caller: str, repository: str) -> frozenset[str]:
    if caller == "admin":
        return ALL
    for prefix, table in _RIGHTS.items():
        if repository.startswith(prefix):
            return table.get(caller, frozenset())
    return frozenset()


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def write_auth_files(directory: str, users: dict[str, str] | None = None, rules: str = RULES) -> tuple[str, str]:
    """htpasswd (bcrypt cost 4: fast) and rules files; their paths."""
    htpasswd, rules_path = os.path.join(directory, "htpasswd"), os.path.join(directory, "rules.toml")
    write_users(htpasswd, {u: hash_password(p, 4) for u, p in (users or PASSWORDS).items()})
    with open(rules_path, "w") as f:
        f.write(rules)
    return htpasswd, rules_path


def start_auth_server(directory: str, mode: str, users: dict[str, str] | None = None, **env: str) -> Server:
    """A one-worker registry with filesystem storage under `directory`, users (PASSWORDS by default)
    and rules from write_auth_files; an env value of "" leaves that setting out."""
    os.makedirs(directory, exist_ok=True)
    htpasswd, rules = write_auth_files(directory, users)
    settings = {"REGISTRY_AUTH": mode, "REGISTRY_AUTH_HTPASSWD": htpasswd, "REGISTRY_AUTH_RULES": rules,
                "REGISTRY_WORKERS": "1", "REGISTRY_FSYNC": "false", **env}
    settings = {k: v for k, v in settings.items() if v is not None and v != ""}
    return start_server(os.path.join(directory, "data"), os.path.join(directory, "server.log"), **settings)


_PARAM = re.compile(r'(\w+)="([^"]*)"')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.partition(" ")
    return scheme.lower(), dict(_PARAM.findall(rest))


@dataclass
class Exchange:
    """A request as a client makes it: `first` is the answer without a token (token mode), `final` the
    answer the client ends with, `token` the bearer token it used (None: none was needed or got)."""

    final: httpx.Response
    first: httpx.Response | None = None
    token: str | None = None
    scopes: list[str] = field(default_factory=list)

    @property
    def status(self) -> int:
        return self.final.status_code


class Client:
    """One caller (a user from PASSWORDS, or None for anonymous) against a server in `mode`."""

    def __init__(self, server: Server, mode: str, user: str | None) -> None:
        self.server, self.mode, self.user = server, mode, user
        self.http = httpx.Client(base_url=server.url, timeout=30)
        self.credentials = basic(user, PASSWORDS[user]) if user else {}

    def close(self) -> None:
        self.http.close()

    def token(self, scopes: list[str], realm: str | None = None, service: str = "myregistry") -> str:
        r = self.http.get(realm or "/auth/token", params=[("service", service)] + [("scope", s) for s in scopes],
                          headers=self.credentials)
        assert r.status_code == 200, r.text
        return r.json()["token"]

    def request(self, method: str, path: str, *, params=None, content: bytes | None = None,
                headers: dict[str, str] | None = None, extra_scopes: tuple[str, ...] = ()) -> Exchange:
        headers = dict(headers or {})
        if self.mode != "token":
            return Exchange(self.http.request(method, path, params=params, content=content,
                                              headers={**headers, **self.credentials}))
        first = self.http.request(method, path, params=params, content=content, headers=headers)
        if first.status_code != 401:
            return Exchange(first, first)
        scheme, challenge = parse_challenge(first.headers["www-authenticate"])
        assert scheme == "bearer", first.headers["www-authenticate"]
        scopes = ([challenge["scope"]] if "scope" in challenge else []) + list(extra_scopes)
        token = self.token(scopes, challenge["realm"], challenge["service"])
        final = self.http.request(method, path, params=params, content=content,
                                  headers={**headers, "Authorization": f"Bearer {token}"})
        return Exchange(final, first, token, scopes)


def raw_request(server: Server, method: str, target: str, headers: dict[str, str] | None = None,
                body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """One request sent byte for byte (httpx would normalise `..` and `//` in the path)."""
    headers = {"Host": server.host, **(headers or {})}
    lines = [f"{method} {target} HTTP/1.1", "Connection: close", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    found = {}
    for line in header_lines:
        k, _, v = line.partition(":")
        found[k.strip().lower()] = v.strip()
    return int(status_line.split()[1]), found, payload
