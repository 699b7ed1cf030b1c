"""Sanic's HTTP protocol, plus three guards:
- A TLS handshake sent to this plain-HTTP port gets a plain `HTTP/1.1 400` at once. Clients told the
  registry is insecure try HTTPS first; Sanic would wait for the end of headers that never come, and
  the client would fall back to HTTP only after its 10 s TLS timeout (or never, for Docker's CLI).
- A request's line and headers must be complete within `header_timeout` seconds of its first byte.
  Sanic's own timeouts measure silence, so a slowloris client trickling one header byte at a time
  would hold its connection open for ever.
- A connection that timed out is closed, even when its client is stuck in the middle of a body.
And one extension: a chunked request body may end with a trailer section (RFC 9112 7.1.2), which
Sanic 25 refuses; its fields are read and dropped (`RegistryHttp`).

This is the one module that touches Sanic's internals; `sanic_internals_missing` names what it relies on
and tests/integration/test_chunked_trailers.py checks it, so a Sanic upgrade fails there, loudly."""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import time
from collections.abc import Callable

from sanic import Request
from sanic.exceptions import BadRequest, RequestCancelled
from sanic.http import Http, Stage
from sanic.http.http1 import HTTP_CONTINUE
from sanic.server.protocols.http_protocol import HttpProtocol

log = logging.getLogger("myregistry")


# What RegistryHttp uses of Sanic's Http: instance slots, and methods or constants of the class.
_HTTP_SLOTS = ("recv_buffer", "request_body", "request_bytes_left", "expecting_continue", "keep_alive",
               "_send", "_receive_more", "protocol", "request", "url")
_HTTP_MEMBERS = ("read", "respond", "error_response", "create_empty_request", "_safe_int", "HEADER_MAX_SIZE")
_REQUEST_INIT = ["self", "url_bytes", "headers", "version", "method", "transport", "app", "head", "stream_id"]
# Bytes a stand-in request's URL cannot hold (see RegistryHttp.create_empty_request).
_UNSAFE_URL_CHARS = re.compile(r"[\x00-\x20\x7f]")
_CHUNK_SIZE_LINE_MAX = 64  # Sanic's own bound on a chunk-size line (with its extensions)


def install_hooks(begin: Callable[[Request], None], respond: Callable[[Request, object], None]) -> None:
    """The request bookkeeping (logs.begin, logs.on_response), called by RegistryRequest and
    RegistryHttp. Process-wide: every app of a process keeps its books the same way."""
    RegistryRequest.begin = staticmethod(begin)
    RegistryHttp.on_respond = staticmethod(respond)


class RegistryRequest(Request):
    """Sanic's Request, which starts its own bookkeeping (`begin`: the request id every log line of
    the request carries) as it is made. Sanic runs a request middleware for that only after routing,
    and at a cost (a few microseconds of dispatch per request, measured); a request whose routing
    fails, or one Sanic makes to answer a request it could not parse, gets its id the same way.

    What the registry keeps about a request lives in typed slots here, not in Sanic's `ctx` namespace
    (made on first use and reached through a property on every read: about 2 us a request on the
    benchmark's machine, measured):
    - request_id: the id its log lines carry and its answer returns (logs.begin);
    - caller, user: who sent it, once the access check identified them (auth); user is logged;
    - login_failed: the name a login gave, until the login succeeds (logged when it does not);
    - streaming: its body goes out piece by piece, so its access line waits for the end (params);
    - logged: its access line is written (logs.finish), so it is never written twice;
    - metrics_upload: it counts in the uploads-in-progress gauge (metrics)."""

    __slots__ = ("request_id", "caller", "user", "login_failed", "streaming", "logged", "metrics_upload")
    begin: Callable[[Request], None] = staticmethod(lambda request: None)

    def __init__(self, url_bytes: bytes, headers, version: str, method: str, transport, app,
                 head: bytes = b"", stream_id: int = 0) -> None:
        super().__init__(url_bytes, headers, version, method, transport, app, head, stream_id)
        self.caller = self.user = self.login_failed = None
        self.streaming = self.logged = self.metrics_upload = False
        self.begin(self)


def sanic_internals_missing() -> list[str]:
    """What RegistryHttp expects of Sanic and does not find (empty when this Sanic is the one it was
    written against)."""
    slots = {name for cls in Http.__mro__ for name in getattr(cls, "__slots__", ())}
    missing = [f"Http.{name} (slot)" for name in _HTTP_SLOTS if name not in slots]
    missing += [f"Http.{name}" for name in _HTTP_MEMBERS if not hasattr(Http, name)]
    if getattr(HttpProtocol, "HTTP_CLASS", None) is not Http:
        missing.append("HttpProtocol.HTTP_CLASS is Http")
    if list(inspect.signature(Request.__init__).parameters) != _REQUEST_INIT:
        missing.append(f"Request.__init__{tuple(_REQUEST_INIT[1:])}")
    return missing


