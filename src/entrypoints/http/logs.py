"""Request ids and one JSON log line per request. Every log line written while a request is handled
carries its id (a context variable read by a logging filter).

No credential reaches the log: request headers are never logged; query parameters whose name says
they hold a secret (`password`, `*_token`, `*secret`, `*key`, `auth*`, `signature`, ...) are logged as
`[redacted]`, and anything shaped like a JWT or an `Authorization` value (`Bearer ...`, `Basic ...`) in
any line is replaced the same way."""

from __future__ import annotations

import asyncio
import atexit
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
from .responses import Response

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
_PLAIN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "NONE"})
REDACTED = "[redacted]"


def _may_hold_secret(text: str) -> bool:
    """`_MAY_HOLD_SECRET.search(text)`, or a false alarm; a tenth of the regex's cost on a short text."""
    lowered = text.lower()
    return "eyj" in lowered or "bearer" in lowered or "authorization" in lowered


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
    return f"{_id_prefix}{next(_id_count):016x}"  # 2**32 to start: 16 digits for ever


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


class _OrderedHandler(logging.StreamHandler):
    """Writes a log line after the access lines still waiting in this process (see `finish`), so a
    worker's lines come out in the order they were made."""

    def emit(self, record: logging.LogRecord) -> None:
        if _pending:
            flush_pending(end_of_turn=False)
        super().emit(record)


def configure_logging(level: str) -> None:
    handler = _OrderedHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    for name in ("myregistry", "sanic.error", "sanic.root", "sanic.server"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False


def begin(request: Request) -> None:
    """A request's bookkeeping, when Sanic makes its Request (protocol.RegistryRequest): its id, which
    every line logged while it is handled carries and its answer returns in X-Request-ID."""
    given = request.headers.get("x-request-id")
    if given and _SANE_ID.fullmatch(given) and _MAY_HOLD_SECRET.search(given) is None:
        rid = given  # a client's own id (never one shaped like a token: it would be logged and echoed)
    else:
        rid = new_request_id()
    request.request_id = rid
    request_id_var.set(rid)


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


# Access lines (and the metrics of their requests) waiting for the end of the event loop's turn, and
# the loop whose turn it is (None: no turn has begun writing).
_pending: list[tuple] = []
_turn_loop: asyncio.AbstractEventLoop | None = None
_BATCH_MAX = 64


def finish(request: Request, status: int, nbytes: int | None) -> None:
    """The request's answer is complete (or abandoned): its access line and metrics, once.

    The first request finished in a turn of the event loop is written at once, before its answer
    goes out; the others finished in the same turn (a busy worker answers several per turn) wait in
    `_pending` and are written together at the end of the turn, microseconds later: one write and
    one burst of formatting for all of them instead of one each (a tenth of a small request's CPU
    under load, measured). A client sending one request at a time finds its line in the log when its
    answer arrives, as before. A kill -9 can lose the lines of the answers of the last turn."""
    global _turn_loop
    if getattr(request, "logged", False):
        return
    request.logged = True
    now = time.perf_counter()
    arrived, loop = arrival(request)
    record = (request, status, nbytes, now - (arrived or now), time.time())
    if loop is None or not loop.is_running():  # the protocol's loop stopped or closed: no turn will end
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a script, a stopped server): nothing to wait for
            _write((record,))
            return
    if loop is _turn_loop:
        _pending.append(record)
        if len(_pending) >= _BATCH_MAX:
            flush_pending(end_of_turn=False)
        return
    flush_pending()  # lines left by a loop that stopped before its turn ended
    _turn_loop = loop
    loop.call_soon(flush_pending)
    _write((record,))


def flush_pending(end_of_turn: bool = True) -> None:
    """Write the access lines waiting in this process: at the end of the loop's turn, before any other
    log line, before a scrape, and at exit."""
    global _turn_loop
    if end_of_turn:
        _turn_loop = None
    if _pending:
        batch = tuple(_pending)
        _pending.clear()
        _write(batch)


def _write(batch: tuple) -> None:
    logging_on = access.isEnabledFor(_INFO)
    lines = []
    for request, status, nbytes, elapsed, epoch in batch:
        metrics.observe(request, status, nbytes, elapsed)
        if logging_on:
            data = _access_line(request, status, nbytes, elapsed, epoch)
            lines.append(data if len(data) <= _PIPE_BUF else _shortened(data))
    metrics.publish()
    if not lines:
        return
    fd = _stdout_fileno()
    if fd < 0:
        for data in lines:
            line = orjson.loads(data)
            access.info("request", extra={"request_id": line["request_id"], "fields": line})
        return
    # Writes of at most PIPE_BUF bytes, cut between lines: a pipe never interleaves two workers' lines.
    chunk = b""
    try:
        for data in lines:
            if chunk and len(chunk) + len(data) > _PIPE_BUF:
                _write_all(fd, chunk)
                chunk = b""
            chunk += data
        _write_all(fd, chunk)
    except OSError:
        pass  # a closed or full log pipe must not fail requests


