"""Prometheus metrics at `GET /metrics`, summed over the server's worker processes.

Workers: prometheus-client's multiprocess mode. `myregistry serve` calls `use_multiprocess_dir` before
it builds the app and forks: each process writes its values to small mmapped files in a directory made
fresh for this start, and a scrape (on any worker) reads them all. A worker that died leaves its
counters (they must not go backwards) and loses its live gauges (`mark_process_dead`, at the next
scrape). Without `serve` (tests building the app in-process) the metrics are the process's own.

Cost: the request path pays one dict lookup for its series and four or five mmapped writes, made
directly rather than through prometheus-client's inc (`_mmapped_record`). Labels are bounded: a route
is a fixed name per handler group, never a repository, digest, tag or upload id; unknown methods are
`other`.

Collections report through `observed_collection` (their GcReport as JSON); storage failures through
the `http.lifecycle.exception` signal (only requests that raised pay for it)."""

from __future__ import annotations

import atexit
import errno
import functools
import glob
import os
import re
import shutil
import struct
import tempfile
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client import multiprocess as mp
from sanic import Blueprint, HTTPResponse, Request, Sanic

from domain.errors import CollectionRunning, StorageFailure

from .responses import Response

ENV = "PROMETHEUS_MULTIPROC_DIR"
bp = Blueprint("metrics")

# A route's label: the handler group, by "blueprint.handler" first, then by blueprint.
_ROUTE_NAMES = {
    "base.catalog": "catalog", "base.api_version": "base", "gc.delete_repository": "repository",
    "blobs": "blob", "manifests": "manifest", "uploads": "upload", "tags": "tags", "referrers": "referrers",
    "gc": "gc", "health": "health", "metrics": "metrics",
}
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
BODY_METHODS = _BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
GC_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0)


# -- the processes' shared directory ---------------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def use_multiprocess_dir() -> str:
    """Make a fresh directory for this server's metric files and switch prometheus-client to
    multiprocess mode; call it before the app is built and before workers fork. The directory is
    under $PROMETHEUS_MULTIPROC_DIR if the operator set one, else under the temp dir; directories of
    earlier servers that are gone are removed, and this one at exit (forked workers leave without
    running exit handlers)."""
    parent = os.environ.get(ENV) or tempfile.gettempdir()
    os.makedirs(parent, exist_ok=True)
    for old in glob.glob(os.path.join(parent, "myregistry-metrics-*")):
        match = re.fullmatch(r"myregistry-metrics-(\d+)-.*", os.path.basename(old))
        if match and not _alive(int(match.group(1))):
            shutil.rmtree(old, ignore_errors=True)
    path = tempfile.mkdtemp(prefix=f"myregistry-metrics-{os.getpid()}-", dir=parent)
    os.environ[ENV] = path
    # prometheus-client picks its value class when first imported: pick again now that the
    # directory is set. Metric objects are made after this (`_metrics`), so they all use it.
    values.ValueClass = values.get_value_class()
    atexit.register(shutil.rmtree, path, True)
    return path


def _multiprocess_dir() -> str | None:
    return os.environ.get(ENV) if values.ValueClass is not values.MutexValue else None


# -- the metrics -----------------------------------------------------------------------------------
class _Metrics:
    def __init__(self) -> None:
        http = ("route", "method")
        self.requests = Counter("registry_http_requests", "HTTP requests answered", (*http, "status"))
        self.duration = Histogram("registry_http_request_duration_seconds",
                                  "Time from a request's start to its response's end", http,
                                  buckets=LATENCY_BUCKETS)
        self.bytes_out = Counter("registry_http_response_bytes", "Response body bytes sent", http)
        self.bytes_in = Counter("registry_http_request_bytes",
                                "Request body bytes declared by Content-Length (chunked bodies are not "
                                "counted)", http)
        self.uploads = Gauge("registry_uploads_in_progress", "Upload requests (POST, PATCH, PUT) being "
                             "received", multiprocess_mode="livesum")
        self.storage_errors = Counter("registry_storage_errors", "Requests failed by the storage", ("kind",))
        self.gc_runs = Counter("registry_gc_runs", "Garbage collections by outcome", ("outcome",))
        self.gc_duration = Histogram("registry_gc_duration_seconds", "Duration of garbage collections that ran",
                                     buckets=GC_BUCKETS)
        self.gc_bytes = Counter("registry_gc_bytes_freed", "Blob bytes freed by garbage collections")
        self.gc_manifests = Counter("registry_gc_manifests_removed", "Manifests removed by garbage collections")
        self.gc_blobs = Counter("registry_gc_blobs_removed", "Blobs removed by garbage collections")
        # Set by whole-registry collections from the walk they make anyway: no walk per scrape.
        self.stored_blobs = Gauge("registry_stored_blobs", "Blobs (layers, configs, manifests) stored, as of "
                                  "the last whole-registry collection", multiprocess_mode="mostrecent")
        self.stored_bytes = Gauge("registry_stored_bytes", "Bytes of blobs stored, as of the last "
                                  "whole-registry collection", multiprocess_mode="mostrecent")
        self.stored_manifests = Gauge("registry_stored_manifests", "Distinct manifests linked in any repository, "
                                      "as of the last whole-registry collection", multiprocess_mode="mostrecent")
        # (route label, method label, status) -> how a request is recorded (`series_for`)
        self.series: dict[tuple[str, str, int], _Record] = {}

    def series_for(self, route: str, method: str, status: int) -> _Record:
        requests = self.requests.labels(route, method, str(status))
        duration = self.duration.labels(route, method)
        out, received = self.bytes_out.labels(route, method), self.bytes_in.labels(route, method)
        record = _mmapped_record(requests, duration, out, received) or _plain_record(requests, duration, out, received)
        self.series[(route, method, status)] = record
        return record


