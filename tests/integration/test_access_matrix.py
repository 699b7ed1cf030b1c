"""The scope matrix (issue 11): every endpoint and method, for every kind of caller, against a live
registry in htpasswd mode and in token mode, with the expected status worked out from ONE table
(ENDPOINTS: what each endpoint needs) and the rights the rules give (tests/auth_support.py).

Content is in place first, so a refusal could leak what exists; every refusal is compared between an
existing and a missing repository, tag, digest, blob, upload session and job: same status, same body,
same challenge. The catalog lists only what the caller may pull, in every page; a mount from a
repository the caller may not pull is indistinguishable from a mount of a missing blob."""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from tests.auth_support import (
    CALLERS,
    OTHERS,
    PRIVATE,
    PUBLIC,
    Client,
    Exchange,
    parse_challenge,
    rights,
    start_auth_server,
)
from tests.support import OCI_MANIFEST, make_image, sha256

MODES = ("htpasswd", "token")
TARGETS = (PRIVATE, PUBLIC)
MISSING_REPO = {PRIVATE: "team-a/ghost", PUBLIC: "library/ghost"}
MISSING_DIGEST = sha256(b"no manifest has this digest")
MISSING_BLOB = sha256(b"no blob has this digest")


def base_image(repo: str):
    return make_image(f"base {repo}", layers=1, layer_size=256)


def caller_image(repo: str, caller: str):
    return make_image(f"delete me {repo} {caller}", layers=1, layer_size=64)


def caller_blob(repo: str, caller: str) -> bytes:
    return f"a blob of {repo} for {caller} to delete".encode()


def new_blob(repo: str, caller: str) -> bytes:
    return f"a blob {caller} pushes to {repo}".encode()


@dataclass
class Ctx:
    """The names one request uses. `existing` fills them with things the admin stored beforehand;
    the missing variants name nothing (in the same repository, or in a repository that does not exist)."""

    mode: str
    repo: str
    caller: str
    tag: str
    digest: str
    blob: str
    del_tag: str
    del_digest: str
    del_blob: str
    gone_repo: str
    job: str
    make_session: Callable[[], str] = field(repr=False)

    @property
    def session(self) -> str:
        return self.make_session()


@dataclass(frozen=True)
class Endpoint:
    id: str
    method: str
    need: str                                   # public | login | catalog | admin | pull | push | delete
    path: Callable[[Ctx], str]
    ok: int | Callable[[str, str], int]         # status when allowed; or f(mode, caller)
    params: Callable[[Ctx], dict] = lambda c: {}
    body: Callable[[Ctx], bytes | None] = lambda c: None
    headers: dict[str, str] = field(default_factory=dict)
    repository: bool = True                     # the path names a repository
    # After a refusal, what the admin still finds: (method, path, status).
    unchanged: Callable[[Ctx], tuple[str, str, int]] | None = None

    def expected_ok(self, mode: str, caller: str) -> int:
        return self.ok(mode, caller) if callable(self.ok) else self.ok


def _mount_anywhere(mode: str, caller: str) -> int:
    # Without `from` only a caller who may read every repository gets the blob mounted; anyone else an
    # ordinary session, whether or not the blob is stored somewhere. A token is scoped to repositories,
    # so in token mode that is everyone.
    return 201 if mode == "htpasswd" and caller == "admin" else 202


