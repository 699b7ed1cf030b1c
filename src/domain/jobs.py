"""Garbage-collection jobs: a collection a client started without waiting for it, and the port that keeps
their state where every worker (and every process sharing the storage) can read it, since a client's
next request may reach another worker than the one running the collection."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

RUNNING, DONE, FAILED = "running", "done", "failed"
_ID = re.compile(r"[0-9a-f]{32}")


def is_job_id(value: str) -> bool:
    """Job ids are 32 lowercase hex digits (a uuid4's hex); anything else names no job, and never a path."""
    return _ID.fullmatch(value) is not None


@dataclass
class GcJob:
    id: str
    state: str = RUNNING
    phase: str = "starting"
    done: int = 0
    total: int = 0
    report: dict[str, Any] | None = None  # GcReport.to_json() once done
    error: dict[str, Any] | None = field(default=None)  # {"code", "message"} once failed
    started_at: float = 0.0
    updated_at: float = 0.0

    def __post_init__(self) -> None:
        if not is_job_id(self.id):
            raise ValueError(f"not a job id: {self.id!r}")

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "state": self.state,
                "progress": {"phase": self.phase, "done": self.done, "total": self.total},
                "report": self.report, "error": self.error,
                "started_at": self.started_at, "updated_at": self.updated_at}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GcJob:
        progress = data.get("progress") or {}
        return cls(id=data["id"], state=data["state"], phase=progress.get("phase", ""),
                   done=progress.get("done", 0), total=progress.get("total", 0), report=data.get("report"),
                   error=data.get("error"), started_at=data.get("started_at", 0.0),
                   updated_at=data.get("updated_at", 0.0))


class GcJobs(ABC):
    """Where jobs' states live. `save` replaces a job's state whole (a reader sees the old one or the new
    one) and may forget the oldest jobs beyond a bound; `load` is None for an unknown or forgotten job."""

    @abstractmethod
    async def save(self, job: GcJob) -> None: ...

    @abstractmethod
    async def load(self, job_id: str) -> GcJob | None: ...