# record(seconds, response bytes, request bytes): one request of a (route, method, status) series
_Record = Callable[[float, int, int], None]
_pack_two_doubles = struct.Struct("dd").pack
_generation = 0  # counts forks: a forked worker has mmapped files of its own


def _forked() -> None:
    global _generation
    _generation += 1
    _dirty.clear()  # the parent's values: this process's files start from nothing
    if _M is not None:
        _M.series.clear()  # made again, for this process's files, at first use


os.register_at_fork(after_in_child=_forked)


def _plain_record(requests: Any, duration: Any, out: Any, received: Any) -> _Record:
    def record(seconds: float, nbytes: int, length: int) -> None:
        requests.inc()
        duration.observe(seconds)
        if nbytes:
            out.inc(nbytes)
        if length:
            received.inc(length)

    return record


def _slot(value: Any) -> tuple[Any, Any, int] | None:
    """(value, its mmapped file, the position of its doubles there) for a multiprocess value."""
    if not getattr(value, "_multiprocess", False):
        return None
    try:
        value.get()  # prometheus-client's own fork check: the value's file is this process's
        file = value._file
        pos = file._positions[value._key]
        if not isinstance(value._value, float) or file._m is None:
            return None
    except (AttributeError, KeyError, TypeError):
        return None
    return value, file, pos


def _mmapped_record(requests: Any, duration: Any, out: Any, received: Any) -> _Record | None:
    """In multiprocess mode, a cheaper equivalent of `_plain_record`: prometheus-client's inc takes a
    lock, checks for a fork, then finds the value's slot in its process's mmapped file by key, and
    Counter.inc and Histogram.observe check their argument and walk the buckets first, on every call
    (5-6.5 us a request, measured). Here each value's slot is found once; a request adds to the values
    kept on the objects (which prometheus-client reads back) and marks them changed, and `publish`
    writes the changed ones to the file after each batch of requests. Only the event loop's thread
    records requests, and a fork makes the series anew (`_forked`). None when this prometheus-client
    does not look like that (no mmapped values, no slots): then its public API."""
    try:
        slots = [_slot(requests._value), _slot(duration._sum), _slot(out._value), _slot(received._value)]
        buckets = [_slot(b) for b in duration._buckets]
        bounds = tuple(duration._upper_bounds)
    except AttributeError:
        return None
    if None in slots or None in buckets or len(buckets) != len(bounds):
        return None
    count, total, out_slot, in_slot = slots
    count_v, sum_v, out_v, in_v = count[0], total[0], out_slot[0], in_slot[0]
    generation = _generation
    fallback = _plain_record(requests, duration, out, received)
    dirty = _dirty

    def record(seconds: float, nbytes: int, length: int) -> None:
        if generation != _generation:
            fallback(seconds, nbytes, length)
            return
        count_v._value += 1.0
        dirty[count_v] = count
        sum_v._value += seconds
        dirty[sum_v] = total
        bucket = buckets[bisect_left(bounds, seconds)]  # the first bound >= seconds
        bucket[0]._value += 1.0
        dirty[bucket[0]] = bucket
        if nbytes:
            out_v._value += nbytes
            dirty[out_v] = out_slot
        if length:
            in_v._value += length
            dirty[in_v] = in_slot

    return record


# Values changed by `record` since the last `publish`: value -> (value, its mmapped file, position).
_dirty: dict[Any, tuple[Any, Any, int]] = {}


def publish() -> None:
    """Write the values requests changed into this process's mmapped files, where a scrape (by any
    worker) reads them: once per batch of requests (logs.finish), not once per request. Written as
    prometheus-client writes a value: the value, then a timestamp 0, in one slice assignment; the
    file's mapping is read each time (it is replaced when the file grows)."""
    if _dirty:
        for value, file, pos in _dirty.values():
            file._m[pos:pos + 16] = _pack_two_doubles(value._value, 0.0)
        _dirty.clear()


_M: _Metrics | None = None
_route_labels: dict[str | None, tuple[str, bool]] = {}


def _metrics() -> _Metrics:
    """The process's metric objects, made once (tests build many apps in one process)."""
    global _M
    if _M is None:
        _M = _Metrics()
    return _M


