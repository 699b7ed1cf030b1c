"""The built-in token endpoint (REGISTRY_AUTH=token without an external token server), as Docker's
token authentication spec has it:

- `GET /auth/token?service=...&scope=...` with Basic credentials, or none for an anonymous token
  (`offline_token=true` adds a refresh token);
- `POST /auth/token`, the OAuth2 form containerd and buildkit send: `grant_type=password` (username,
  password; `access_type=offline` adds a refresh token) or `grant_type=refresh_token`.

A token grants what was asked for and the rules allow; the rest is left out, never an error."""

from __future__ import annotations

import time
from urllib.parse import parse_qs

import orjson
from sanic import Blueprint, HTTPResponse, Request

from domain.access import parse_scopes
from domain.errors import TooManyAttempts, Unauthorized
from domain.ports import IssuedToken

from .auth import NO_CREDENTIALS, client_address, credentials, decode_basic
from .errors import error_response
from .responses import Response

bp = Blueprint("token")
MAX_FORM_BYTES = 64 * 1024


def _issued_at(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _answer(token: IssuedToken, oauth: bool, scope: str | None = None) -> HTTPResponse:
    body: dict[str, object] = {"access_token": token.token, "expires_in": token.expires_in,
                               "issued_at": _issued_at(token.issued_at)}
    if oauth:
        body["token_type"] = "Bearer"
        if scope:
            body["scope"] = scope
    else:
        body["token"] = token.token
    if token.refresh_token:
        body["refresh_token"] = token.refresh_token
    return Response(orjson.dumps(body), content_type="application/json",
                        headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


def _service_mismatch(request: Request, service: str | None) -> HTTPResponse | None:
    wanted = request.app.ctx.access.service
    if service and service != wanted:
        return error_response(400, "UNSUPPORTED", f"this token endpoint issues tokens for service {wanted!r}, "
                                                  f"not {service[:100]!r}")
    return None


def _refused(err: Exception) -> HTTPResponse:
    if isinstance(err, TooManyAttempts):
        return error_response(429, err.code, err.message, None, {"Retry-After": str(int(err.retry_after) + 1)})
    access_realm = 'Basic realm="token", charset="UTF-8"'
    return error_response(401, "UNAUTHORIZED", getattr(err, "message", str(err)), None,
                          {"WWW-Authenticate": access_realm})


def _logged(request: Request, token: IssuedToken) -> IssuedToken:
    """The access log line of a token request names who got the token."""
    request.login_failed = None
    request.user = token.subject
    return token


def _address(request: Request) -> str:
    return client_address(request)


@bp.route("/auth/token", methods=["GET"])
async def get_token(request: Request) -> HTTPResponse:
    mismatch = _service_mismatch(request, request.args.get("service"))
    if mismatch is not None:
        return mismatch
    scopes = parse_scopes(request.args.getlist("scope"))
    issue = request.app.ctx.container.issue_token()
    given = credentials(request)
    pair = decode_basic(given[1]) if given is not None and given[0] == "basic" else None
    try:
        if given is None or pair == NO_CREDENTIALS:
            return _answer(_logged(request, issue.anonymous(scopes)), oauth=False)
        if pair is None:
            raise Unauthorized("send Basic credentials (user:password), or none for an anonymous token")
        account = request.args.get("account")
        if account and account != pair[0]:
            raise Unauthorized("the account parameter names another user than the credentials")
        offline = request.args.get("offline_token", "").lower() == "true"
        request.login_failed = pair[0]  # until the login succeeds
        token = await issue.with_password(pair[0], pair[1], _address(request), scopes, offline)
    except (Unauthorized, TooManyAttempts) as err:
        return _refused(err)
    return _answer(_logged(request, token), oauth=False)


@bp.route("/auth/token", methods=["POST"])
async def post_token(request: Request) -> HTTPResponse:
    if len(request.body) > MAX_FORM_BYTES:
        return error_response(413, "SIZE_INVALID", "the token request form is too large")
    try:
        form = parse_qs(request.body.decode("utf-8"), keep_blank_values=True, max_num_fields=100)
    except (UnicodeDecodeError, ValueError):
        return error_response(400, "UNSUPPORTED", "the body must be an application/x-www-form-urlencoded form")

    def one(key: str) -> str:
        return (form.get(key) or [""])[0]

    mismatch = _service_mismatch(request, one("service"))
    if mismatch is not None:
        return mismatch
    scope_text = " ".join(form.get("scope", []))
    scopes = parse_scopes(form.get("scope", []))
    issue = request.app.ctx.container.issue_token()
    grant_type = one("grant_type")
    try:
        if grant_type == "password":
            request.login_failed = one("username")  # until the login succeeds
            token = await issue.with_password(one("username"), one("password"), _address(request), scopes,
                                              offline=one("access_type") == "offline")
        elif grant_type == "refresh_token":
            token = await issue.with_refresh_token(one("refresh_token"), scopes)
        else:
            return error_response(400, "UNSUPPORTED", f"grant_type {grant_type[:40]!r} is not supported: use "
                                                      "password or refresh_token")
    except (Unauthorized, TooManyAttempts) as err:
        return _refused(err)
    return _answer(_logged(request, token), oauth=True, scope=scope_text)
