"""Registry maintenance in the `_`-prefixed style (no repository name component can start with `_`):
garbage collection of the whole registry or one repository, and deletion of a repository.

`POST /v2/_gc` (or `/v2/<name>/_gc`) answers 200 with the report when the collection ends; with
`?wait=false` it answers 202 as soon as the collection has begun, with `Location: /v2/_gc/jobs/<id>`,
where `GET` gives its state, progress and, once done, the report. Either way the collection runs off
the worker's event loop (gc_jobs.py), and a collection already running is 429 TOOMANYREQUESTS."""

from __future__ import annotations

import orjson
from sanic import Blueprint, HTTPResponse, Request

from domain.jobs import is_job_id

from . import gc_jobs
from .errors import error_response
from .params import flag, name
from .responses import Response

bp = Blueprint("gc")


def _json(body: dict, status: int = 200, headers: dict[str, str] | None = None) -> HTTPResponse:
    return Response(orjson.dumps(body), status=status, headers=headers, content_type="application/json")


def _waits(request: Request) -> bool:
    """`wait` defaults to true; `wait=false` (or 0, no, off) asks for a job."""
    return "wait" not in request.args or flag(request, "wait")


async def _collect(request: Request, repo: str | None) -> HTTPResponse:
    ctx = request.app.ctx
    repository = name(repo) if repo else None
    dry_run, delete_untagged = flag(request, "dry_run"), flag(request, "delete_untagged")
    if _waits(request):
        report = await gc_jobs.collect(ctx.container, ctx.settings, repository, dry_run=dry_run,
                                       delete_untagged=delete_untagged)
        return _json(report)
    job = await gc_jobs.start_job(ctx.container, ctx.settings, repository, dry_run=dry_run,
                                  delete_untagged=delete_untagged)
    return _json(gc_jobs.job_view(job), 202, {"Location": f"/v2/_gc/jobs/{job.id}"})


@bp.route("/v2/_gc", methods=["POST"])
async def collect_all(request: Request) -> HTTPResponse:
    return await _collect(request, None)


@bp.route("/v2/_gc/jobs/<job_id>", methods=["GET"])
async def job_state(request: Request, job_id: str) -> HTTPResponse:
    job = await gc_jobs.load(request.app.ctx.container, job_id) if is_job_id(job_id) else None
    if job is None:
        return error_response(404, "JOB_UNKNOWN", f"no garbage collection job {job_id[:64]!r} (only recent jobs "
                                                  "are kept)", {"job": job_id[:64]})
    return _json(gc_jobs.job_view(job))


@bp.route("/v2/<repo:path>/_gc", methods=["POST"])
async def collect_repository(request: Request, repo: str) -> HTTPResponse:
    return await _collect(request, repo)


@bp.route("/v2/<repo:path>/_repository", methods=["DELETE"])
async def delete_repository(request: Request, repo: str) -> HTTPResponse:
    await request.app.ctx.container.delete_repository()(name(repo))
    return Response(status=202, headers={"Content-Length": "0"})
