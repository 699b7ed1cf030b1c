from __future__ import annotations

from sanic import Blueprint, HTTPResponse, Request

from domain.digest import Digest

from .params import Response, byte_range, name, no_body, send_stream
from .sendfile import small_body

bp = Blueprint("blobs")


def _headers(digest: str, length: int) -> dict[str, str]:
    return {"Docker-Content-Digest": digest, "Content-Length": str(length), "Accept-Ranges": "bytes",
            "ETag": f'"{digest}"', "Cache-Control": "max-age=31536000"}


@bp.route("/v2/<repo:path>/blobs/<digest>", methods=["GET", "HEAD"])
async def get_blob(request: Request, repo: str, digest: str) -> HTTPResponse | None:
    blob_digest = Digest.parse(digest)
    wanted = byte_range(request)
    head = request.method == "HEAD"
    content = await request.app.ctx.container.read_blob()(name(repo), blob_digest, wanted, with_body=not head)
    headers = _headers(digest, content.length)  # Digest.parse takes only the canonical text: str() of it
    status = 200
    if wanted is not None:
        status = 206
        headers["Content-Range"] = f"bytes {content.start}-{content.end}/{content.size}"
    if head:
        return Response(status=status, headers=headers, content_type="application/octet-stream")
    body = small_body(content.chunks)
    if body is not None:
        return Response(body, status=status, headers=headers, content_type="application/octet-stream")
    await send_stream(request, status, headers, "application/octet-stream", content.chunks)
    return None


@bp.route("/v2/<repo:path>/blobs/<digest>", methods=["DELETE"])
async def delete_blob(request: Request, repo: str, digest: str) -> HTTPResponse:
    await request.app.ctx.container.delete_blob()(name(repo), Digest.parse(digest))
    return no_body(202)
