from __future__ import annotations

import orjson
from sanic import Blueprint, HTTPResponse, Request

from domain.pagination import parse_page_size

from .params import name, next_link
from .responses import Response

bp = Blueprint("tags")


@bp.route("/v2/<repo:path>/tags/list", methods=["GET"])
async def list_tags(request: Request, repo: str) -> HTTPResponse:
    repo_name = name(repo)
    n = parse_page_size(request.args.get("n"))
    page = await request.app.ctx.container.list_tags()(repo_name, n, request.args.get("last"))
    return Response(orjson.dumps({"name": repo_name.value, "tags": page.items}),
                        content_type="application/json",
                        headers=next_link(f"/v2/{repo_name}/tags/list", n, page.next_last))
