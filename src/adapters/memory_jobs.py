"""The GcJobs port in the process's memory (the memory backend: one process, nothing kept)."""

from __future__ import annotations

import copy
from collections import OrderedDict

from domain.jobs import GcJob, GcJobs

KEEP = 100


class MemoryGcJobs(GcJobs):
    def __init__(self, keep: int = KEEP) -> None:
        self._jobs: OrderedDict[str, GcJob] = OrderedDict()
        self.keep = keep

    async def save(self, job: GcJob) -> None:
        self._jobs[job.id] = copy.deepcopy(job)  # a snapshot, as a file would hold
        self._jobs.move_to_end(job.id)
        while len(self._jobs) > self.keep:
            self._jobs.popitem(last=False)

    async def load(self, job_id: str) -> GcJob | None:
        job = self._jobs.get(job_id)
        return copy.deepcopy(job) if job is not None else None