M = "/v2/{}/manifests/{}"
ENDPOINTS = [
    Endpoint("manifest-get-tag", "GET", "pull", lambda c: M.format(c.repo, c.tag), 200),
    Endpoint("manifest-head-tag", "HEAD", "pull", lambda c: M.format(c.repo, c.tag), 200),
    Endpoint("manifest-get-digest", "GET", "pull", lambda c: M.format(c.repo, c.digest), 200),
    Endpoint("manifest-head-digest", "HEAD", "pull", lambda c: M.format(c.repo, c.digest), 200),
    Endpoint("manifest-put-tag", "PUT", "push", lambda c: M.format(c.repo, f"put-{c.caller}"), 201,
             body=lambda c: base_image(c.repo).manifest, headers={"Content-Type": OCI_MANIFEST},
             unchanged=lambda c: ("GET", M.format(c.repo, f"put-{c.caller}"), 404)),
    Endpoint("manifest-put-digest", "PUT", "push", lambda c: M.format(c.repo, c.digest), 201,
             body=lambda c: base_image(c.repo).manifest, headers={"Content-Type": OCI_MANIFEST}),
    Endpoint("manifest-delete-tag", "DELETE", "delete", lambda c: M.format(c.repo, c.del_tag), 202,
             unchanged=lambda c: ("GET", M.format(c.repo, c.del_tag), 200)),
    Endpoint("manifest-delete-digest", "DELETE", "delete", lambda c: M.format(c.repo, c.del_digest), 202,
             unchanged=lambda c: ("GET", M.format(c.repo, c.del_digest), 200)),
    Endpoint("blob-get", "GET", "pull", lambda c: f"/v2/{c.repo}/blobs/{c.blob}", 200),
    Endpoint("blob-head", "HEAD", "pull", lambda c: f"/v2/{c.repo}/blobs/{c.blob}", 200),
    Endpoint("blob-delete", "DELETE", "delete", lambda c: f"/v2/{c.repo}/blobs/{c.del_blob}", 202,
             unchanged=lambda c: ("HEAD", f"/v2/{c.repo}/blobs/{c.del_blob}", 200)),
    Endpoint("upload-post", "POST", "push", lambda c: f"/v2/{c.repo}/blobs/uploads/", 202),
    Endpoint("upload-post-digest", "POST", "push", lambda c: f"/v2/{c.repo}/blobs/uploads/", 201,
             params=lambda c: {"digest": sha256(new_blob(c.repo, c.caller))},
             body=lambda c: new_blob(c.repo, c.caller),
             unchanged=lambda c: ("HEAD", f"/v2/{c.repo}/blobs/{sha256(new_blob(c.repo, c.caller))}", 404)),
    Endpoint("upload-post-mount-from", "POST", "push", lambda c: f"/v2/{c.repo}/blobs/uploads/", 201,
             params=lambda c: {"mount": c.blob, "from": c.repo}),
    Endpoint("upload-post-mount-anywhere", "POST", "push", lambda c: f"/v2/{c.repo}/blobs/uploads/",
             _mount_anywhere, params=lambda c: {"mount": c.blob}),
    Endpoint("upload-patch", "PATCH", "push", lambda c: f"/v2/{c.repo}/blobs/uploads/{c.session}", 202,
             body=lambda c: b"some bytes", headers={"Content-Type": "application/octet-stream"}),
    Endpoint("upload-put", "PUT", "push", lambda c: f"/v2/{c.repo}/blobs/uploads/{c.session}", 201,
             params=lambda c: {"digest": sha256(b"closing bytes")}, body=lambda c: b"closing bytes",
             headers={"Content-Type": "application/octet-stream"}),
    Endpoint("upload-status", "GET", "push", lambda c: f"/v2/{c.repo}/blobs/uploads/{c.session}", 204),
    Endpoint("upload-cancel", "DELETE", "push", lambda c: f"/v2/{c.repo}/blobs/uploads/{c.session}", 204),
    Endpoint("tags-list", "GET", "pull", lambda c: f"/v2/{c.repo}/tags/list", 200),
    Endpoint("referrers", "GET", "pull", lambda c: f"/v2/{c.repo}/referrers/{c.digest}", 200),
    Endpoint("repository-gc", "POST", "admin", lambda c: f"/v2/{c.repo}/_gc", 200,
             params=lambda c: {"dry_run": "true"}),
    Endpoint("repository-delete", "DELETE", "admin", lambda c: f"/v2/{c.gone_repo}/_repository", 202,
             unchanged=lambda c: ("GET", M.format(c.gone_repo, "v1"), 200)),
    Endpoint("catalog", "GET", "catalog", lambda c: "/v2/_catalog", 200, repository=False),
    Endpoint("base", "GET", "login", lambda c: "/v2/", 200, repository=False),
    Endpoint("base-head", "HEAD", "login", lambda c: "/v2/", 200, repository=False),
    Endpoint("gc", "POST", "admin", lambda c: "/v2/_gc", 200, params=lambda c: {"dry_run": "true"},
             repository=False),
    Endpoint("gc-job", "GET", "admin", lambda c: f"/v2/_gc/jobs/{c.job}", 200, repository=False),
    Endpoint("metrics", "GET", "public", lambda c: "/metrics", 200, repository=False),
    Endpoint("health", "GET", "public", lambda c: "/health", 200, repository=False),
    Endpoint("health-head", "HEAD", "public", lambda c: "/health", 200, repository=False),
    Endpoint("health-live", "GET", "public", lambda c: "/health/live", 200, repository=False),
    Endpoint("health-ready", "HEAD", "public", lambda c: "/health/ready", 200, repository=False),
]


