"""Registry maintenance in the `_`-prefixed style (no repository name component can start with `_`):
garbage collection of the whole registry or one repository, and deletion of a repository."""

from __future__ import annotations

import orjson
from sanic import Blueprint, HTTPResponse, Request

from .params import flag, name

bp = Blueprint("gc")


async def _collect(request: Request, repo: str | None) -> HTTPResponse:
    report = await request.app.ctx.container.collect_garbage()(
        name(repo) if repo else None, dry_run=flag(request, "dry_run"),
        delete_untagged=flag(request, "delete_untagged"))
    return HTTPResponse(orjson.dumps(report.to_json()), content_type="application/json")


@bp.route("/v2/_gc", methods=["POST"])
async def collect_all(request: Request) -> HTTPResponse:
    return await _collect(request, None)


@bp.route("/v2/<repo:path>/_gc", methods=["POST"])
async def collect_repository(request: Request, repo: str) -> HTTPResponse:
    return await _collect(request, repo)


@bp.route("/v2/<repo:path>/_repository", methods=["DELETE"])
async def delete_repository(request: Request, repo: str) -> HTTPResponse:
    await request.app.ctx.container.delete_repository()(name(repo))
    return HTTPResponse(status=202, headers={"Content-Length": "0"})
