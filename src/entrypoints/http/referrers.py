from __future__ import annotations

from sanic import Blueprint, HTTPResponse, Request

from domain.digest import Digest
from domain.manifest import OCI_INDEX

from .params import name
from .responses import Response

bp = Blueprint("referrers")


@bp.route("/v2/<repo:path>/referrers/<digest>", methods=["GET"])
async def list_referrers(request: Request, repo: str, digest: str) -> HTTPResponse:
    artifact_type = request.args.get("artifactType") or None
    body = await request.app.ctx.container.list_referrers()(name(repo), Digest.parse(digest), artifact_type)
    headers = {"OCI-Filters-Applied": "artifactType"} if artifact_type else {}
    return Response(body, content_type=OCI_INDEX, headers=headers)
