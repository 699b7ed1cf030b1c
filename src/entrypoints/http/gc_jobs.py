"""Collections and upload purges inside the server run off its event loop, and a client may follow a
collection as a job.

Off the loop: on the filesystem backend each runs in a child process (entrypoints/collector.py says
why a thread is not enough). The memory backend keeps everything in the worker's memory, where no
other process can reach it, and its locks are bound to the worker's loop: there a job runs on that loop
as before (that backend is for tests and scripts). A new backend joins OFF_LOOP_STORAGE once a second
process can work on its storage beside the server (as the CLI does).

Jobs: `start_job` returns once the collection holds the collector lock (its first progress report) or
has ended, so a collection already running is still answered 429; then a task on the worker's loop
saves the job's progress through the GcJobs port, which every worker reads: a client's next request
may reach another worker."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from domain.errors import CollectionRunning, RegistryError
from domain.jobs import DONE, FAILED, RUNNING, GcJob, GcJobs
from domain.names import RepositoryName

from .. import collector
from ..container import Container
from ..settings import Settings
from .metrics import observed_collection

log = logging.getLogger("myregistry.gc")

OFF_LOOP_STORAGE = frozenset({"filesystem"})
PROGRESS_EVERY = 0.5  # seconds between saves of a job's progress
HEARTBEAT_EVERY = 5.0  # a running job's state is saved at least this often, progress or not
STALE_AFTER = 60.0  # a "running" job not saved for this long lost its server (stopped or killed)

Progress = Callable[[str, int, int], None]
_followers: set[asyncio.Task] = set()  # the tasks saving running jobs' states
_stopping = False


def runs_off_loop(settings: Settings) -> bool:
    return settings.storage in OFF_LOOP_STORAGE


@observed_collection  # runs, duration and what it freed, as Prometheus metrics
async def collect(container: Container, settings: Settings, repository: RepositoryName | None, *,
                  dry_run: bool, delete_untagged: bool, progress: Progress | None = None) -> dict[str, Any]:
    """One collection; its report as JSON (GcReport.to_json)."""
    if runs_off_loop(settings):
        await _claimable(container)
        params = {"repository": str(repository) if repository else None, "dry_run": dry_run,
                  "delete_untagged": delete_untagged}
        return await collector.run(settings, "collect", params, progress)
    report = await container.collect_garbage()(repository, dry_run=dry_run, delete_untagged=delete_untagged,
                                               progress=progress)
    return report.to_json()


async def purge(container: Container, settings: Settings) -> dict[str, int]:
    """One purge of idle upload sessions and crash leftovers, under the collector lock."""
    if runs_off_loop(settings):
        await _claimable(container)
        return await collector.run(settings, "purge", {})
    async with container.adapters.locks().collector():
        purged = await container.purge_uploads()()
    return {"uploads": purged.uploads, "debris": purged.debris}


async def _claimable(container: Container) -> None:
    """CollectionRunning now, rather than from a child started for nothing, when this worker already
    runs a job or another process holds the collector lock: a client repeating POST /v2/_gc during a
    collection costs no process. (The child takes the lock itself; this only looks.)"""
    if collector.running():
        raise CollectionRunning()
    async with container.adapters.locks().collector():
        pass


async def stop(timeout: float = 3.0) -> None:
    """The server is stopping: end the running jobs, and give their followers a moment to record that
    (a job left "running" is reported failed once STALE_AFTER has passed)."""
    global _stopping
    _stopping = True
    collector.stop_all()
    await collector.ended(timeout)
    if _followers:
        await asyncio.wait(set(_followers), timeout=timeout)


def _error(err: BaseException) -> dict[str, Any]:
    if isinstance(err, RegistryError):
        return {"code": err.code, "message": err.message}
    if isinstance(err, asyncio.CancelledError) or _stopping:
        return {"code": "UNKNOWN", "message": "the collection was stopped with its server; run it again"}
    return {"code": "UNKNOWN", "message": f"the collection failed: {err}"}


async def load(container: Container, job_id: str) -> GcJob | None:
    """A job's record, while it is kept."""
    return await container.adapters.jobs().load(job_id)


async def start_job(container: Container, settings: Settings, repository: RepositoryName | None,
                    *, dry_run: bool, delete_untagged: bool) -> GcJob:
    """Start a collection and return its job once the collection holds the collector lock (its first
    progress report) or has ended. An error before it began (a collection already running, say) is
    raised here, for the request to answer as a waiting one would."""
    jobs: GcJobs = container.adapters.jobs()
    now = time.time()
    job = GcJob(uuid.uuid4().hex, started_at=now, updated_at=now)
    began = asyncio.Event()
    latest: list[tuple[str, int, int] | None] = [None]

    def progress(phase: str, done: int, total: int) -> None:
        latest[0] = (phase, done, total)
        began.set()

    run = asyncio.ensure_future(collect(container, settings, repository, dry_run=dry_run,
                                        delete_untagged=delete_untagged, progress=progress))
    run.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved even if nobody follows
    began_waiter = asyncio.ensure_future(began.wait())
    try:
        await asyncio.wait({run, began_waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        began_waiter.cancel()
    if run.done() and not run.cancelled() and run.exception() is not None:
        raise run.exception()
    await jobs.save(job)
    follower = asyncio.ensure_future(_follow(job, run, latest, jobs))
    _followers.add(follower)
    follower.add_done_callback(_followers.discard)
    return job


async def _follow(job: GcJob, run: asyncio.Future, latest: list[tuple[str, int, int] | None],
                  jobs: GcJobs) -> None:
    """Save the job's progress as it moves (and at least every HEARTBEAT_EVERY), then its outcome."""
    saved_at = time.monotonic()
    try:
        while not run.done():
            await asyncio.wait({run}, timeout=PROGRESS_EVERY)
            if run.done():
                break
            current = latest[0]
            moved = current is not None and current != (job.phase, job.done, job.total)
            if moved or time.monotonic() - saved_at >= HEARTBEAT_EVERY:
                if current is not None:
                    job.phase, job.done, job.total = current
                await _save(jobs, job)
                saved_at = time.monotonic()
        if latest[0] is not None:
            job.phase, job.done, job.total = latest[0]
        if run.cancelled():
            job.state, job.error = FAILED, _error(asyncio.CancelledError())
        elif run.exception() is not None:
            err = run.exception()
            if not isinstance(err, RegistryError) and not _stopping:
                log.error("garbage collection job %s failed: %s", job.id, err)
            job.state, job.error = FAILED, _error(err)
        else:
            job.state, job.report = DONE, run.result()
        await _save(jobs, job)
    except asyncio.CancelledError:
        # The loop is closing under it; the collection is ended too (stop).
        job.state, job.error = FAILED, _error(asyncio.CancelledError())
        await _save(jobs, job)
        raise


async def _save(jobs: GcJobs, job: GcJob) -> None:
    job.updated_at = time.time()
    try:
        await jobs.save(job)
    except Exception:  # a job's state is a report; failing to write it must not stop anything
        log.exception("could not save the state of garbage collection job %s", job.id)


def job_view(job: GcJob, now: float | None = None) -> dict[str, Any]:
    """The job as clients see it: a running job whose state was not saved for STALE_AFTER seconds lost
    the server that ran it, so it is reported failed."""
    if job.state == RUNNING and (now or time.time()) - job.updated_at > STALE_AFTER:
        job.state = FAILED
        job.error = {"code": "UNKNOWN",
                     "message": "the collection stopped without finishing (its server stopped or was killed)"}
    return job.to_json()
