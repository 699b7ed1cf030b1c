"""The access rules, token grants, login throttling and the route table, without a server."""

from __future__ import annotations

import asyncio
import os

import jwt
import pytest

from adapters.auth.htpasswd import HtpasswdPasswords, hash_password, parse_htpasswd, write_users
from adapters.auth.rules_file import EXAMPLE, parse_rules
from adapters.auth.throttle import MemoryLoginThrottle
from adapters.auth.tokens import JwtTokens, KeyRing
from domain.access import ADMIN_SCOPE, CATALOG_SCOPE, AccessRules, Action, Scope, compile_glob, grant, parse_scopes
from domain.errors import TooManyAttempts, Unauthorized
from domain.usecases.issue_token import IssueToken, _valid_repository
from domain.usecases.login import Login
from entrypoints.http import auth
from entrypoints.http.app import create_app
from entrypoints.settings import Settings

RULES = parse_rules(EXAMPLE.encode(), "example.toml")
PULL, PUSH, DELETE = Action.PULL, Action.PUSH, Action.DELETE


@pytest.mark.parametrize(("glob", "name", "matches"), [
    ("library/*", "library/busybox", True),
    ("library/*", "library/a/b", False),
    ("library/*", "library", False),
    ("team-a/**", "team-a/app/x", True),
    ("team-a/**", "team-a", False),
    ("team-a/**", "team-ab/app", False),
    ("**", "anything/at/all", True),
    ("app?", "app1", True),
    ("app?", "app/", False),
    ("a.b/*", "axb/c", False),  # dots are literal
])
def test_globs_match_whole_names_by_component(glob: str, name: str, matches: bool) -> None:
    assert bool(compile_glob(glob).fullmatch(name)) is matches


@pytest.mark.parametrize(("user", "repo", "expected"), [
    (None, "library/busybox", {PULL}),
    (None, "team-a/app", set()),
    ("carol", "library/busybox", {PULL}),        # anonymous grants reach logged-in users too
    ("carol", "team-a/app", set()),
    ("bob", "library/busybox", {PULL, PUSH}),    # @team-a
    ("bob", "team-a/app/x", {PULL, PUSH}),
    ("alice", "team-a/app/x", {PULL, PUSH, DELETE}),
    ("alice", "team-b/app", set()),
    ("admin", "team-b/app", {PULL, PUSH, DELETE}),
])
def test_example_rules(user: str | None, repo: str, expected: set[Action]) -> None:
    assert RULES.actions(RULES.identity(user), repo) == expected


def test_admins_and_defaults() -> None:
    assert RULES.is_admin(RULES.identity("admin"))
    assert not RULES.is_admin(RULES.identity("alice"))
    assert not RULES.is_admin(RULES.identity(None))
    logged_in = AccessRules.logged_in()
    assert logged_in.actions(logged_in.identity(None), "x") == frozenset()
    assert logged_in.is_admin(logged_in.identity("someone"))
    assert AccessRules.open().is_admin(AccessRules.open().identity(None))


@pytest.mark.parametrize("document", [
    b"admins = 3",
    b"[[repositories]]\nmatch = ['a']\npull = ['@nobody']",
    b"[[repositories]]\nmatch = ['a//b']",
    b"[[repositories]]\nmatch = []",
    b"[[repositories]]\nmatch = ['a']\npul = ['x']",
    b"[[repositories]]\nmatch = ['a']\npull = ['bad name']",
    b"admins = ['@ghosts']",
    b"not toml at all [",
])
def test_bad_rules_files_are_refused_with_the_file_named(document: bytes) -> None:
    with pytest.raises(ValueError, match="rules.toml"):
        parse_rules(document, "rules.toml")


def test_scopes_parse_like_docker_writes_them() -> None:
    assert parse_scopes(["repository:team-a/app:pull,push", "registry:catalog:*"]) == [
        Scope("repository", "team-a/app", frozenset({"pull", "push"})), Scope("registry", "catalog", frozenset("*"))]
    # a registry host with a port in the name; several scopes in one OAuth2 parameter
    assert parse_scopes(["repository:localhost:5000/a:pull repository:b:push"]) == [
        Scope("repository", "localhost:5000/a", frozenset({"pull"})), Scope("repository", "b", frozenset({"push"}))]
    assert parse_scopes(["nonsense", "repository:x", ":a:b"]) == []


