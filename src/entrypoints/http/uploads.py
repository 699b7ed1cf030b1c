from __future__ import annotations

from sanic import Blueprint, HTTPResponse, Request

from domain.digest import Digest
from domain.names import RepositoryName

from . import metrics
from .auth import caller_of
from .params import body_chunks, content_range, digest_param, drain, has_body, name, no_body, upload_headers

bp = Blueprint("uploads")
# Uploads in progress (a gauge): counted from here, after routing and the access check, to the end of
# the request (logs.finish). A middleware of this blueprint only: other routes pay nothing for it.
bp.on_request(metrics.upload_started)


def _created(repo: RepositoryName, digest: Digest) -> HTTPResponse:
    return no_body(201, {"Location": f"/v2/{repo}/blobs/{digest}", "Docker-Content-Digest": str(digest)})


@bp.route("/v2/<repo:path>/blobs/uploads/", methods=["POST"], stream=True)
async def start_upload(request: Request, repo: str) -> HTTPResponse:
    repo_name = name(repo)
    uc = request.app.ctx.container
    if "mount" in request.args:
        digest = digest_param(request, "mount")
        source = request.args.get("from")
        source_name = name(source) if source else None
        if await uc.mount_blob()(repo_name, digest, source_name, caller_of(request).mount_filter()) is not None:
            await drain(request)  # clients send an empty body; read it so the connection stays usable
            return _created(repo_name, digest)
        # A refused mount becomes an ordinary session, as every client expects.
    elif "digest" in request.args:
        digest = digest_param(request)
        await uc.upload_blob()(repo_name, digest, body_chunks(request))
        return _created(repo_name, digest)
    await drain(request)
    session = await uc.start_upload()(repo_name)
    return no_body(202, upload_headers(repo_name, session.upload_id, 0))


@bp.route("/v2/<repo:path>/blobs/uploads/<upload_id>", methods=["PATCH"], stream=True)
async def append_upload(request: Request, repo: str, upload_id: str) -> HTTPResponse:
    repo_name = name(repo)
    chunk_range = content_range(request)
    start = chunk_range[0] if chunk_range else None
    status = await request.app.ctx.container.append_upload()(repo_name, upload_id, body_chunks(request), start)
    return no_body(202, upload_headers(repo_name, upload_id, status.size))


@bp.route("/v2/<repo:path>/blobs/uploads/<upload_id>", methods=["PUT"], stream=True)
async def complete_upload(request: Request, repo: str, upload_id: str) -> HTTPResponse:
    repo_name = name(repo)
    digest = digest_param(request)
    chunk_range = content_range(request)
    chunks = body_chunks(request) if has_body(request) else None
    await request.app.ctx.container.complete_upload()(
        repo_name, upload_id, digest, chunks, chunk_range[0] if chunk_range else None)
    await drain(request)
    return _created(repo_name, digest)


@bp.route("/v2/<repo:path>/blobs/uploads/<upload_id>", methods=["GET"])
async def upload_status(request: Request, repo: str, upload_id: str) -> HTTPResponse:
    repo_name = name(repo)
    status = await request.app.ctx.container.get_upload_status()(repo_name, upload_id)
    return no_body(204, upload_headers(repo_name, upload_id, status.size))


@bp.route("/v2/<repo:path>/blobs/uploads/<upload_id>", methods=["DELETE"])
async def cancel_upload(request: Request, repo: str, upload_id: str) -> HTTPResponse:
    await request.app.ctx.container.cancel_upload()(name(repo), upload_id)
    return no_body(204)
