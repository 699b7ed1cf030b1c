"""Maintenance jobs (a garbage collection, an idle-upload purge) in a child process, for the server.

Why a process and not a thread of the worker: a collection reads and parses every manifest, and both
hold the GIL: orjson parsing a 2 MB manifest holds it for 25-50 ms at a time, building its descriptors
and the cyclic garbage collection of the large heap they make hold it longer. In a thread, requests on
that worker waited for the GIL: /health/live had a p99 of 66-230 ms and a max of 0.3-0.6 s during a
collection of 30 manifests of 2 MB. In a child they keep the idle latency (README, "Garbage
collection"); the parsed manifests' memory also goes back to the system when the child ends. The cost
is the child's start (it imports the registry: about half a second of CPU) per job.

The child builds its container from the server's settings, as the CLI does, so it locks and stores
exactly as the server would: the collector lock and the push/sweep locks are flock(2) locks, shared by
every process using the storage. It speaks JSON lines on a pipe: {"progress": [phase, done, total]}
(at most every PROGRESS_EVERY seconds, and at each phase's end), then {"result": {...}} or
{"error": {"type", "message", "detail"}}.

Run as `python -m entrypoints.collector` with the request as JSON on stdin; only the server does that.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import orjson

from domain import errors as domain_errors

from .settings import Settings

Progress = Callable[[str, int, int], None]
PROGRESS_EVERY = 0.1
_SRC = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the directory holding `entrypoints`

# Children running now, so that a stopping server can end them; and the tasks reading from them.
_children: set[asyncio.subprocess.Process] = set()
_relays: set[asyncio.Task] = set()


class ChildFailed(Exception):
    """The child ended without a result (killed, or an error that is not the registry's)."""


# -- the server's side -----------------------------------------------------------------------------
async def run(settings: Settings, job: str, params: dict[str, Any], progress: Progress | None = None) -> Any:
    """Run `job` ("collect" or "purge") with `params` in a child process and return its result (a JSON
    value). A RegistryError in the child is raised here as the same class, so the HTTP layer answers as
    if the job had run in the worker (a collection already running is still 429). If the caller is
    cancelled (its client hung up), the child goes on to its end."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (_SRC, os.environ.get("PYTHONPATH")) if p)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "entrypoints.collector", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, env=env)  # its stderr is the server's: tracebacks go to the log
    _children.add(process)
    request = {"settings": settings.model_dump(mode="json"), "job": job, "params": params}
    relay = asyncio.ensure_future(_relay(process, orjson.dumps(request), progress))
    _relays.add(relay)

    def ended(task: asyncio.Task) -> None:
        _children.discard(process)
        _relays.discard(task)

    relay.add_done_callback(ended)
    return await asyncio.shield(relay)


async def _relay(process: asyncio.subprocess.Process, request: bytes, progress: Progress | None) -> Any:
    assert process.stdin is not None and process.stdout is not None
    try:
        process.stdin.write(request)
        await process.stdin.drain()
        process.stdin.close()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the child died at once; its exit status says so below
    outcome: dict[str, Any] = {}
    buffer = bytearray()  # a report can be megabytes long: one line, many reads
    while chunk := await process.stdout.read(1 << 16):
        buffer += chunk
        if b"\n" not in chunk:
            continue
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            message = orjson.loads(buffer[start:end])
            start = end + 1
            if "progress" not in message:
                outcome = message
            elif progress is not None:
                progress(*message["progress"])
        del buffer[:start]
    status = await process.wait()
    if "result" in outcome:
        return outcome["result"]
    if "error" in outcome:
        raise _rebuild(outcome["error"])
    how = f"was killed by signal {-status}" if status < 0 else f"exited with status {status}"
    raise ChildFailed(f"the maintenance process {how} without a result; the server's log has its output")


def _rebuild(error: dict[str, Any]) -> Exception:
    cls = getattr(domain_errors, error.get("type") or "", None)
    if isinstance(cls, type) and issubclass(cls, domain_errors.RegistryError):
        return cls(error.get("message"), error.get("detail"))
    return ChildFailed(error.get("message") or "the maintenance process failed")


def running() -> bool:
    """Whether a child of this process is running a job."""
    return any(process.returncode is None for process in _children)


async def ended(timeout: float) -> None:
    """Wait (at most `timeout` seconds) until every child's result or failure has been read."""
    if _relays:
        await asyncio.wait(set(_relays), timeout=timeout)


def stop_all() -> None:
    """End the running children (the server is stopping). A collection ended this way stops as if the
    machine had stopped, which it is built to survive; the next one finishes the work."""
    for process in list(_children):
        if process.returncode is None:
            try:
                process.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass


# -- the child's side ------------------------------------------------------------------------------
def _main() -> None:
    channel = os.dup(1)
    os.dup2(2, 1)  # anything printed goes to the log, never into the channel
    request = orjson.loads(sys.stdin.buffer.read())

    def send(message: dict[str, Any]) -> None:
        data = orjson.dumps(message, default=str) + b"\n"
        while data:
            data = data[os.write(channel, data):]

    try:
        result = asyncio.run(_job(Settings(**request["settings"]), request["job"], request["params"], send))
    except domain_errors.RegistryError as err:
        send({"error": {"type": type(err).__name__, "message": err.message, "detail": err.detail}})
        return
    except Exception as err:
        traceback.print_exc()
        send({"error": {"type": None, "message": f"{type(err).__name__}: {err}"}})
        sys.exit(1)
    send({"result": result})


async def _job(settings: Settings, job: str, params: dict[str, Any], send: Callable[[dict], None]) -> Any:
    from domain.names import RepositoryName

    from .container import build_container

    container = build_container(settings)
    if job == "purge":
        async with container.adapters.locks().collector():
            purged = await container.purge_uploads()()
        return {"uploads": purged.uploads, "debris": purged.debris}
    if job != "collect":
        raise ValueError(f"unknown job {job!r}")
    last: list[Any] = [None, 0.0]  # phase, time of the last message

    def progress(phase: str, done: int, total: int) -> None:
        now = time.monotonic()
        if phase != last[0] or done >= total or now - last[1] >= PROGRESS_EVERY:
            last[:] = [phase, now]
            send({"progress": [phase, done, total]})

    repository = params.get("repository")
    report = await container.collect_garbage()(
        RepositoryName(repository) if repository else None, dry_run=params["dry_run"],
        delete_untagged=params["delete_untagged"], progress=progress)
    return report.to_json()


if __name__ == "__main__":
    _main()
