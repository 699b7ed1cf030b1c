"""Maintenance inside the server: the catalog index is reconciled at start; garbage collection
(REGISTRY_GC_INTERVAL) and purging of idle upload sessions (REGISTRY_UPLOAD_PURGE_INTERVAL) run
periodically. Every worker schedules them; the collector lock lets one run at a time and the others
skip that round. Both run off the worker's event loop (gc_jobs.py), and a stopping server ends them;
the catalog walk runs in a thread (the adapter's)."""

from __future__ import annotations

import asyncio
import logging

from sanic import Sanic

from domain.errors import CollectionRunning

from ..settings import Settings
from . import gc_jobs

log = logging.getLogger("myregistry.maintenance")


async def _every(seconds: float, job, what: str) -> None:
    try:
        while True:
            await asyncio.sleep(seconds)
            try:
                await job()
            except CollectionRunning:
                log.info("%s skipped: a collection is already running", what)
            except Exception:
                log.exception("%s failed; it will be tried again in %s s", what, seconds)
    except asyncio.CancelledError:
        return  # the server is stopping; nothing to report


def schedule(app: Sanic, settings: Settings) -> None:
    @app.after_server_start
    async def _start(app: Sanic) -> None:
        container = app.ctx.container
        # Reconcile the catalog index now, in the background, rather than on the first catalog request.
        app.add_task(container.refresh_catalog()(), name="catalog-index")
        if settings.gc_interval > 0:
            async def collect() -> None:
                report = await gc_jobs.collect(container, settings, None, dry_run=False, delete_untagged=False)
                log.info("garbage collection", extra={"fields": {k: v for k, v in report.items() if k != "removed"}})
            app.add_task(_every(settings.gc_interval, collect, "garbage collection"), name="gc")
        if settings.upload_purge_interval > 0:
            async def purge() -> None:
                purged = await gc_jobs.purge(container, settings)
                if purged["uploads"] or purged["debris"]:
                    log.info("purged %d idle upload session(s) and %d leftover(s) of interrupted writes",
                             purged["uploads"], purged["debris"])
            app.add_task(_every(settings.upload_purge_interval, purge, "upload purge"), name="upload-purge")

    @app.before_server_stop
    async def _stop(app: Sanic) -> None:
        await gc_jobs.stop()
