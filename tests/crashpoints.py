"""Crash at every step: run an operation in a child process that dies with `os._exit(137)` right after
its Nth change to the files under a storage root, for every N, so that every state a kill can leave is
visited, not a random few.

How it works. The test starts one helper process (`python -m tests.crashpoints`, `CrashRunner`): a clean
interpreter with PYTHONPATH=src:<repository root>, single-threaded, that never runs an event loop itself.
For each crash point the helper imports the operation's module once, then forks a child. The child
patches the filesystem calls at the `os` module level (and `open`) before the operation runs, counts the
changes under the storage root, and exits right after the Nth. A fork from that helper costs a few
milliseconds and copies nothing but what the helper imported; forking the pytest process itself could copy
locks held by its threads (pytest-timeout, leftovers of other tests), and a fresh interpreter per point
would spend ~0.3 s importing for every one of hundreds of points.

What counts as a change (only under the root): os.rename, os.replace, os.unlink, os.remove, os.rmdir,
os.mkdir (so os.makedirs, which calls it), os.utime, os.truncate, os.ftruncate, os.link, os.symlink,
os.chmod, os.open creating or truncating a file, os.write to a file, opening a file for writing or
appending with `open`, and each non-empty write (or truncate) on such a file. shutil.rmtree goes through
os.unlink and os.rmdir (with dir_fd), so each of its removals counts. A call counts once it succeeded; a
write is flushed to the kernel before the child dies, so "after change N" includes its bytes, as after a
kill. A change that never reaches the kernel before a kill (Python's buffer) is the state "before it",
which the point before visits.
"""

from __future__ import annotations

import builtins
import importlib
import inspect
import io
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

CRASH_EXIT = 137
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD_TIMEOUT = 60.0

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


# -- the counter, installed in the child ------------------------------------------------------------

class ChangeCounter:
    """Counts changes under `root` and kills the process right after change number `crash_at` (never
    when it is None). `report` is called with the description of that change just before dying."""

    def __init__(self, root: str, crash_at: int | None, report: Callable[[dict], None]) -> None:
        self.root = os.path.abspath(root)
        self.crash_at, self.report = crash_at, report
        self.count = 0
        self.calls: list[str] = []  # every change, when not crashing (to show what an operation does)
        self.armed = True
        self._lock = threading.Lock()
        self._orig: dict[tuple[Any, str], Any] = {}

    # where a call lands
    def inside(self, path: Any, dir_fd: int | None = None) -> str | None:
        """The path relative to the root when the call touches something under it, else None."""
        try:
            if isinstance(path, int):
                where = os.readlink(f"/proc/self/fd/{path}")
            else:
                where = os.fsdecode(os.fspath(path))
                if not os.path.isabs(where):
                    base = os.readlink(f"/proc/self/fd/{dir_fd}") if dir_fd is not None else os.getcwd()
                    where = os.path.join(base, where)
        except (OSError, TypeError):
            return None
        where = os.path.normpath(where)
        if where == self.root or where.startswith(self.root + os.sep):
            return os.path.relpath(where, self.root)
        return None

    def change(self, call: str, *relpaths: str | None, before_exit: Callable[[], None] | None = None) -> None:
        shown = [p for p in relpaths if p is not None]
        if not shown or not self.armed:
            return
        described = f"{call}({' -> '.join(shown)})"
        with self._lock:
            self.count += 1
            if self.crash_at is None:
                self.calls.append(described)
            if self.count != self.crash_at:
                return
            self.armed = False
        if before_exit is not None:
            before_exit()
        self.report({"outcome": "crashed", "changes": self.count, "call": described})
        os._exit(CRASH_EXIT)

    # patching
    def _patch(self, owner: Any, name: str, make: Callable[[Any], Any]) -> None:
        original = getattr(owner, name)
        self._orig[(owner, name)] = original
        setattr(owner, name, make(original))

    def install(self) -> None:
        """Patch the `os` functions and `open`. Modules that imported them by name before (`from os
        import rename`) would escape: the adapters use `os.` and `open`, and shutil looks them up on `os`."""
        c = self

        def two_paths(name: str):
            def make(orig):
                def wrapper(src, dst, *, src_dir_fd=None, dst_dir_fd=None, **kw):
                    result = orig(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd, **kw)
                    c.change(f"os.{name}", c.inside(src, src_dir_fd), c.inside(dst, dst_dir_fd))
                    return result
                return wrapper
            return make

        def one_path(name: str):
            def make(orig):
                def wrapper(path, *args, dir_fd=None, **kw):
                    result = orig(path, *args, dir_fd=dir_fd, **kw) if dir_fd is not None else orig(path, *args, **kw)
                    c.change(f"os.{name}", c.inside(path, dir_fd))
                    return result
                return wrapper
            return make

        for name in ("rename", "replace", "link"):
            self._patch(os, name, two_paths(name))
        for name in ("unlink", "remove", "rmdir", "mkdir", "utime", "chmod"):
            self._patch(os, name, one_path(name))

        def make_symlink(orig):
            def symlink(src, dst, target_is_directory=False, *, dir_fd=None):
                result = orig(src, dst, target_is_directory, dir_fd=dir_fd)
                c.change("os.symlink", c.inside(dst, dir_fd))
                return result
            return symlink
        self._patch(os, "symlink", make_symlink)

        def make_truncate(name: str):
            def make(orig):
                def wrapper(path, length):
                    result = orig(path, length)
                    c.change(f"os.{name}", c.inside(path))
                    return result
                return wrapper
            return make
        self._patch(os, "truncate", make_truncate("truncate"))
        self._patch(os, "ftruncate", make_truncate("ftruncate"))

        def make_os_open(orig):
            def os_open(path, flags, mode=0o777, *, dir_fd=None):
                where = c.inside(path, dir_fd)
                creates = where is not None and flags & os.O_CREAT and not os.path.lexists(
                    os.path.join(c.root, where))
                fd = orig(path, flags, mode, dir_fd=dir_fd)
                if creates or (where is not None and flags & os.O_TRUNC):
                    c.change("os.open", where)
                return fd
            return os_open
        self._patch(os, "open", make_os_open)

        def make_os_write(orig):
            def os_write(fd, data):
                written = orig(fd, data)
                if written:
                    c.change("os.write", c.inside(fd))
                return written
            return os_write
        self._patch(os, "write", make_os_write)

        def make_open(orig):
            def counting_open(file, mode="r", *args, **kw):
                f = orig(file, mode, *args, **kw)
                if not any(m in mode for m in "wax+"):
                    return f
                where = c.inside(file)
                if where is None:
                    return f
                c.change(f"open[{mode}]", where)
                return _CountingFile(f, where, c)
            return counting_open
        self._patch(builtins, "open", make_open)
        self._patch(io, "open", make_open)

    def uninstall(self) -> None:
        for (owner, name), original in self._orig.items():
            setattr(owner, name, original)
        self._orig.clear()


