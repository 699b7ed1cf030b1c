"""Access control for every request: who is calling (a client certificate, Basic credentials or a bearer
token), what the route needs, and the answer when the caller may not: 401 with the challenge a client
needs to log in, or 403 DENIED for a logged-in user the rules do not allow.

What each route needs is one table (NEEDS), checked before any handler or storage call runs, so a refusal
says nothing about whether a repository, tag or blob exists. A route missing from the table needs an
admin (tests/unit/test_access.py checks every route is listed).

With REGISTRY_AUTH=none nothing here is installed: the request path costs what it did."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from sanic import HTTPResponse, Request, Sanic

from domain.access import ADMIN_SCOPE, CATALOG_SCOPE, AccessRules, Action, Identity, valid_user_name
from domain.errors import NameInvalid, TooManyAttempts, Unauthorized
from domain.names import RepositoryName
from domain.ports import VerifiedToken

from .errors import error_response


class Need(Enum):
    PUBLIC = "public"      # health, metrics, the token endpoint
    LOGIN = "login"        # /v2/: any caller the registry knows (clients ping it to learn how to log in)
    CATALOG = "catalog"    # filtered to what the caller may pull
    ADMIN = "admin"        # collection, its jobs, repository deletion
    PULL = Action.PULL.value
    PUSH = Action.PUSH.value
    DELETE = Action.DELETE.value


NEEDS: dict[str, Need] = {
    "base.api_version": Need.LOGIN,
    "base.catalog": Need.CATALOG,
    "health.live": Need.PUBLIC,
    "health.ready": Need.PUBLIC,
    "health.health": Need.PUBLIC,
    "metrics.scrape": Need.PUBLIC,
    "token.get_token": Need.PUBLIC,
    "token.post_token": Need.PUBLIC,
    "gc.collect_all": Need.ADMIN,
    "gc.job_state": Need.ADMIN,
    "gc.collect_repository": Need.ADMIN,
    "gc.delete_repository": Need.ADMIN,
    "tags.list_tags": Need.PULL,
    "referrers.list_referrers": Need.PULL,
    "blobs.get_blob": Need.PULL,
    "manifests.get_manifest": Need.PULL,
    "uploads.start_upload": Need.PUSH,
    "uploads.append_upload": Need.PUSH,
    "uploads.complete_upload": Need.PUSH,
    "uploads.upload_status": Need.PUSH,
    "uploads.cancel_upload": Need.PUSH,
    "manifests.put_manifest": Need.PUSH,
    "blobs.delete_blob": Need.DELETE,
    "manifests.delete_manifest": Need.DELETE,
}

# Each need's repository action (None for the others), as an attribute: read on every request, where a
# dict keyed by the enum would cost a Python-level hash.
for _need_member in Need:
    _need_member.action = Action(_need_member.value) if _need_member.value in set(Action) else None

# The scope a client is told to ask for: a push asks pull too (a client checks what exists first).
_CHALLENGE_ACTIONS = {Need.PULL: "pull", Need.PUSH: "pull,push", Need.DELETE: "delete"}


class Caller:
    """What a request may do. The base class is the open registry (REGISTRY_AUTH=none)."""

    user: str | None = None
    has_token = False

    def may(self, repository: str, action: Action) -> bool:
        return True

    @property
    def admin(self) -> bool:
        return True

    def may_list_catalog(self) -> bool:
        return True

    def catalog_filter(self) -> Callable[[str], bool] | None:
        """None: the whole catalog; otherwise the repositories to list."""
        return None

    def mount_filter(self) -> Callable[[RepositoryName], bool] | None:
        """None: a blob may be mounted from anywhere; otherwise the source repositories allowed."""
        return None


OPEN = Caller()


class RulesCaller(Caller):
    """A password, client-certificate or anonymous caller, judged by the rules file."""

    def __init__(self, who: Identity, rules: AccessRules) -> None:
        self.who, self.rules, self.user = who, rules, who.name
        self._admin = rules.is_admin(who)

    def may(self, repository: str, action: Action) -> bool:
        return self._admin or self.rules.may(self.who, repository, action)

    @property
    def admin(self) -> bool:
        return self._admin

    def catalog_filter(self) -> Callable[[str], bool] | None:
        if self._admin:
            return None
        return lambda repo: self.rules.may(self.who, repo, Action.PULL)

    def mount_filter(self) -> Callable[[RepositoryName], bool] | None:
        if self._admin:
            return None
        return lambda repo: self.rules.may(self.who, repo.value, Action.PULL)


class TokenCaller(Caller):
    """A bearer token: it may exactly what its `access` claim lists."""

    def __init__(self, token: VerifiedToken, rules: Callable[[], AccessRules] | None, has_token: bool = True) -> None:
        self.token, self._rules, self.user, self.has_token = token, rules, token.subject, has_token

    @property
    def rules(self) -> AccessRules | None:
        """The rules, read only where a decision needs them (the catalog, a refusal's message)."""
        return self._rules() if self._rules is not None else None

    def _allows(self, key: tuple[str, str], action: str) -> bool:
        actions = self.token.access.get(key)
        return actions is not None and (action in actions or "*" in actions)

    def may(self, repository: str, action: Action) -> bool:
        return self._allows(("repository", repository), action)  # a StrEnum: the action's own text

    @property
    def admin(self) -> bool:
        return self._allows(ADMIN_SCOPE, "*")

    def may_list_catalog(self) -> bool:
        return self.admin or self._allows(CATALOG_SCOPE, "*")

    def catalog_filter(self) -> Callable[[str], bool] | None:
        # Our own tokens name one of our users: list what the rules let them pull. An outside token
        # server granted the catalog scope knowing its users; it sees the whole catalog.
        rules = self.rules
        if self.admin or not self.token.ours or rules is None:
            return None
        who = rules.identity(self.user)
        return lambda repo: rules.may(who, repo, Action.PULL)

    def mount_filter(self) -> Callable[[RepositoryName], bool] | None:
        if self.admin:
            return None
        return lambda repo: self.may(repo.value, Action.PULL)


@dataclass
class Access:
    """The registry's access configuration, as the middleware needs it."""

    mode: str                       # htpasswd | token
    rules: Callable[[], AccessRules]
    login: object | None            # domain Login use-case (htpasswd mode)
    tokens: object | None           # a TokenVerifier (token mode)
    realm: str | None
    service: str
    certificate_user: Callable[[Request], str | None] | None = None


_SAFE_HOST = re.compile(r"[A-Za-z0-9.\-]+(?::\d{1,5})?|\[[0-9A-Fa-f:.]+\](?::\d{1,5})?")


def _realm(access: Access, request: Request) -> str:
    if access.realm:
        return access.realm
    host = request.host
    if not _SAFE_HOST.fullmatch(host or ""):
        # No usable name in the Host header: the address the client reached. (request.server_port
        # reads the Host header too, and answered 80 for any Host without a port.)
        conn = request.conn_info
        host = conn.server if conn is not None and conn.server_port else "127.0.0.1"
    return f"{request.scheme}://{host}/auth/token"


# RFC 6750 3: an error_description holds printable ASCII but '"' and '\\'.
_NOT_IN_DESCRIPTION = re.compile(r'[^\x20\x21\x23-\x5b\x5d-\x7e]')


def _challenge(access: Access, request: Request, need: Need, repo: str | None, error: str | None,
               description: str | None = None) -> str:
    if access.mode == "htpasswd":
        return f'Basic realm="{access.service}", charset="UTF-8"'
    parts = [f'realm="{_realm(access, request)}"', f'service="{access.service}"']
    if need in _CHALLENGE_ACTIONS and repo is not None:
        parts.append(f'scope="repository:{repo}:{_CHALLENGE_ACTIONS[need]}"')
    elif need is Need.CATALOG:
        parts.append('scope="registry:catalog:*"')
    elif need is Need.ADMIN:
        parts.append('scope="registry:admin:*"')
    if error:
        parts.append(f'error="{error}"')
        if description:  # docker and containers/image print it rather than a generic "access denied"
            parts.append(f'error_description="{_NOT_IN_DESCRIPTION.sub(chr(39), description)}"')
    return "Bearer " + ",".join(parts)


def _detail(need: Need, repo: str | None) -> list[dict[str, str]]:
    if repo is not None and need in _CHALLENGE_ACTIONS:
        return [{"Type": "repository", "Class": "", "Name": repo, "Action": need.value}]
    if need is Need.CATALOG:
        return [{"Type": "registry", "Class": "", "Name": "catalog", "Action": "*"}]
    if need is Need.ADMIN:
        return [{"Type": "registry", "Class": "", "Name": "admin", "Action": "*"}]
    return []


def _unauthorized(access: Access, request: Request, need: Need, repo: str | None, message: str,
                  error: str | None = None) -> HTTPResponse:
    return error_response(401, "UNAUTHORIZED", message, _detail(need, repo),
                          {"WWW-Authenticate": _challenge(access, request, need, repo, error, message)})


def credentials(request: Request) -> tuple[str, str] | None:
    """(scheme in lower case, value) of the Authorization header; None without one."""
    header = request.headers.get("authorization")
    if not header:
        return None
    if header.startswith("Bearer "):  # what token clients send, taken apart without copies
        return "bearer", header[7:].strip()
    scheme, _, value = header.strip().partition(" ")
    return scheme.lower(), value.strip()


# skopeo, podman and buildah (containers/image) send "Basic Og==", an empty user and password, when they
# have no credentials: an anonymous caller, not a failed login, here and at the token endpoint alike.
NO_CREDENTIALS = ("", "")


def decode_basic(value: str) -> tuple[str, str] | None:
    """(user, password) from a Basic value; None when it is not base64 of user:password."""
    try:
        text = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    user, sep, password = text.partition(":")
    return (user, password) if sep else None


async def _identify(access: Access, request: Request) -> Caller:
    """The caller, or Unauthorized when credentials are given and wrong."""
    given = credentials(request)
    if given is not None:
        scheme, value = given
        if scheme == "bearer" and access.tokens is not None:
            return TokenCaller(access.tokens.verify(value), access.rules)
    rules = access.rules()
    if given is not None:
        if scheme == "basic" and access.login is not None:
            pair = decode_basic(value)
            if pair is None:
                raise Unauthorized("the Basic credentials are not base64 of user:password")
            if pair != NO_CREDENTIALS:
                request.login_failed = pair[0]  # until the login succeeds
                who = await access.login(pair[0], pair[1], client_address(request))
                request.login_failed = None
                return RulesCaller(who, rules)
        # Another scheme than the mode's: as if none were given, so the challenge says which to use.
    if access.certificate_user is not None:
        user = access.certificate_user(request)
        if user is not None and valid_user_name(user):
            return RulesCaller(rules.identity(user), rules)
    if access.mode == "token":
        return TokenCaller(VerifiedToken(None, {}, float("inf"), ours=True), access.rules, has_token=False)
    return RulesCaller(rules.identity(None), rules)


_NEED_OF_ROUTE: dict[str, Need] = {}  # Sanic's route name ("<app>.<blueprint>.<handler>") -> its need


def _need(request: Request) -> Need | None:
    route = request.route
    if route is None:
        return None
    need = _NEED_OF_ROUTE.get(route.name)
    if need is None:
        key = route.name.split(".", 1)[1] if "." in route.name else route.name
        need = _NEED_OF_ROUTE[route.name] = NEEDS.get(key, Need.ADMIN)
    return need


def _repository(request: Request) -> str | None:
    raw = request.match_info.get("repo")
    if raw is None:
        return None
    try:
        return RepositoryName.parse(raw).value
    except NameInvalid:
        return None  # the handler answers NAME_INVALID; no repository of that name can exist


async def authorize(request: Request) -> HTTPResponse | None:
    need = _need(request)
    if need is None:
        return None  # no such route: Sanic answers 404
    request.caller = OPEN
    if need is Need.PUBLIC:
        return None
    access: Access = request.app.ctx.access
    repo = _repository(request)
    try:
        caller = await _identify(access, request)
    except Unauthorized as err:
        return _unauthorized(access, request, need, repo, err.message,
                             "invalid_token" if access.mode == "token" else None)
    except TooManyAttempts as err:
        return error_response(429, err.code, err.message, None, {"Retry-After": str(int(err.retry_after) + 1)})
    request.caller = caller
    request.user = caller.user
    if _allowed(caller, need, repo, request):
        return None
    if access.mode == "token" or caller.user is None:
        if caller.user is None:
            message = f"authentication required: log in to {_describe(need, repo)}"
        elif _rules_refuse(caller, need, repo):  # asking again would not help: say so
            message = f"{caller.user} may not {_describe(need, repo)}"
        else:
            message = "authentication required: get a token with the scope in the challenge"
        return _unauthorized(access, request, need, repo, message,
                             "insufficient_scope" if caller.has_token else None)
    return error_response(403, "DENIED", f"{caller.user} may not {_describe(need, repo)}", _detail(need, repo))


def _allowed(caller: Caller, need: Need, repo: str | None, request: Request) -> bool:
    if need is Need.LOGIN:
        return caller.user is not None or caller.has_token or caller is OPEN
    if need is Need.CATALOG:
        return caller.may_list_catalog()
    if need is Need.ADMIN:
        return caller.admin
    if repo is None:
        return True  # an invalid name: the handler answers NAME_INVALID
    return caller.may(repo, need.action)


def _rules_refuse(caller: Caller, need: Need, repo: str | None) -> bool:
    """A token of ours lacks the scope because the rules do not grant it to its user (not because the
    client did not ask for it)."""
    rules = caller.rules if isinstance(caller, TokenCaller) else None
    if rules is None or not caller.token.ours:
        return False
    who = rules.identity(caller.user)
    if rules.is_admin(who):
        return False
    if need is Need.ADMIN:
        return True
    return repo is not None and need in _CHALLENGE_ACTIONS and not rules.may(who, repo, need.action)


def _describe(need: Need, repo: str | None) -> str:
    if need is Need.ADMIN:
        return "run administrative operations (collection, repository deletion)"
    if need is Need.CATALOG:
        return "list the catalog"
    if need is Need.LOGIN:
        return "use the registry"
    return f"{need.value} repository {repo}"


def client_address(request: Request) -> str:
    """The client's address: the socket's peer, or what a trusted proxy says when the app is configured
    to trust one (Sanic's remote_addr parses forwarding headers on every request: asked only then)."""
    ctx = request.app.ctx
    proxied = getattr(ctx, "auth_proxied", None)
    if proxied is None:  # asked once per app: reading Sanic's config costs as much as the rest here
        config = request.app.config
        proxied = ctx.auth_proxied = bool(config.FORWARDED_SECRET or config.REAL_IP_HEADER or config.PROXIES_COUNT)
    if proxied:
        return request.remote_addr or request.ip or "-"
    return request.ip or "-"


def caller_of(request: Request) -> Caller:
    caller = getattr(request, "caller", None)
    return OPEN if caller is None else caller


def install(app: Sanic, access: Access | None) -> None:
    app.ctx.access = access


