from __future__ import annotations

import orjson
from sanic import Blueprint, HTTPResponse, Request

from .responses import Response

bp = Blueprint("health")


def _json(body: dict, status: int = 200) -> HTTPResponse:
    return Response(orjson.dumps(body), status=status, content_type="application/json")


@bp.route("/health/live", methods=["GET", "HEAD"])
async def live(request: Request) -> HTTPResponse:
    return _json({"status": "ok"})


@bp.route("/health/ready", methods=["GET", "HEAD"])
@bp.route("/health", methods=["GET", "HEAD"], name="health")
async def ready(request: Request) -> HTTPResponse:
    try:
        await request.app.ctx.container.check_readiness()()
    except Exception as err:  # any failure means "not ready", and says why
        return _json({"status": "unavailable", "checks": {"storage": f"not writable: {err}"}}, 503)
    return _json({"status": "ok", "checks": {"storage": "writable"}})