def test_the_matrix_covers_every_route_and_method() -> None:
    """A route added later without a row here would go unchecked. (The token endpoint, token mode's
    only, is test_hostile_tokens.py's.)"""
    from entrypoints.http.app import create_app
    from entrypoints.settings import Settings

    app = create_app(Settings(storage="memory", auth="token", auth_htpasswd="/nonexistent"), name="matrix_routes")
    app.router.finalize()
    every = {(r.name.split(".", 1)[1], m) for r in app.router.routes for m in r.methods
             if not r.name.split(".", 1)[1].startswith("token.")}
    every -= {("health.live", "HEAD"), ("health.ready", "GET")}
    sample = Ctx("htpasswd", PRIVATE, "writer", "v1", MISSING_DIGEST, MISSING_BLOB, "t", MISSING_DIGEST,
                 MISSING_BLOB, f"{PRIVATE}/gone", uuid.uuid4().hex, lambda: str(uuid.uuid4()))
    covered = {(app.router.get(ep.path(sample), ep.method, None)[0].name.split(".", 1)[1], ep.method)
               for ep in ENDPOINTS}
    assert every - covered == set()


def allowed(need: str, mode: str, caller: str, repo: str) -> bool:
    """THE table: whether `caller` may reach an endpoint with this need."""
    if need in ("public", "catalog"):
        return True  # the catalog is filtered instead (test_catalog_lists_only_what_the_caller_may_pull)
    if need == "login":  # in token mode an anonymous token is a login too (as with Distribution)
        return caller != "anonymous" or mode == "token"
    if need == "admin":
        return caller == "admin"
    return need in rights(caller, repo)


def refusal_status(mode: str, caller: str) -> int:
    """Anonymous callers and every token: 401 with a challenge; a logged-in user the rules refuse: 403."""
    return 401 if mode == "token" or caller == "anonymous" else 403


class Registry:
    """A live server in one mode, its content, and a client per caller."""

    def __init__(self, directory: str, mode: str) -> None:
        self.mode = mode
        self.server = start_auth_server(directory, mode)
        self.clients = {c: Client(self.server, mode, None if c == "anonymous" else c) for c in CALLERS}
        self.admin = self.clients["admin"]

    def close(self) -> None:
        for c in self.clients.values():
            c.close()
        self.server.stop()

    def ok(self, method: str, path: str, expect: int, **kw) -> Exchange:
        ex = self.admin.request(method, path, **kw)
        assert ex.status == expect, (method, path, ex.status, ex.final.text)
        return ex

    def push(self, repo: str, image, tag: str | None = None) -> None:
        for blob in image.blobs():
            self.ok("POST", f"/v2/{repo}/blobs/uploads/", 201, params={"digest": sha256(blob)}, content=blob)
        self.ok("PUT", f"/v2/{repo}/manifests/{tag or image.digest}", 201, content=image.manifest,
                headers={"Content-Type": OCI_MANIFEST})

    def populate(self) -> None:
        for repo in (*TARGETS, OTHERS):
            self.push(repo, base_image(repo), "v1")
        for repo in TARGETS:
            base = base_image(repo)
            for caller in CALLERS:
                self.ok("PUT", M.format(repo, f"del-{caller}"), 201, content=base.manifest,
                        headers={"Content-Type": OCI_MANIFEST})
                self.push(repo, caller_image(repo, caller))
                blob = caller_blob(repo, caller)
                self.ok("POST", f"/v2/{repo}/blobs/uploads/", 201, params={"digest": sha256(blob)}, content=blob)
                self.push(f"{repo}/gone-{caller}", base, "v1")
        job = self.ok("POST", "/v2/_gc", 202, params={"wait": "false", "dry_run": "true"})
        self.job = job.final.headers["Location"].rsplit("/", 1)[1]
        for _ in range(200):  # the matrix starts collections of its own: this one must be over by then
            if self.ok("GET", f"/v2/_gc/jobs/{self.job}", 200).final.json()["state"] not in ("queued", "running"):
                break
            time.sleep(0.05)

    def new_session(self, repo: str) -> str:
        return self.ok("POST", f"/v2/{repo}/blobs/uploads/", 202).final.headers["Location"].rsplit("/", 1)[1]

    def ctx(self, variant: str, repo: str, caller: str) -> Ctx:
        if variant == "existing":
            image = base_image(repo)
            return Ctx(self.mode, repo, caller, "v1", image.digest, sha256(image.layers[0]),
                       f"del-{caller}", caller_image(repo, caller).digest, sha256(caller_blob(repo, caller)),
                       f"{repo}/gone-{caller}", self.job, lambda: self.new_session(repo))
        name = repo if variant == "missing-object" else MISSING_REPO[repo]
        return Ctx(self.mode, name, caller, "no-such-tag", MISSING_DIGEST, MISSING_BLOB, "no-such-tag",
                   MISSING_DIGEST, MISSING_BLOB, f"{name}/gone-nobody", uuid.uuid4().hex,
                   lambda: str(uuid.uuid4()))


