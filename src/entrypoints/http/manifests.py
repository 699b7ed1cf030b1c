from __future__ import annotations

from sanic import Blueprint, HTTPResponse, Request

from domain.errors import TooLarge
from domain.names import parse_reference

from .params import Response, lookup_reference, name, no_body

bp = Blueprint("manifests")


async def _read_limited(request: Request, limit: int) -> bytes:
    """The manifest body, refused as soon as it passes the limit rather than read whole."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"manifest is {declared} bytes; the limit is {limit} (REGISTRY_MAX_MANIFEST_BYTES)")
    body = bytearray()
    while (chunk := await request.stream.read()) is not None:
        body += chunk
        if len(body) > limit:
            raise TooLarge(f"manifest exceeds the limit of {limit} bytes (REGISTRY_MAX_MANIFEST_BYTES)")
    return bytes(body)


@bp.route("/v2/<repo:path>/manifests/<reference>", methods=["GET", "HEAD"])
async def get_manifest(request: Request, repo: str, reference: str) -> HTTPResponse:
    repo_name = name(repo)
    manifest = await request.app.ctx.container.get_manifest()(repo_name, lookup_reference(repo_name, reference))
    digest = str(manifest.digest)
    headers = {"Docker-Content-Digest": digest, "ETag": f'"{digest}"', "Content-Length": str(len(manifest.raw))}
    body = b"" if request.method == "HEAD" else manifest.raw
    return Response(body, headers=headers, content_type=manifest.media_type)


@bp.route("/v2/<repo:path>/manifests/<reference>", methods=["PUT"], stream=True)
async def put_manifest(request: Request, repo: str, reference: str) -> HTTPResponse:
    repo_name, ref = name(repo), parse_reference(reference)
    uc = request.app.ctx.container
    raw = await _read_limited(request, uc.limits().max_manifest_bytes)
    result = await uc.put_manifest()(repo_name, ref, raw, request.headers.get("content-type"))
    headers = {"Location": f"/v2/{repo_name}/manifests/{result.digest}",
               "Docker-Content-Digest": str(result.digest)}
    if result.subject is not None:
        headers["OCI-Subject"] = str(result.subject)
    return no_body(201, headers)


@bp.route("/v2/<repo:path>/manifests/<reference>", methods=["DELETE"])
async def delete_manifest(request: Request, repo: str, reference: str) -> HTTPResponse:
    repo_name = name(repo)
    await request.app.ctx.container.delete_manifest()(repo_name, lookup_reference(repo_name, reference))
    return no_body(202)
