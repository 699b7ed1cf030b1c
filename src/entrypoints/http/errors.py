"""The one registry from domain errors to HTTP statuses, and the OCI error body."""

from __future__ import annotations

import errno
import logging

import orjson
from sanic import HTTPResponse, Request
from sanic.exceptions import RequestCancelled, SanicException

from domain import errors as e

from .params import Response

log = logging.getLogger("myregistry")

# Lookup walks the class's MRO, so subclasses inherit their parent's status unless listed.
STATUS: dict[type[e.RegistryError], int] = {
    e.BlobUnknown: 404,
    e.BlobUploadInvalid: 400,
    e.RangeNotSatisfiable: 416,
    e.BlobUploadUnknown: 404,
    e.DigestInvalid: 400,
    e.ManifestBlobUnknown: 400,
    e.ManifestInvalid: 400,
    e.ManifestUnknown: 404,
    e.NameInvalid: 400,
    e.NameUnknown: 404,
    e.SizeInvalid: 400,
    e.TooLarge: 413,
    e.Unsupported: 415,
    e.TagInvalid: 400,
    e.PaginationInvalid: 400,
    e.StorageFailure: 503,
    e.CollectionRunning: 429,
    e.TooManyUploads: 429,
}


def status_of(err: e.RegistryError) -> int:
    for cls in type(err).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_body(code: str, message: str, detail: object = None) -> bytes:
    return orjson.dumps({"errors": [{"code": code, "message": message, "detail": detail}]})


def error_response(status: int, code: str, message: str, detail: object = None,
                   headers: dict[str, str] | None = None) -> HTTPResponse:
    return Response(error_body(code, message, detail), status=status, headers=headers,
                    content_type="application/json")


# Sanic's own errors (routing, protocol, limits) in OCI form, with the spec's codes: an unknown route or
# method is an unsupported operation; a body over a limit is a size error; anything else on our side
# is UNKNOWN (Docker's code for server errors).
def _sanic_code(status: int) -> str:
    if status == 413:
        return "SIZE_INVALID"
    return "UNSUPPORTED" if status < 500 else "UNKNOWN"


def _close_if_body_unread(request: Request) -> None:
    """Refused before its body was all read (too large, say): answer with `Connection: close`, since
    the rest of the body is not read and the connection cannot carry another request."""
    http = getattr(request, "stream", None)
    if http is not None and getattr(http, "request_body", None) and hasattr(http, "keep_alive"):
        http.keep_alive = False


def install(app) -> None:
    @app.exception(e.RegistryError)
    async def registry_error(request: Request, err: e.RegistryError) -> HTTPResponse:
        _close_if_body_unread(request)
        status = status_of(err)
        if status >= 500:
            log.error("%s %s failed: %s", request.method, request.path[:200], err.message)
        return error_response(status, err.code, err.message, err.detail)

    @app.exception(RequestCancelled)
    async def cancelled(request: Request, err: BaseException) -> HTTPResponse:
        # The client hung up mid-request; nobody reads this answer. 499 (nginx's "client closed
        # request") keeps such requests apart from our failures in the access log.
        return error_response(499, "UNKNOWN", "the client closed the connection before the request was complete")

    @app.exception(SanicException)
    async def sanic_error(request: Request, err: SanicException) -> HTTPResponse:
        _close_if_body_unread(request)
        status = getattr(err, "status_code", 500) or 500
        if status == 404:
            message = f"no such endpoint: {request.method} {request.path[:200]} (see the OCI distribution spec)"
        elif status == 405:
            message = f"method {request.method} is not allowed on {request.path[:200]}"
        else:
            message = str(err) or "request failed"
        headers = dict(getattr(err, "headers", None) or {})
        return error_response(status, _sanic_code(status), message, None, headers)

    @app.exception(OSError)
    async def os_error(request: Request, err: OSError) -> HTTPResponse:
        # A storage call the adapter did not translate (a full disk while creating a directory, an I/O
        # error): still the storage's fault, not a bug, and the operator needs the errno.
        if isinstance(err, ConnectionError):  # the client went away; nobody is left to answer
            return await cancelled(request, err)
        _close_if_body_unread(request)
        log.error("storage failure handling %s %s: %s", request.method, request.path[:200], err)
        hint = " (the disk is full: free space under STORAGE_ROOT)" if err.errno == errno.ENOSPC else ""
        return error_response(503, "UNKNOWN", f"the registry's storage failed: {err.strerror or err}{hint}")

    @app.exception(Exception)
    async def unexpected(request: Request, err: Exception) -> HTTPResponse:
        log.exception("unexpected error handling %s %s", request.method, request.path[:200])
        rid = getattr(request, "request_id", "-")
        return error_response(500, "UNKNOWN", f"internal error; the registry's log has the details under "
                                              f"request id {rid}")