def _route_info(request: Request) -> tuple[str, bool]:
    """(route label, whether it receives an upload's body) for the request's route."""
    route = request.route
    name = route.name if route is not None else None
    info = _route_labels.get(name)
    if info is None:
        info = ("other", False)
        if route is not None:
            key = name.split(".", 1)[1] if "." in name else name  # "app.blueprint.handler"
            label = _ROUTE_NAMES.get(key) or _ROUTE_NAMES.get(key.split(".", 1)[0], "other")
            info = (label, label == "upload" and bool(getattr(route.extra, "stream", False)))
        _route_labels[name] = info
    return info


# -- the request path ------------------------------------------------------------------------------
def upload_started(request: Request) -> None:
    """The uploads blueprint's request middleware: an upload request begins receiving its body."""
    if request.method in _BODY_METHODS and _route_info(request)[1] and _M is not None:
        request.metrics_upload = True
        _M.uploads.inc()


def observe(request: Request, status: int, nbytes: int | None, seconds: float) -> None:
    """One answered request (called once per request, when its response is complete)."""
    m = _M
    if m is None:
        return
    method = request.method
    if method not in _METHODS:
        method = "other"
    route = _route_info(request)[0]
    record = m.series.get((route, method, status)) or m.series_for(route, method, status)
    length = request.headers.get("content-length")
    record(seconds, nbytes or 0, int(length) if length and length.isdigit() else 0)
    if getattr(request, "metrics_upload", False):
        request.metrics_upload = False
        m.uploads.dec()


def _storage_kind(err: BaseException) -> str | None:
    """The storage failure's kind, or None when the error is not the storage's."""
    if isinstance(err, StorageFailure):
        cause = err.__cause__ or err.__context__
        if isinstance(cause, OSError):
            err = cause
        elif "disk is full" in (err.message or ""):
            return "disk_full"
        else:
            return "io"
    if not isinstance(err, OSError) or isinstance(err, ConnectionError):
        return None
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return "disk_full"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "permission"
    return "io"


async def _on_exception(request: Request, exception: BaseException) -> None:
    kind = _storage_kind(exception)
    if kind is not None and _M is not None:
        _M.storage_errors.labels(kind).inc()


# -- collections -----------------------------------------------------------------------------------
def observed_collection(collect: Callable[..., Awaitable[dict[str, Any]]]) -> Callable[..., Awaitable[dict[str, Any]]]:
    """Wrap a function running one collection and returning its report (GcReport.to_json): count the
    run by outcome (ok, dry_run, busy: another one was running, error) and what it freed."""

    @functools.wraps(collect)
    async def wrapper(*args: Any, **kwargs: Any) -> dict[str, Any]:
        m = _metrics()
        started = time.monotonic()
        try:
            report = await collect(*args, **kwargs)
        except CollectionRunning:
            m.gc_runs.labels("busy").inc()
            raise
        except BaseException:
            m.gc_runs.labels("error").inc()
            raise
        m.gc_duration.observe(time.monotonic() - started)  # a child's start included: what the operator waits
        stored = report.get("stored") or {}
        if not report.get("dry_run") and stored.get("blobs") is not None:
            m.stored_blobs.set(stored["blobs"])
            m.stored_bytes.set(stored["bytes"])
            m.stored_manifests.set(stored["manifests"])
        if report.get("dry_run"):
            m.gc_runs.labels("dry_run").inc()
            return report
        m.gc_runs.labels("ok").inc()
        m.gc_bytes.inc(int(report.get("bytes_freed") or 0))
        m.gc_manifests.inc(int(report.get("manifests_removed") or 0))
        m.gc_blobs.inc(int(report.get("blobs_removed") or 0))
        return report

    return wrapper


# -- exposition ------------------------------------------------------------------------------------
def _forget_dead_processes(path: str) -> None:
    """Live gauges of workers that died (a restarted worker, a killed one) stop counting."""
    for file in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        pid = file.rsplit("_", 1)[1][:-3]
        if pid.isdigit() and not _alive(int(pid)):
            mp.mark_process_dead(int(pid), path)


def exposition() -> bytes:
    path = _multiprocess_dir()
    if path is None:
        return generate_latest(REGISTRY)
    _forget_dead_processes(path)
    registry = CollectorRegistry()
    mp.MultiProcessCollector(registry, path)
    return generate_latest(registry)


@bp.route("/metrics", methods=["GET"])
async def scrape(request: Request) -> HTTPResponse:
    started = time.perf_counter()
    from .logs import flush_pending  # logs imports this module

    flush_pending(end_of_turn=False)  # requests answered earlier in this turn of the loop count too
    body = exposition()
    return Response(body, headers={"X-Scrape-Seconds": f"{time.perf_counter() - started:.4f}"},
                        content_type=CONTENT_TYPE_LATEST)


def install(app: Sanic) -> None:
    """Metrics for this app: the route and the storage-error signal. The request path reports through
    the uploads blueprint (`upload_started`) and logs.finish (`observe`)."""
    _metrics()
    app.blueprint(bp)
    app.signal("http.lifecycle.exception")(_on_exception)
