from __future__ import annotations

import orjson
from sanic import Blueprint, HTTPResponse, Request

from domain.pagination import parse_page_size

from .auth import caller_of
from .params import Response, next_link

bp = Blueprint("base")


@bp.route("/v2/", methods=["GET", "HEAD"])
async def api_version(request: Request) -> HTTPResponse:
    return Response(b"{}", content_type="application/json")


@bp.route("/v2/_catalog", methods=["GET"])
async def catalog(request: Request) -> HTTPResponse:
    n = parse_page_size(request.args.get("n"))
    visible = caller_of(request).catalog_filter()
    page = await request.app.ctx.container.list_repositories()(n, request.args.get("last"), visible)
    return Response(orjson.dumps({"repositories": page.items}), content_type="application/json",
                        headers=next_link("/v2/_catalog", n, page.next_last))
