"""Request ids and one JSON log line per request. Every log line written while a request is handled
carries its id (a context variable read by a logging filter).

No credential reaches the log: request headers are never logged; query parameters whose name says
they hold a secret (`password`, `*_token`, `*secret`, `*key`, `auth*`, `signature`, ...) are logged as
`[redacted]`, and anything shaped like a JWT or an `Authorization` value (`Bearer ...`, `Basic ...`) in
any line is replaced the same way."""

from __future__ import annotations

import contextvars
import itertools
import logging
import os
import re
import sys
import time

import orjson
from sanic import HTTPResponse, Request

from . import metrics
from .protocol import arrival

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_SANE_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
access = logging.getLogger("myregistry.access")
_INFO = logging.INFO

# A query parameter named like a credential: its value is not logged.
_SECRET_PARAM = re.compile(
    r"(?i)(?<![^&;])((?:[^=&;]*[_.-])?(?:token|password|passwd|pwd|secret|key|auth|authorization|credentials?"
    r"|signature|sig)(?:=|%3D))[^&;]*")
# A JWT (header.payload.signature, the header being base64url JSON: `eyJ...`), an Authorization
# header's value after its name, or a bearer token, wherever they appear.
_JWT = r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.?[A-Za-z0-9_-]*"
_AUTH_VALUE = r"(?i:(authorization[\"']?\s*[:=]\s*[\"']?))[^\"',;&\s}]+(?:[ \t]+[^\"',;&\s}]+)?"
_BEARER = r"(?i:(bearer(?:\s|%20|\+)+))[A-Za-z0-9._~+/=-]{16,}"
_SECRET_TEXT = re.compile(f"{_JWT}|{_AUTH_VALUE}|{_BEARER}")
_SECRET_BYTES = re.compile(_SECRET_TEXT.pattern.encode())
_MAY_HOLD_SECRET = re.compile(r"(?i)eyJ|bearer|authorization")
REDACTED = "[redacted]"


def redact(text: str) -> str:
    """`text` without anything shaped like a token or an Authorization header's value."""
    if _MAY_HOLD_SECRET.search(text) is None:
        return text
    return _SECRET_TEXT.sub(lambda m: (m.group(1) or m.group(2) or "") + REDACTED, text)


def _redact_bytes(data: bytes) -> bytes:
    return _SECRET_BYTES.sub(lambda m: (m.group(1) or m.group(2) or b"") + b"[redacted]", data)


def redact_query(query: str) -> str:
    return redact(_SECRET_PARAM.sub(rf"\1{REDACTED}", query))


_stamp_second = -1
_stamp_prefix = ""


def _stamp_of(second: int) -> str:
    global _stamp_second, _stamp_prefix
    _stamp_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    _stamp_second = second
    return _stamp_prefix


def timestamp(epoch: float) -> str:
    """UTC with milliseconds, as every log line carries it (the part up to the second is made once a
    second)."""
    second = int(epoch)
    prefix = _stamp_prefix if second == _stamp_second else _stamp_of(second)
    return f"{prefix}.{int(epoch % 1 * 1000):03d}Z"


_pid = os.getpid()
# Request ids made here: 32 hex digits, as uuid4().hex, from a random prefix drawn once per process
# and a counter (a random draw per request was a system call on every request). Ids only tell
# requests apart; nothing trusts them.
_id_prefix = os.urandom(8).hex()
_id_count = itertools.count(int.from_bytes(os.urandom(4), "big"))


def _forked() -> None:
    global _pid, _id_prefix, _id_count
    _pid = os.getpid()
    _id_prefix = os.urandom(8).hex()
    _id_count = itertools.count(int.from_bytes(os.urandom(4), "big"))


def new_request_id() -> str:
    return f"{_id_prefix}{next(_id_count) & 0xFFFFFFFFFFFFFFFF:016x}"