def test_grants_are_what_was_asked_and_allowed() -> None:
    bob = RULES.identity("bob")
    asked = parse_scopes(["repository:team-a/app:pull,push,delete", "repository:team-b/x:pull",
                          "repository:Team-A/App:pull", "repository:team-a/../x:pull",
                          "registry:catalog:*", "registry:admin:*", "other:thing:*"])
    granted = {(s.type, s.name): s.actions for s in grant(RULES, bob, asked, _valid_repository)}
    assert granted == {("repository", "team-a/app"): {"pull", "push"}, CATALOG_SCOPE: {"*"}}
    admin = grant(RULES, RULES.identity("admin"), parse_scopes(["registry:admin:*", "repository:z:*"]),
                  _valid_repository)
    assert {(s.type, s.name): s.actions for s in admin} == {
        ADMIN_SCOPE: {"*"}, ("repository", "z"): {"pull", "push", "delete"}}


def test_throttle_holds_back_after_a_burst_and_refills() -> None:
    now = [0.0]
    throttle = MemoryLoginThrottle(refill=10, clock=lambda: now[0])
    key = {"alice\0" "10.0.0.1": 3}
    for _ in range(3):
        assert throttle.retry_after(key) == 0
        throttle.failed(key)
    assert throttle.retry_after(key) == pytest.approx(10)
    assert throttle.retry_after({"bob\0" "10.0.0.1": 3}) == 0
    now[0] = 10.0
    assert throttle.retry_after(key) == 0


@pytest.fixture
def users(tmp_path):
    path = str(tmp_path / "htpasswd")
    write_users(path, {"alice": hash_password("right-password", 4), "bob": hash_password("bobs-password", 4)})
    return path


def test_login_counts_failures_and_then_refuses_even_the_right_password(users) -> None:
    """Past the burst, a pair is held back even with the right password, unless those exact credentials
    were verified before (then it is not a guess: a user keeps working while an attacker trips the
    limit from the same address)."""
    login = Login(HtpasswdPasswords(users), MemoryLoginThrottle(refill=60), lambda: RULES, burst=2)

    async def run() -> None:
        assert (await login("alice", "right-password", "1.2.3.4")).name == "alice"
        for name in ("alice", "bob"):
            for _ in range(2):
                with pytest.raises(Unauthorized):
                    await login(name, "wrong", "1.2.3.4")
        with pytest.raises(TooManyAttempts) as held:
            await login("bob", "bobs-password", "1.2.3.4")  # never verified: held back
        assert held.value.retry_after > 0
        assert (await login("alice", "right-password", "1.2.3.4")).name == "alice"  # verified before
        assert (await login("bob", "bobs-password", "5.6.7.8")).name == "bob"  # another address
        with pytest.raises(Unauthorized):
            await login("nobody", "x", "1.2.3.4")  # unknown users cost a bcrypt check too
    asyncio.run(run())


def test_htpasswd_changes_are_seen_and_a_removed_user_is_refused(users) -> None:
    passwords = HtpasswdPasswords(users, interval=0)

    async def run() -> None:
        assert await passwords.check("bob", "bobs-password")  # now remembered
        write_users(users, {"alice": hash_password("right-password", 4)})
        assert not await passwords.check("bob", "bobs-password")
        assert not await passwords.exists("bob")
    asyncio.run(run())


def test_htpasswd_refuses_hashes_that_are_not_bcrypt() -> None:
    with pytest.raises(ValueError, match="not bcrypt"):
        parse_htpasswd(b"alice:$apr1$abc$defghijklmnopqrstuvwx/\n", "h")
    assert parse_htpasswd(b"# comment\n\nalice:" + hash_password("p", 4).replace(b"$2b$", b"$2y$"), "h")


def test_tokens_round_trip_and_refuse_what_they_should(users) -> None:
    now = [1_800_000_000.0]
    ring = KeyRing(None, 300, clock=lambda: now[0])
    tokens = JwtTokens("me", "svc", 300, 3600, ring=ring, clock=lambda: now[0])
    issued = tokens.issue("alice", [Scope("repository", "a/b", frozenset({"pull"}))])
    claims = jwt.decode(issued.token, options={"verify_signature": False})
    assert claims["access"] == [{"type": "repository", "name": "a/b", "actions": ["pull"]}]
    assert jwt.get_unverified_header(issued.token)["kid"].count(":") == 11  # libtrust form
    # PyJWT checks times against the real clock: test those on real time below.
    real = JwtTokens("me", "svc", 300, 3600, ring=ring)
    verified = real.verify(real.issue("alice", []).token)
    assert verified.subject == "alice" and verified.ours
    refresh = real.issue_refresh("alice", "v1")
    assert real.refresh_subject(refresh) == ("alice", "v1")
    assert real.refresh_subject(real.issue("alice", []).token) is None
    with pytest.raises(Unauthorized, match="refresh token"):
        real.verify(refresh)
    other = JwtTokens("me", "another-service", 300, 3600, ring=ring)
    with pytest.raises(Unauthorized, match="another service"):
        other.verify(real.issue("alice", []).token)
    with pytest.raises(Unauthorized):
        real.verify(jwt.encode({"iss": "me", "aud": "svc", "exp": 2**40, "access": []}, "", algorithm="none"))