@pytest.fixture(scope="module", params=MODES)
def registry(request, tmp_path_factory) -> Registry:
    reg = Registry(str(tmp_path_factory.mktemp(f"access-{request.param}")), request.param)
    try:
        reg.populate()
        yield reg
    finally:
        reg.close()


def send(reg: Registry, ep: Endpoint, ctx: Ctx, caller: str) -> Exchange:
    path = ep.path(ctx)  # before the request: it may open a session (as the admin)
    return reg.clients[caller].request(ep.method, path, params=ep.params(ctx), content=ep.body(ctx),
                                       headers=ep.headers)


def signature(ex: Exchange, ctx: Ctx) -> tuple:
    """What a refusal shows a client, with the repository's name (which the client chose) blanked."""
    def blank(text: str) -> str:
        return text.replace(ctx.repo, "<repo>")

    r = ex.final
    shown = (r.status_code, r.headers.get("content-type"), blank(r.text),
             blank(r.headers.get("www-authenticate", "")))
    if ex.first is not None:
        shown += (ex.first.status_code, blank(ex.first.text), blank(ex.first.headers.get("www-authenticate", "")))
    return shown


CASES = [pytest.param(ep, caller, repo, id=f"{ep.id}-{caller}" + (f"-{repo.split('/')[0]}" if ep.repository else ""))
         for ep in ENDPOINTS for caller in CALLERS for repo in (TARGETS if ep.repository else TARGETS[:1])]


@pytest.mark.parametrize(("ep", "caller", "repo"), CASES)
def test_matrix(registry: Registry, ep: Endpoint, caller: str, repo: str) -> None:
    mode = registry.mode
    ex = send(registry, ep, registry.ctx("existing", repo, caller), caller)
    if allowed(ep.need, mode, caller, repo):
        assert ex.status == ep.expected_ok(mode, caller), ex.final.text
        return
    assert ex.status == refusal_status(mode, caller), ex.final.text
    if ep.method != "HEAD":
        assert ex.final.json()["errors"][0]["code"] == ("UNAUTHORIZED" if ex.status == 401 else "DENIED")
    if ex.status == 401:
        scheme, challenge = parse_challenge(ex.final.headers["www-authenticate"])
        assert scheme == ("bearer" if mode == "token" else "basic")
        if mode == "token":
            assert ex.token is not None and challenge.get("error") == "insufficient_scope"
            wanted = {"admin": "registry:admin:*"}.get(ep.need)
            if wanted:
                assert challenge["scope"] == wanted
            else:  # the repository of the request, with the action it needs
                kind, name, actions = challenge["scope"].split(":")
                assert (kind, name) == ("repository", repo) and ep.need in actions.split(",")
    existing = registry.ctx("existing", repo, caller)
    if ep.unchanged is not None:
        method, path, status = ep.unchanged(existing)
        assert registry.admin.request(method, path).status == status, "a refused request changed something"
    # Nothing tells a refused caller whether what it asked for exists.
    seen = signature(ex, existing)
    for variant in ("missing-object", "missing-repo") if ep.repository else ("missing-object",):
        ctx = registry.ctx(variant, repo, caller)
        assert signature(send(registry, ep, ctx, caller), ctx) == seen, variant