os.register_at_fork(after_in_child=_forked)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "request_id": getattr(record, "request_id", request_id_var.get()),
            "message": redact(record.getMessage()),
        }
        extra = getattr(record, "fields", None)
        if extra:
            out.update(extra)
        if record.exc_info:
            out["exception"] = redact(self.formatException(record.exc_info))
        return redact(orjson.dumps(out).decode())


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    for name in ("myregistry", "sanic.error", "sanic.root", "sanic.server"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False


def begin(request: Request) -> None:
    given = request.headers.get("x-request-id")
    rid = given if given and _SANE_ID.fullmatch(given) else new_request_id()
    ctx = request.ctx
    ctx.request_id = rid
    ctx.started = arrival(request) or time.perf_counter()
    ctx.logged = False
    request_id_var.set(rid)
    if request.method in metrics.BODY_METHODS:
        metrics.upload_started(request)


def _proxied(app) -> bool:
    """Whether the app is configured to trust a proxy's word for the client's address (then Sanic's
    remote_addr has it). Asked once per app: remote_addr parses forwarding headers on every request,
    and reading the app's config costs about as much."""
    config = app.config
    proxied = app.ctx.logs_proxied = bool(config.FORWARDED_SECRET or config.REAL_IP_HEADER or config.PROXIES_COUNT)
    return proxied


_stdout = None
_stdout_fd = -1


def _stdout_fileno() -> int:
    """sys.stdout's descriptor (asked again when sys.stdout is another object); -1 when it has none."""
    global _stdout, _stdout_fd
    out = sys.stdout
    if out is not _stdout:
        try:
            _stdout_fd = out.fileno()
        except (AttributeError, ValueError, OSError):  # replaced by something without a descriptor
            _stdout_fd = -1
        _stdout = out
    return _stdout_fd


def finish(request: Request, status: int, nbytes: int | None) -> None:
    """Write the request's access line once, when its response is complete.

    The line has the fields the JSON formatter writes, but skips the logging machinery (a third of a
    small request's cost went there): one dict, one orjson call, one os.write. A single write of a line
    under PIPE_BUF bytes is atomic, so workers sharing stdout never interleave their lines. Lines
    written through logging are flushed by their handler as they are written, so none waits in
    sys.stdout's buffer to come out after this one."""
    ctx = request.ctx
    if getattr(ctx, "logged", True):
        return
    ctx.logged = True
    now = time.perf_counter()
    elapsed = now - (getattr(ctx, "started", None) or now)
    metrics.observe(request, status, nbytes, elapsed)
    if not access.isEnabledFor(_INFO):
        return
    epoch = time.time()
    second = int(epoch)
    app = request.app
    proxied = getattr(app.ctx, "logs_proxied", None)
    if proxied is None:
        proxied = _proxied(app)
    line = {"time": f"{_stamp_prefix if second == _stamp_second else _stamp_of(second)}."
                    f"{int(epoch % 1 * 1000):03d}Z",
            "level": "INFO", "logger": "myregistry.access", "pid": _pid, "request_id": ctx.request_id,
            "message": "request", "method": request.method, "path": request.path, "status": status,
            "bytes": nbytes, "duration_ms": round(elapsed * 1000, 3),
            "remote": (request.remote_addr or request.ip) if proxied else request.ip,
            "user": getattr(ctx, "user", None)}
    failed = getattr(ctx, "login_failed", None)
    if failed is not None:  # the name a refused login gave (an audit trail of guessing)
        line["login_failed"] = failed[:128]
    query = request.query_string
    if query:  # a mount, a one-request upload and a plain POST differ only here
        line["query"] = redact_query(query[:512])
    data = orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE)
    if b"eyJ" in data or b"earer" in data:  # a JWT or a bearer token in the path: the cheap test first
        data = _redact_bytes(data)
    fd = _stdout_fileno()
    if fd < 0:
        access.info("request", extra={"request_id": line["request_id"], "fields": line})
        return
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError:
        pass  # a closed or full log pipe must not fail the request


def on_response(request: Request, response: HTTPResponse) -> None:
    ctx = request.ctx
    rid = getattr(ctx, "request_id", None)
    if rid is None:  # an error before our request middleware ran
        begin(request)
        rid = ctx.request_id
    headers = response.headers
    headers["X-Request-ID"] = rid
    headers["Docker-Distribution-API-Version"] = "registry/2.0"
    if not getattr(ctx, "streaming", False):
        length = headers.get("content-length")
        finish(request, response.status, int(length) if length else len(response.body or b""))
