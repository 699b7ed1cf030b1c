"""The GcJobs port on the storage root: one small JSON file per job, written atomically (write to a
temporary name, rename), so every worker and process sharing the storage reads a whole state."""

from __future__ import annotations

import os
import time

import orjson

from domain.jobs import GcJob, GcJobs, is_job_id

from .files import write_atomic
from .layout import Layout

KEEP = 100  # jobs remembered; older ones are forgotten when a new one starts


class FilesystemGcJobs(GcJobs):
    def __init__(self, layout: Layout, keep: int = KEEP) -> None:
        self.layout = layout
        self.directory = layout.gc_jobs_dir()
        self.keep = keep

    def _path(self, job_id: str) -> str:
        if not is_job_id(job_id):  # validated again: the id becomes a file name
            raise ValueError(f"not a job id: {job_id!r}")
        return self.layout.gc_job(job_id)

    async def save(self, job: GcJob) -> None:
        path = self._path(job.id)
        new = not os.path.exists(path)
        write_atomic(path, orjson.dumps(job.to_json()))
        if new:
            self._forget_old()

    async def load(self, job_id: str) -> GcJob | None:
        if not is_job_id(job_id):
            return None
        try:
            with open(self._path(job_id), "rb") as f:
                return GcJob.from_json(orjson.loads(f.read()))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None  # not a job file we wrote; no job by that id

    def _forget_old(self) -> None:
        """Keep the `keep` most recently updated jobs (a running job's file is rewritten as it
        progresses, so it is never among the oldest); temporary files a crash left go after an hour."""
        now, jobs = time.time(), []
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return
        for entry in entries:
            try:
                modified = entry.stat(follow_symlinks=False).st_mtime
            except FileNotFoundError:
                continue
            if entry.name.endswith(".json"):
                jobs.append((modified, entry.path))
            elif ".tmp-" in entry.name and now - modified > 3600:
                _unlink(entry.path)
        jobs.sort(reverse=True)
        for _modified, path in jobs[self.keep:]:
            _unlink(path)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