class RegistryHttp(Http):
    """Sanic's HTTP/1.1 stream, reading the end of a chunked body itself: after the last chunk
    (size 0) comes a trailer section, field lines ended by an empty line, which Sanic 25 refuses with
    400 "Bad chunked encoding" (so `curl -T - -H 'Trailer: ...'` or a Go client sending a checksum
    trailer could not push). The fields are read up to the empty line and dropped (nothing here needs
    them, and RFC 9112 lets a recipient discard them): the whole section is consumed, so none of it can
    be read as a next request on the connection. Each chunk-size line must also follow its chunk's
    data's CRLF, which Sanic assumes without checking. Every other part of the body is Sanic's."""

    __slots__ = ()

    def create_empty_request(self) -> None:
        """To answer a request it could not parse, Sanic builds a stand-in request from the same URL.
        With a control byte (a NUL, say) in that URL the stand-in fails too, and the client got no
        answer at all. The stand-in gets the URL with such bytes percent-escaped (Sanic itself escapes
        the non-ASCII ones), so the client gets the 400 it deserves. A URL no request can have whatever
        its bytes (`GET % HTTP/1.1`, `http://x:port/`) failed the same way, with a traceback logged under
        the previous request's id: its stand-in gets `*`, as a request line that did not parse at all.
        Done here, where only requests that failed pay for it, not in RegistryRequest.__init__."""
        if self.url and _UNSAFE_URL_CHARS.search(self.url):
            self.url = _UNSAFE_URL_CHARS.sub(lambda m: f"%{ord(m.group()):02X}", self.url)
        try:
            super().create_empty_request()
        except BadRequest:  # Sanic's BadURL: the URL does not parse
            self.url = None
            super().create_empty_request()
        if self.request is not None and self.request.conn_info is None:
            self.request.conn_info = self.protocol.conn_info  # the access line names who sent it

    on_respond: Callable[[Request, object], None] | None = None

    def respond(self, response):
        """Every answer passes here as it is connected to its request (handlers', error handlers',
        and Sanic's own), before anything of it is sent: `on_respond` adds the headers every answer
        carries and writes the access line, where a response middleware would cost a few
        microseconds of dispatch on every request."""
        response = super().respond(response)
        if self.on_respond is not None and self.request is not None:
            self.on_respond(self.request, response)
        return response

    async def error_response(self, exception: Exception) -> None:
        """A client that hung up while its answer was going out (RequestCancelled): nothing can reach
        it any more. Sanic would run the exception handlers once more and try to send their answer on
        the dead stream, logging an ERROR with a traceback, and a WARNING, for what is ordinary traffic
        (a client abandoning requests it no longer needs). The request is logged as 499 instead."""
        transport = getattr(self.protocol, "transport", None)
        if isinstance(exception, RequestCancelled) and (transport is None or transport.is_closing()):
            self.keep_alive = False
            self.request_body = None  # the rest of an upload's body will never come: not waited for
            if self.request is not None:
                from .logs import finish  # logs imports this module

                finish(self.request, 499, None)
            return
        await super().error_response(exception)

    async def read(self) -> bytes | None:
        if self.request_body == "chunked" and self.request_bytes_left == 0 and await self._read_last_chunk():
            return None
        return await super().read()

    async def _read_last_chunk(self) -> bool:
        """True when the body ended here (the last chunk and its trailer section are consumed); False
        when the next chunk has data, left for Sanic to read."""
        if self.expecting_continue:
            self.expecting_continue = False
            await self._send(HTTP_CONTINUE)
        buf = self.recv_buffer
        # The buffer holds the CRLF that ends the previous chunk's data (or the headers), then the size line.
        while (end := buf.find(b"\r\n", 2)) == -1:
            if len(buf) > _CHUNK_SIZE_LINE_MAX:
                return False  # Sanic refuses it
            await self._receive_more()
        if buf[:2] != b"\r\n":
            self._refuse("no CRLF after a chunk's data")
        try:
            size = self._safe_int(buf[2:end].split(b";", 1)[0].decode(), 16)
        except Exception:
            return False  # Sanic refuses it
        if size != 0:
            return False
        start = end + 2
        while True:
            end = buf.find(b"\r\n", start)
            if end == -1:
                if len(buf) > self.HEADER_MAX_SIZE:
                    self._refuse("trailer section too large")
                await self._receive_more()
                continue
            if end == start:  # the empty line that ends the trailer section (and the body)
                del buf[: end + 2]
                self.request_body = None
                return True
            field = bytes(buf[start:end])
            if b":" not in field or field[:1] in (b" ", b"\t") or end > self.HEADER_MAX_SIZE:
                self._refuse("a malformed or too large trailer section")
            start = end + 2

    def _refuse(self, why: str) -> None:
        self.keep_alive = False  # the rest of the stream cannot be framed
        raise BadRequest(f"Bad chunked encoding: {why}")