def expected_catalog(full: list[str], caller: str) -> list[str]:
    return [r for r in full if "pull" in rights(caller, r)]


@pytest.mark.parametrize("caller", CALLERS)
def test_catalog_lists_only_what_the_caller_may_pull(registry: Registry, caller: str) -> None:
    full = registry.admin.request("GET", "/v2/_catalog").final.json()["repositories"]
    assert {PRIVATE, PUBLIC, OTHERS} <= set(full)
    visible = expected_catalog(full, caller)
    client = registry.clients[caller]
    ex = client.request("GET", "/v2/_catalog")
    assert ex.status == 200 and ex.final.json()["repositories"] == visible
    # Page by page, as a client follows Link: the same names, and no Link or `last` names another.
    pages, url = [], "/v2/_catalog?n=1"
    while url:
        ex = client.request("GET", url)
        assert ex.status == 200
        pages += ex.final.json()["repositories"]
        link = ex.final.headers.get("link")
        url = link[1:link.index(">")] if link else None
        if link:
            assert any(f"last={name}" in link.replace("%2F", "/") for name in visible), link
    assert pages == visible
    # Starting after a name the caller may not see reveals nothing about what follows it.
    for last in (OTHERS, PRIVATE, "team-a/zzz", "m"):
        ex = client.request("GET", "/v2/_catalog", params={"last": last, "n": "1000"})
        assert ex.final.json()["repositories"] == [r for r in visible if r > last]


class TestMounts:
    """A mount needs pull on its source; refused, it is an ordinary session, like a missing blob."""

    SECRET = b"a layer only team-b has"

    @pytest.fixture(scope="class")
    def secret(self, registry: Registry) -> str:
        registry.ok("POST", f"/v2/{OTHERS}/blobs/uploads/", 201, params={"digest": sha256(self.SECRET)},
                    content=self.SECRET)
        return sha256(self.SECRET)

    def mount(self, registry: Registry, caller: str, target: str, digest: str, source: str | None) -> Exchange:
        params = {"mount": digest} | ({"from": source} if source else {})
        # Like docker, ask for pull on the source along with the challenge's scope.
        extra = (f"repository:{source}:pull",) if source else ()
        return registry.clients[caller].request("POST", f"/v2/{target}/blobs/uploads/", params=params,
                                                extra_scopes=extra)

    @staticmethod
    def shown(ex: Exchange) -> tuple:
        r = ex.final
        return (r.status_code, r.text, r.headers.get("range"), r.headers.get("docker-upload-uuid") is not None,
                "location" in r.headers)

    def test_from_a_repository_the_caller_cannot_pull_is_a_missing_blob(self, registry, secret):
        answers = {self.shown(self.mount(registry, "writer", PRIVATE, digest, source))
                   for digest, source in itertools.product((secret, MISSING_BLOB), (OTHERS, "team-b/ghost"))}
        assert len(answers) == 1 and answers.pop()[0] == 202
        assert registry.clients["writer"].request("HEAD", f"/v2/{PRIVATE}/blobs/{secret}").status == 404

    def test_without_from_reveals_nothing(self, registry, secret):
        for caller, target in (("writer", PRIVATE), ("other", OTHERS), ("writer", PUBLIC)):
            found = self.shown(self.mount(registry, caller, target, secret, None))
            missing = self.shown(self.mount(registry, caller, target, MISSING_BLOB, None))
            assert found == missing and found[0] == 202, caller
        assert registry.clients["writer"].request("HEAD", f"/v2/{PRIVATE}/blobs/{secret}").status == 404

    def test_a_caller_with_pull_on_the_source_mounts(self, registry, secret):
        layer = sha256(base_image(PRIVATE).layers[0])
        ex = self.mount(registry, "writer", PUBLIC, layer, PRIVATE)  # writer pulls team-a, pushes library
        assert ex.status == 201, ex.final.text
        only_in_team_a = sha256(caller_blob(PRIVATE, "reader"))
        assert self.mount(registry, "other", OTHERS, only_in_team_a, PUBLIC).status == 202  # not there
        assert self.mount(registry, "admin", PRIVATE, secret, OTHERS).status == 201

    def test_push_to_the_target_is_still_needed(self, registry, secret):
        ex = self.mount(registry, "other", PRIVATE, secret, OTHERS)  # other may pull team-b, not push team-a
        assert ex.status == refusal_status(registry.mode, "other")


