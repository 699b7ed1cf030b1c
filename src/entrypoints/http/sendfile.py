"""Zero-copy blob bodies: os.sendfile from the blob's file straight to the client's socket.

Sanic has no sendfile path, and copying 1 MiB pieces through Python cost more CPU than Distribution's
Go sendfile. An adapter that keeps blobs in local files marks the stream it returns with a
`file_region` (path, offset, length); this module sends such a region with sendfile on the event
loop, waiting for the socket to become writable through a duplicate of its descriptor (uvloop refuses
to watch a descriptor its transport owns). Whenever something is not as expected (no socket, TLS, a
Sanic without the attribute we rely on, an error before the first byte), the caller falls back to
sending the stream piece by piece."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from sanic import Request
from sanic.response import ResponseStream

CHUNK = 8 << 20  # bytes per sendfile call
# Bodies up to this size are read and sent with their headers in one write: for a config blob or a
# small layer, duplicating the socket, a sendfile call and the separate write of the headers cost more
# than the copy they save. Larger ones always go out with sendfile (or piece by piece where it cannot).
SMALL_BODY = 64 << 10
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)


def file_region(chunks: Any) -> tuple[str, int, int] | None:
    region = getattr(chunks, "file_region", None)
    return region if isinstance(region, tuple) and len(region) == 3 else None


def small_body(chunks: Any) -> bytes | None:
    """The whole body when the stream is a file region of at most SMALL_BODY bytes that reads back
    whole; None otherwise (send the stream as usual: it reports a missing file its own way)."""
    region = file_region(chunks)
    if region is None or region[2] > SMALL_BODY:
        return None
    path, offset, length = region
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError:
        return None
    try:
        data = os.pread(fd, length, offset)
    except OSError:
        return None
    finally:
        os.close(fd)
    return data if len(data) == length else None


def can_sendfile(request: Request) -> bool:
    transport = request.transport
    http = getattr(request, "stream", None)
    # `response_bytes_left` is a slot of Sanic's Http, set only once a response's headers go out: ask
    # the class, not the instance (asking the instance sent every first response on a connection, so
    # every download by a fresh client, piece by piece).
    return (transport is not None and transport.get_extra_info("sslcontext") is None
            and transport.get_extra_info("socket") is not None
            and hasattr(type(http), "response_bytes_left") and hasattr(http, "protocol"))


async def send_region(request: Request, response: ResponseStream, fd: int, offset: int, length: int) -> int:
    """Send `length` bytes of file `fd` from `offset` after the response's headers. Returns the bytes
    sent; raises ConnectionError (its `bytes_sent` saying how many went) when the client goes away."""
    await response.send(b"")  # the status line and headers, through Sanic
    transport = request.transport
    while transport.get_write_buffer_size():  # what Sanic queued must leave first
        await asyncio.sleep(0.0005)
        if transport.is_closing():
            raise ConnectionError("client went away")
    sock = os.dup(transport.get_extra_info("socket").fileno())
    loop = asyncio.get_running_loop()
    protocol = getattr(request.stream, "protocol", None)
    sent = 0
    try:
        while sent < length:
            try:
                n = os.sendfile(sock, fd, offset + sent, min(CHUNK, length - sent))
            except BlockingIOError:
                await _writable(loop, sock)
                continue
            if n == 0:
                raise ConnectionError("blob file ended early")
            sent += n
            if protocol is not None and hasattr(protocol, "_time"):
                protocol._time = time.monotonic()  # progress, as Sanic's own send records it (response timeout)
            if transport.is_closing():
                raise ConnectionError("client went away")
    except ConnectionError as err:
        err.bytes_sent = sent  # for the access line: how much of the body went out
        raise
    finally:
        os.close(sock)
        # Tell Sanic the body went out, so that it ends the response as a normal one.
        request.stream.response_bytes_left -= sent
    return sent


async def _writable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    ready = loop.create_future()
    loop.add_writer(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_writer(fd)


def abandon_response(request: Request) -> None:
    """The client went away in the middle of a body: drop the connection and tell Sanic the response is
    over, so that it neither sends the rest nor reports a response shorter than its Content-Length."""
    http = getattr(request, "stream", None)
    if http is not None and hasattr(type(http), "response_bytes_left"):
        http.keep_alive = False
        http.response_bytes_left = 0
    if request.transport is not None:
        request.transport.abort()