_PLAIN_HTTP_ONLY_BODY = b"This registry serves plain HTTP on this port: use http://, not https://.\n"
_PLAIN_HTTP_ONLY = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n"
                    b"Content-Length: %d\r\n\r\n%b" % (len(_PLAIN_HTTP_ONLY_BODY), _PLAIN_HTTP_ONLY_BODY))


def nothing_sent(request) -> bool:
    """Whether none of the request's answer has gone out yet (its stream is still in the handler's
    stage): an error now can still be answered with an error response of its own."""
    return getattr(request.stream, "stage", None) is Stage.HANDLER


def arrival(request) -> tuple[float | None, asyncio.AbstractEventLoop | None]:
    """When the request's first bytes were read (time.perf_counter), if this protocol served it, and
    the event loop serving it: a request that waited behind a busy event loop is timed from then, not
    from its handler's start. Asked of the request's stream (Sanic's Http), which keeps its protocol:
    a transport whose client hung up no longer knows it (uvloop), and the request would be logged as
    lasting 0 ms. (The loop from here costs less than asyncio.get_running_loop, a getpid system call.)"""
    try:
        protocol = request.stream.protocol
    except AttributeError:  # no stream (any more)
        return None, None
    return getattr(protocol, "_arrived", None), getattr(protocol, "loop", None)


class RegistryHttpProtocol(HttpProtocol):
    __slots__ = ("_seen_first_bytes", "_header_timer", "_arrived")
    HTTP_CLASS = RegistryHttp
    header_timeout: float = 20.0  # set from the settings at start

    def data_received(self, data: bytes) -> None:
        http = getattr(self, "_http", None)
        if http is None or http.stage is Stage.IDLE:
            self._arrived = time.perf_counter()  # a request's first bytes: its duration counts from here
        if not getattr(self, "_seen_first_bytes", False):
            self._seen_first_bytes = True
            self._header_timer = None
            # A TLS record: content type 22 (handshake), version 3.x. Answered in plain HTTP, as Go's
            # server does: Go clients (Docker's `manifest` commands, containerd) fall back to HTTP only
            # on "server gave HTTP response to HTTPS client"; others (skopeo, podman) on any error.
            if len(data) >= 2 and data[0] == 0x16 and data[1] == 0x03:
                if self.transport is not None:
                    self.transport.write(_PLAIN_HTTP_ONLY)
                    self.transport.close()
                return
        super().data_received(data)
        http = getattr(self, "_http", None)
        if self._header_timer is None and http is not None and http.stage in (Stage.IDLE, Stage.REQUEST):
            self._header_timer = self.loop.call_later(
                self.header_timeout, self._headers_due, self.state["requests_count"])

    def _headers_due(self, requests_before: int) -> None:
        self._header_timer = None
        http = getattr(self, "_http", None)
        if http is None or self.transport is None or self.transport.is_closing():
            return
        if self.state["requests_count"] == requests_before and http.stage in (Stage.IDLE, Stage.REQUEST):
            peer = self.transport.get_extra_info("peername")
            log.warning("closing a connection from %s: its request headers took over %s s "
                        "(REGISTRY_HEADER_TIMEOUT)", peer[0] if peer else "?", self.header_timeout)
            self.transport.abort()

    def check_timeouts(self) -> None:
        """Sanic's check, which on a timeout cancels the request and answers 503, then stops checking.
        If the client then goes silent in the middle of its body, Sanic waits for the rest of that body
        for ever; so a connection that timed out is closed for good a second later."""
        before = getattr(self, "_callback_check_timeouts", None)
        super().check_timeouts()
        if getattr(self, "_callback_check_timeouts", None) is before and self.transport is not None:
            self.loop.call_later(1.0, self._close_for_good)

    def _close_for_good(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)