def test_a_token_for_one_repository_works_on_no_other(registry: Registry) -> None:
    reader = registry.clients["reader"]
    if registry.mode != "token":  # htpasswd mode takes no bearer token, even a well-formed one
        forged = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJyZWFkZXIifQ.c2ln"
        r = reader.http.get(f"/v2/{PRIVATE}/tags/list", headers={"Authorization": f"Bearer {forged}"})
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
        return
    token = reader.token([f"repository:{PRIVATE}:pull"])
    bearer = {"Authorization": f"Bearer {token}"}
    assert reader.http.get(f"/v2/{PRIVATE}/tags/list", headers=bearer).status_code == 200
    for path in (f"/v2/{PUBLIC}/tags/list", f"/v2/{PRIVATE}-x/tags/list", f"/v2/{PRIVATE}/sub/tags/list",
                 f"/v2/{OTHERS}/tags/list", "/v2/_catalog"):
        r = reader.http.get(path, headers=bearer)
        assert r.status_code == 401, path
        assert 'error="insufficient_scope"' in r.headers["www-authenticate"]
    # ...nor for another action on the same repository
    r = reader.http.post(f"/v2/{PRIVATE}/blobs/uploads/", headers=bearer)
    assert r.status_code == 401
    # The token grants only what the rules allow, whatever was asked for.
    token = reader.token([f"repository:{PRIVATE}:pull,push,delete", f"repository:{OTHERS}:*", "registry:admin:*"])
    assert reader.http.post(f"/v2/{PRIVATE}/blobs/uploads/", headers={"Authorization": f"Bearer {token}"}
                            ).status_code == 401
    assert reader.http.get(f"/v2/{OTHERS}/tags/list", headers={"Authorization": f"Bearer {token}"}
                           ).status_code == 401


@pytest.mark.parametrize("caller", ["anonymous", "reader", "other"])
def test_content_is_reachable_only_through_a_repository_that_holds_it(registry: Registry, caller: str) -> None:
    """Blobs and manifests are stored once for the whole registry: a digest asked for through a
    repository the caller may read, but which does not hold it, is not found, exactly like a digest
    nothing has."""
    # (images no other test mounts anywhere or deletes)
    hidden = {r: image for r, image in ((PRIVATE, caller_image(PRIVATE, "reader")), (OTHERS, base_image(OTHERS)))
              if "pull" not in rights(caller, r)}
    assert hidden
    client = registry.clients[caller]
    for image in hidden.values():
        for what, digest, missing in (("blobs", sha256(image.layers[0]), MISSING_BLOB),
                                      ("blobs", sha256(image.config), MISSING_BLOB),
                                      ("manifests", image.digest, MISSING_DIGEST)):
            for method in ("GET", "HEAD"):
                found = client.request(method, f"/v2/{PUBLIC}/{what}/{digest}").final
                nothing = client.request(method, f"/v2/{PUBLIC}/{what}/{missing}").final
                assert found.status_code == nothing.status_code == 404, (what, method, found.text)
                assert found.text.replace(digest, "<d>") == nothing.text.replace(missing, "<d>")
        r = client.request("GET", f"/v2/{PUBLIC}/referrers/{image.digest}").final
        assert r.status_code == 200 and r.json()["manifests"] == []