class _CountingFile:
    """A file opened for writing whose writes count as changes (flushed before a crash right after)."""

    def __init__(self, inner: Any, where: str, counter: ChangeCounter) -> None:
        self._inner, self._where, self._counter = inner, where, counter

    def write(self, data: Any) -> int:
        written = self._inner.write(data)
        if written:
            self._counter.change("write", self._where, before_exit=self._inner.flush)
        return written

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def truncate(self, size: int | None = None) -> int:
        result = self._inner.truncate(size)
        self._counter.change("truncate", self._where)
        return result

    def __enter__(self) -> _CountingFile:
        self._inner.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self._inner.__exit__(*exc)

    def __iter__(self):
        return iter(self._inner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


# -- the helper process (python -m tests.crashpoints) ------------------------------------------------

def _resolve(target: str) -> Callable[[str], Any]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _child(target: Callable[..., Any], root: str, args: list[Any], crash_at: int | None, report_fd: int) -> None:
    """Runs in the forked child; never returns."""
    write, exit_ = os.write, os._exit

    def report(message: dict) -> None:
        data = json.dumps(message).encode()
        while data:
            data = data[write(report_fd, data):]

    code = 1
    try:
        os.dup2(2, 1)  # the helper's stdout carries the protocol: keep the operation's prints off it
        counter = ChangeCounter(root, crash_at, report)
        counter.install()
        try:
            result = target(root, *args)
            if inspect.iscoroutine(result):
                import asyncio
                asyncio.run(result)
        finally:
            counter.armed = False
        report({"outcome": "completed", "changes": counter.count, "calls": counter.calls})
        code = 0
    except BaseException:
        try:
            report({"outcome": "failed", "error": traceback.format_exc()})
        except BaseException:
            pass
    exit_(code)


def _run_one(request: dict) -> dict:
    target = _resolve(request["target"])  # imported here, in the helper, once for every child
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _child(target, request["root"], request.get("args", []), request.get("crash_at"), write_fd)
    os.close(write_fd)
    chunks: list[bytes] = []
    deadline = time.monotonic() + float(request.get("timeout", CHILD_TIMEOUT))
    hung = False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            hung = True
            os.kill(pid, signal.SIGKILL)
            break
        ready, _, _ = select.select([read_fd], [], [], left)
        if ready:
            data = os.read(read_fd, 65536)
            if not data:
                break
            chunks.append(data)
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    exit_code = os.waitstatus_to_exitcode(status)
    try:
        message = json.loads(b"".join(chunks) or b"{}")
    except ValueError:
        message = {}
    if hung:
        message = {"outcome": "failed", "error": f"the child did not finish within {CHILD_TIMEOUT} s"}
    elif not message:
        message = {"outcome": "failed", "error": f"the child exited with {exit_code} and said nothing"}
    message["exit_code"] = exit_code
    if message["outcome"] == "crashed" and exit_code != CRASH_EXIT:
        message = {"outcome": "failed", "error": f"the child reported a crash but exited with {exit_code}"}
    return message


def serve() -> None:
    """The helper's loop: one JSON request per line on stdin, one JSON answer per line on stdout."""
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            answer = _run_one(json.loads(line))
        except BaseException:
            answer = {"outcome": "failed", "error": traceback.format_exc()}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


# -- the test side -------------------------------------------------------------------------------------

@dataclass
class Outcome:
    crash_at: int | None
    crashed: bool
    changes: int  # changes made (== crash_at when crashed)
    call: str | None = None  # the call after which the child died
    calls: list[str] = field(default_factory=list)  # every change, when run with crash_at=None

    def __str__(self) -> str:
        return f"N={self.crash_at} after {self.call}" if self.crashed else f"completed ({self.changes} changes)"


class CrashRunner:
    """Starts the helper process; `run` asks it to run `target(root, *args)` ("module:function", sync or
    async, importable with PYTHONPATH=src:<repository root>; `args` are JSON values) crashing right after
    change `crash_at` (None: never)."""

    def __init__(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([os.path.join(REPO_ROOT, "src"), REPO_ROOT])
        self.process = subprocess.Popen([sys.executable, "-m", "tests.crashpoints"], cwd=REPO_ROOT, env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def run(self, target: str, root: str, crash_at: int | None, args: tuple[Any, ...] = ()) -> Outcome:
        assert self.process.stdin is not None and self.process.stdout is not None
        request = {"target": target, "root": os.path.abspath(root), "crash_at": crash_at, "args": list(args)}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the crash helper died (exit code {self.process.wait()})")
        answer = json.loads(line)
        if answer["outcome"] == "failed":
            raise AssertionError(f"{target} failed in the child (crash_at={crash_at}):\n{answer.get('error')}")
        return Outcome(crash_at, answer["outcome"] == "crashed", answer["changes"], answer.get("call"),
                       answer.get("calls", []))

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> CrashRunner:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@dataclass
class Failure:
    outcome: Outcome
    problems: list[str]


@dataclass
class Sweep:
    """What `every_crash_point` saw for one operation."""
    points: int = 0  # crash points visited (the run that completed is not one)
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0

    def describe(self, limit: int = 3) -> str:
        if not self.failures:
            return f"{self.points} crash points, all whole"
        lines = [f"{len(self.failures)} of {self.points + 1} runs broke an invariant; "
                 f"failing N: {[f.outcome.crash_at for f in self.failures][:40]}"]
        for failure in self.failures[:limit]:
            lines.append(f"  {failure.outcome}:")
            lines.extend(f"    - {p}" for p in failure.problems[:8])
        return "\n".join(lines)


def scratch_dir(fallback: str) -> str:
    """A directory for the copies: on a tmpfs (/dev/shm) when there is one, else `fallback`. Removing a
    directory on an ext4 mounted with `discard` takes ~3 ms, which made a sweep four times slower; a kill
    leaves the same files on any filesystem. CRASH_SCRATCH chooses another place."""
    base = os.environ.get("CRASH_SCRATCH") or ("/dev/shm" if os.access("/dev/shm", os.W_OK) else "")
    if not base:
        return fallback
    return tempfile.mkdtemp(prefix="crashpoints-", dir=base)


def every_crash_point(runner: CrashRunner, target: str, template: str, workdir: str,
                      check: Callable[[str, Outcome], list[str]], args: tuple[Any, ...] = (),
                      limit: int = 5000, keep_failed: str | None = None) -> Sweep:
    """For N = 1, 2, ...: copy `template` (a prepared storage root) under `workdir`, run `target(root, *args)`
    on the copy crashing right after change N, then `check(root, outcome)` (the restart and the invariants; it
    returns the problems found). Stops at the first N the operation completes without reaching, which
    is checked too. The first failing copy is copied to `keep_failed` for a post-mortem."""
    started = time.monotonic()
    sweep = Sweep()
    for n in range(1, limit + 1):
        root = os.path.join(workdir, f"n{n:04d}")
        shutil.copytree(template, root, symlinks=True)
        outcome = runner.run(target, root, n, args)
        try:
            problems = check(root, outcome)
        except Exception:
            problems = [f"the check raised:\n{traceback.format_exc()}"]
        if problems:
            sweep.failures.append(Failure(outcome, problems))
            if keep_failed and len(sweep.failures) == 1:
                shutil.copytree(root, os.path.join(keep_failed, os.path.basename(root)), symlinks=True)
        shutil.rmtree(root, ignore_errors=True)
        if not outcome.crashed:
            sweep.seconds = time.monotonic() - started
            return sweep
        sweep.points += 1
    raise AssertionError(f"{target} still had changes left after {limit} crash points")


if __name__ == "__main__":
    serve()
