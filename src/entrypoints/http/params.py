"""Parsing what HTTP carries (path parts, query, Range and Content-Range headers) into domain values,
and the few response shapes the blueprints share."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from urllib.parse import quote

from sanic import HTTPResponse, Request

from domain.digest import Digest
from domain.errors import BlobUploadInvalid, DigestInvalid, ManifestUnknown, SizeInvalid, TagInvalid
from domain.names import Reference, RepositoryName, parse_reference
from domain.usecases.read_blob import ByteRange

from .logs import finish
from .protocol import nothing_sent
from .responses import Response
from .sendfile import abandon_response, can_sendfile, file_region, send_region

_CONTENT_RANGE = re.compile(r"(?:bytes[ =])?(\d{1,19})-(\d{1,19})(?:/(?:\d{1,19}|\*))?")
_RANGE = re.compile(r"bytes=(\d{0,19})-(\d{0,19})")


def name(text: str) -> RepositoryName:
    return RepositoryName.parse(text)


def lookup_reference(repo: RepositoryName, text: str) -> Reference:
    """A manifest reference to read or delete. One that no tag can be names no manifest: 404
    MANIFEST_UNKNOWN (a malformed digest is still DIGEST_INVALID). A PUT parses strictly: TAG_INVALID."""
    try:
        return parse_reference(text)
    except TagInvalid:
        raise ManifestUnknown(f"manifest {text[:200]!r} is not in repository {repo}: no tag can have that name",
                              detail={"name": str(repo), "reference": text[:300]}) from None


def digest_param(request: Request, key: str = "digest") -> Digest:
    values = request.args.getlist(key)
    if not values:
        raise DigestInvalid(f"the {key} query parameter is required", detail={"parameter": key})
    if len(values) > 1:
        raise DigestInvalid(f"the {key} query parameter is given {len(values)} times")
    return Digest.parse(values[0])


def flag(request: Request, key: str) -> bool:
    """A boolean query parameter: present with no value, or true/1/yes."""
    value = request.args.get(key)
    if value is None:
        return key in request.args
    return value.lower() in ("", "1", "true", "yes", "on")


def content_range(request: Request) -> tuple[int, int] | None:
    """The chunk's (start, end) from Content-Range, checked against Content-Length when both are sent."""
    values = request.headers.getall("content-range", [])
    if not values:
        return None
    if len(values) > 1:
        raise BlobUploadInvalid(f"Content-Range is sent {len(values)} times; send it once")
    header = values[0]
    m = _CONTENT_RANGE.fullmatch(header.strip())
    if not m:
        raise BlobUploadInvalid(f"malformed Content-Range {header[:100]!r}: expected <start>-<end>")
    start, end = int(m.group(1)), int(m.group(2))
    if end < start:
        raise BlobUploadInvalid(f"Content-Range {header!r} ends before it starts")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) != end - start + 1:
        raise SizeInvalid(f"Content-Range {header!r} covers {end - start + 1} bytes but Content-Length is {length}")
    return start, end


def byte_range(request: Request) -> ByteRange | None:
    """A single `Range: bytes=` range; anything we do not serve as one range is ignored, per RFC 9110."""
    headers = request.headers
    if "range" not in headers:
        return None
    values = headers.getall("range")
    if len(values) != 1:  # several that may disagree: serve the whole blob
        return None
    header = values[0]
    m = _RANGE.fullmatch(header.strip())
    if not m or (m.group(1) == "" and m.group(2) == ""):
        return None
    first = int(m.group(1)) if m.group(1) else None
    last = int(m.group(2)) if m.group(2) else None
    return ByteRange(first, last)


def has_body(request: Request) -> bool:
    length = request.headers.get("content-length")
    if length is not None:
        return length.strip() not in ("", "0")
    return "chunked" in request.headers.get("transfer-encoding", "").lower()


async def drain(request: Request) -> None:
    """Read and drop an unused streamed body, so the connection can carry the next request."""
    if request.stream is not None:
        while await request.stream.read() is not None:
            pass


async def body_chunks(request: Request) -> AsyncIterator[bytes]:
    """The request body as it arrives; it is never held whole."""
    while True:
        chunk = await request.stream.read()
        if chunk is None:
            return
        yield chunk


def no_body(status: int, headers: dict[str, str] | None = None) -> HTTPResponse:
    """A response without a body. A 204 carries no Content-Length (RFC 9110 forbids a body there, and
    Sanic warns at each one); the others say 0 and name a type (Sanic would send a literal `None`)."""
    headers = dict(headers or {})
    if status == 204:
        headers.pop("Content-Length", None)
        return Response(status=status, headers=headers)
    headers["Content-Length"] = "0"
    return Response(status=status, headers=headers, content_type="text/plain; charset=utf-8")


def upload_location(repo: RepositoryName, upload_id: str) -> str:
    return f"/v2/{repo}/blobs/uploads/{upload_id}"


def upload_headers(repo: RepositoryName, upload_id: str, size: int) -> dict[str, str]:
    headers = {"Location": upload_location(repo, upload_id), "Docker-Upload-UUID": upload_id}
    # "0-0" would claim one byte; an empty session says nothing.
    if size:
        headers["Range"] = f"0-{size - 1}"
    return headers


def next_link(path: str, n: int | None, next_last: str | None) -> dict[str, str]:
    if next_last is None or n is None:
        return {}
    return {"Link": f'<{path}?n={n}&last={quote(next_last, safe="")}>; rel="next"'}


async def send_stream(request: Request, status: int, headers: dict[str, str], content_type: str,
                      chunks: AsyncIterator[bytes] | None) -> None:
    """Send a large body: with sendfile when the store's stream is a local file region, otherwise piece
    by piece from the stream (measured faster than Sanic's file helpers)."""
    request.streaming = True
    sent = 0
    region = file_region(chunks)
    f = None
    if region is not None and can_sendfile(request):
        try:
            f = open(region[0], "rb")  # opened before the headers go: a missing file is still a clean 404
        except OSError:
            f = None
    response = await request.respond(Response(status=status, headers=headers, content_type=content_type))
    logged: int | None = status
    try:
        if f is not None:
            with f:
                sent = await send_region(request, response, f.fileno(), region[1], region[2])
        elif chunks is not None:
            async for chunk in chunks:
                await response.send(chunk)
                sent += len(chunk)
        await response.eof()
    except ConnectionError as err:
        # The client hung up mid-body (a cancelled pull): nothing is wrong here and nothing more can be
        # sent. Logged as 499, like a request cancelled before its answer.
        logged = 499
        sent = getattr(err, "bytes_sent", sent)
        abandon_response(request)
    except Exception:
        if nothing_sent(request):
            # Nothing of this answer went out (the stream failed before its first byte: a blob file gone
            # or unreadable): Sanic's error answer replaces it, and is logged as any answer is.
            request.streaming = False
            logged = None
        raise
    except BaseException:  # cancelled: sent piece by piece (TLS, no local file), a hang-up shows up so
        transport = request.transport
        if transport is None or transport.is_closing():
            logged = 499
        raise
    finally:
        if logged is not None:
            finish(request, logged, sent)