def test_issue_token_grants_by_the_rules(users) -> None:
    rules = lambda: RULES  # noqa: E731
    passwords = HtpasswdPasswords(users)
    issuer = JwtTokens("me", "svc", 300, 3600, ring=KeyRing(None, 300))
    issue = IssueToken(Login(passwords, MemoryLoginThrottle(10), rules, 5), passwords, issuer, rules)

    async def run() -> None:
        token = await issue.with_password("alice", "right-password", "-",
                                          parse_scopes(["repository:team-a/x:pull,push,delete",
                                                        "repository:team-b/x:pull"]), offline=True)
        assert issuer.verify(token.token).access == {("repository", "team-a/x"): {"pull", "push", "delete"}}
        assert token.refresh_token
        again = await issue.with_refresh_token(token.refresh_token, parse_scopes(["repository:library/x:pull"]))
        assert issuer.verify(again.token).access == {("repository", "library/x"): {"pull"}}
        anonymous = issue.anonymous(parse_scopes(["repository:library/x:pull,push", "repository:team-a/x:pull"]))
        assert issuer.verify(anonymous.token).access == {("repository", "library/x"): {"pull"}}
        with pytest.raises(Unauthorized):
            await issue.with_refresh_token("not-a-token", [])
    asyncio.run(run())


def test_every_route_has_a_need() -> None:
    app = create_app(Settings(storage="memory", auth="token", auth_htpasswd="/nonexistent"))
    names = {route.name.split(".", 1)[1] for route in app.router.routes}
    assert names - set(auth.NEEDS) == set(), "routes without an entry in auth.NEEDS (they would need an admin)"


def test_a_rotated_key_verifies_for_one_token_lifetime_then_goes(tmp_path) -> None:
    from adapters.auth.tokens import LEEWAY
    now = [1_800_000_000.0]
    ring = KeyRing(str(tmp_path / "keys"), token_ttl=300, clock=lambda: now[0], reload_every=0)
    ring.ensure()
    first = ring.signing()[0]
    ring.ensure()  # idempotent
    assert len(os.listdir(tmp_path / "keys")) == 1
    now[0] += 5
    second = ring.rotate()
    assert ring.signing()[0] == second != first
    assert {k.kid for k in ring.verification_keys()} == {first, second}
    now[0] += 300 + LEEWAY + 1
    assert {k.kid for k in ring.verification_keys()} == {second}
    ring.rotate()
    assert len(os.listdir(tmp_path / "keys")) == 2  # the first key's file is gone


def test_parallel_guesses_are_held_back_like_sequential_ones(users) -> None:
    """Each guess counts from the moment its check starts: 30 guesses sent at once get at most `burst`
    checks, the rest 429. (Counted after the check, all 30 were checked, and the right one got in.)
    The same credentials on 10 parallel requests share one check and one attempt."""
    throttle = MemoryLoginThrottle(refill=600)
    login = Login(HtpasswdPasswords(users), throttle, lambda: RULES, burst=3)

    async def attempt(password: str) -> str:
        try:
            await login("alice", password, "10.0.0.9")
            return "ok"
        except TooManyAttempts:
            return "429"
        except Unauthorized:
            return "401"

    async def run() -> None:
        same = await asyncio.gather(*(attempt("right-password") for _ in range(10)))
        assert same == ["ok"] * 10
        assert throttle._buckets == {}  # everything given back: the account's budget is whole
        guesses = await asyncio.gather(*(attempt(f"guess-{i}") for i in range(29)), attempt("right-password"))
        assert guesses.count("401") <= 3 and guesses.count("429") >= 26, guesses
        assert "ok" not in guesses[:3] or guesses.count("401") < 3
    asyncio.run(run())