_PIPE_BUF = 4096
_CLIENT_FIELDS = ("path", "query", "method", "user", "login_failed", "remote")
_SHORT = 80  # characters kept of each client field of a line too long for one atomic write


def _shortened(data: bytes) -> bytes:
    """A line longer than PIPE_BUF (a 7 KB path, say) with its client fields cut, marked `truncated`:
    every line goes out in one write of at most PIPE_BUF bytes, which a pipe never interleaves with
    another worker's (even escaped six bytes a character, the cut fields fit)."""
    line = orjson.loads(data)
    for key in _CLIENT_FIELDS:
        value = line.get(key)
        if isinstance(value, str) and len(value) > _SHORT:
            line[key] = value[:_SHORT]
    line["truncated"] = True
    return orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


# The access line of an ordinary request (no query, no refused login, a usual method, no proxy), as
# `_access_line_of_any` makes it, from a template: a third of the cost (tests/unit/test_hot_path.py
# compares the two). Only the path and the user are a client's text, and orjson escapes them.
_LINE = (b'{"time":"%b.%03dZ","level":"INFO","logger":"myregistry.access","pid":%d,"request_id":"%b",'
         b'"message":"request","method":"%b","path":%b,"status":%d,"bytes":%b,"duration_ms":%.3f,'
         b'"remote":"%b","user":%b}\n')


def _access_line(request: Request, status: int, nbytes: int | None, elapsed: float, epoch: float) -> bytes:
    app = request.app
    proxied = getattr(app.ctx, "logs_proxied", None)
    if proxied is None:
        proxied = _proxied(app)
    method, path, user = request.method, request.path, getattr(request, "user", None)
    if (proxied or method not in _PLAIN_METHODS or request.query_string
            or getattr(request, "login_failed", None) is not None):
        return _access_line_of_any(request, status, nbytes, elapsed, epoch, proxied)
    second = int(epoch)
    data = _LINE % ((_stamp_prefix if second == _stamp_second else _stamp_of(second)).encode(),
                    int(epoch % 1 * 1000), _pid, getattr(request, "request_id", "-").encode(), method.encode(),
                    orjson.dumps(path), status, b"null" if nbytes is None else b"%d" % nbytes, elapsed * 1000,
                    request.ip.encode(), b"null" if user is None else orjson.dumps(user))
    if _may_hold_secret(path) or (user is not None and _may_hold_secret(user)):
        data = _redact_bytes(data)
    return data


def _access_line_of_any(request: Request, status: int, nbytes: int | None, elapsed: float, epoch: float,
                        proxied: bool) -> bytes:
    """The access line of any request, made as a dict and dumped by orjson."""
    method, path, user = request.method, request.path, getattr(request, "user", None)
    line = {"time": timestamp(epoch), "level": "INFO", "logger": "myregistry.access", "pid": _pid,
            "request_id": getattr(request, "request_id", "-"), "message": "request", "method": method,
            "path": path, "status": status, "bytes": nbytes, "duration_ms": round(elapsed * 1000, 3),
            "remote": (request.remote_addr or request.ip) if proxied else request.ip, "user": user}
    # Where a client's text reaches the line and might be a token: the path, an odd method, the user,
    # a refused login's name, a proxy's address. (The request id never holds one: `begin`; the query
    # is redacted on its own.) Tested on those few short strings, not on the whole line.
    suspect = (_may_hold_secret(path) or method not in _PLAIN_METHODS or proxied
               or (user is not None and _may_hold_secret(user)))
    failed = getattr(request, "login_failed", None)
    if failed is not None:  # the name a refused login gave (an audit trail of guessing)
        line["login_failed"] = failed[:128]
        suspect = True
    query = request.query_string
    if query:  # a mount, a one-request upload and a plain POST differ only here
        line["query"] = redact_query(query[:512])
    data = orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE)
    if suspect:
        data = _redact_bytes(data)
    return data


atexit.register(flush_pending)


def on_response(request: Request, response: HTTPResponse) -> None:
    """Every answer, as Sanic connects it to its request (protocol.RegistryHttp.respond), before its
    headers go out: the request id and API version headers, and the access line unless a body is
    still to be streamed (send_stream finishes those)."""
    rid = getattr(request, "request_id", None)
    if rid is None:  # a request whose making failed before its bookkeeping began
        begin(request)
        rid = request.request_id
    headers = response.headers
    if type(response) is Response:
        response.request_id = rid  # its headers add these as bytes
    else:  # a response made by Sanic or a library
        headers["X-Request-ID"] = rid
        headers["Docker-Distribution-API-Version"] = "registry/2.0"
    if not getattr(request, "streaming", False):
        length = headers.get("content-length")
        finish(request, response.status, int(length) if length else len(response.body or b""))
