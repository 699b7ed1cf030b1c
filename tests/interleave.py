"""A deterministic scheduler for concurrent use-case calls, and the port wrappers that feed it.

Mechanism. Each storage port (BlobStore, RepositoryStore, Locks) is wrapped in a `Gate`, a generic proxy
(`__getattr__`, so methods added to a port later are covered too). Before a scheduled task runs any async
method of a port, takes one step of an async iterator a port returns or consumes (request bodies included),
or enters a lock's context manager, it parks on a future the `Scheduler` owns, saying what it is about to
do (a `PortCall`). The scheduler runs the operations as asyncio tasks and lets the event loop run until
nothing is runnable: every task is then parked, done, or waiting on something a parked task holds (a lock's
condition). It then asks `choose` which parked task goes on (`random_policy`, seeded by hypothesis in the
tests), resolves that task's future, and repeats. Unfinished tasks with none parked is a deadlock. Leaving
a lock is not a decision: between a task's last port call and its release nothing it does can be
observed, so parking there would only repeat orders.

It is deterministic: no real time, no threads, and the loop's ready queue is FIFO; the same choices give
the same run. Callers must keep every storage call inside the ports and bodies small (the use-cases hash
pieces of 256 KiB or more in a thread, which would race the scheduler). Code that runs outside the
scheduled tasks (setup, invariant checks) passes through the gates without parking.
"""

from __future__ import annotations

import asyncio
import inspect
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dependency_injector import providers

PORTS = ("blobs", "repos", "locks")


class Deadlock(AssertionError):
    """Unfinished tasks, none of them parked: they wait on each other."""


@dataclass(frozen=True)
class PortCall:
    """What a parked task is about to do: call `port.method(*args)`, or take a step of an iterator that call
    returned ("step") or was given ("body"), or enter the lock it returned ("enter")."""

    port: str
    method: str
    args: tuple[Any, ...]
    part: str = "call"


@dataclass
class Outcome:
    """What one scheduled operation did, in scheduler steps (step n is the n-th task resumed)."""

    name: str
    result: Any = None
    error: Exception | None = None
    started: int | None = None  # the step that first resumed it (its first port call went on)
    ended: int | None = None  # the step during which it returned or raised


class Scheduler:
    """Runs operations as tasks, one port call at a time, in the order `choose` picks (see the module doc)."""

    def __init__(self, choose: Callable[[list[str]], int], describe: Callable[[Any], str | None] = repr) -> None:
        self.choose = choose  # given the parked tasks' "name: port call" labels, the index of the one to resume
        self.describe = describe  # an argument's short form in labels; None leaves it out
        self.step = 0
        self.decisions = 0  # steps where more than one task could go on
        self.trace: list[str] = []  # "task: what it did", step by step
        self.last: str | PortCall | None = None  # what the last resumed task was about to do
        self._tasks: dict[asyncio.Task, Outcome] = {}
        self._parked: dict[asyncio.Task, tuple[asyncio.Future, str | PortCall]] = {}
        self._closing = False

    @property
    def outcomes(self) -> list[Outcome]:
        return list(self._tasks.values())

    # -- what the gates call ---------------------------------------------------------------------------
    def scheduled(self) -> bool:
        """Whether the running task is one of the operations (and parks at the gates)."""
        return not self._closing and asyncio.current_task() in self._tasks

    async def checkpoint(self, what: str | PortCall) -> None:
        """Park the calling task until the scheduler picks it. Unscheduled callers pass straight through.
        `what` says what the task is about to do (a port call, or any label)."""
        if not self.scheduled():
            return
        future = asyncio.get_running_loop().create_future()
        self._parked[asyncio.current_task()] = (future, what)
        await future

    def label(self, what: str | PortCall) -> str:
        if isinstance(what, str):
            return what
        shown = ", ".join(text for text in map(self.describe, what.args) if text is not None)
        return f"{what.port}.{what.method}({shown})" + ("" if what.part in ("call", "enter") else f" {what.part}")

    # -- running operations ----------------------------------------------------------------------------
    async def run(self, operations: Sequence[tuple[str, Callable[[], Awaitable[Any]]]],
                  after_step: Callable[[], Awaitable[None]] | None = None) -> list[Outcome]:
        """Run the operations concurrently, one port call at a time, in the order `choose` picks.
        `after_step` runs whenever every task is parked or done (so before the first and after the last
        step too); it must not wait on a lock. Exceptions of the operations are kept in their Outcome."""
        loop = asyncio.get_running_loop()
        self._closing = False
        for name, make in operations:
            outcome = Outcome(name)
            self._tasks[loop.create_task(self._operation(outcome, make))] = outcome
        try:
            while True:
                await self._settle()
                if after_step is not None:
                    await self._outside(after_step())
                parked = [task for task in self._tasks if task in self._parked]
                if not parked:
                    stuck = [outcome.name for task, outcome in self._tasks.items() if not task.done()]
                    if stuck:
                        raise Deadlock(f"{stuck} wait and no task can go on; last steps: {self.trace[-8:]}")
                    return list(self._tasks.values())
                labels = [f"{self._tasks[task].name}: {self.label(self._parked[task][1])}" for task in parked]
                index = 0
                if len(parked) > 1:
                    index = self.choose(labels)
                    self.decisions += 1
                task = parked[index]
                future, what = self._parked.pop(task)
                self.step += 1
                self.trace.append(labels[index])
                self.last = what
                if self._tasks[task].started is None:
                    self._tasks[task].started = self.step
                future.set_result(None)
        finally:
            self._closing = True
            pending = [task for task in self._tasks if not task.done()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _operation(self, outcome: Outcome, make: Callable[[], Awaitable[Any]]) -> None:
        try:
            outcome.result = await make()
        except Exception as error:  # noqa: BLE001 - the test judges it
            outcome.error = error
        finally:
            outcome.ended = self.step

    @staticmethod
    def _idle() -> bool:
        # CPython's loop keeps its runnable callbacks in `_ready` (a FIFO): empty while this coroutine
        # runs means every other task waits on a future. There is no public way to ask this.
        return not asyncio.get_running_loop()._ready  # type: ignore[attr-defined]

    async def _settle(self) -> None:
        """Let every task run until it parks, finishes or waits on another."""
        await asyncio.sleep(0)
        while not self._idle():
            await asyncio.sleep(0)

    async def _outside(self, coroutine: Awaitable[None]) -> None:
        check = asyncio.ensure_future(coroutine)
        await asyncio.sleep(0)
        while not check.done():
            if self._idle():
                check.cancel()
                raise Deadlock("an invariant check waits on something a parked task holds (a lock?)")
            await asyncio.sleep(0)
        check.result()


class Gate:
    """A port whose every async method, async iterator step and lock entry parks at the scheduler first."""

    def __init__(self, inner: Any, scheduler: Scheduler, port: str) -> None:
        self._inner, self._scheduler, self._port = inner, scheduler, port

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name.startswith("_") or not callable(attr):
            return attr
        scheduler, port = self._scheduler, self._port

        def call(*args: Any, **kwargs: Any) -> Any:
            if not scheduler.scheduled():
                return attr(*args, **kwargs)  # setup and checks: straight through
            what = PortCall(port, name, (*args, *kwargs.values()))
            body = PortCall(port, name, what.args, "body")
            args = tuple(_GatedIterator(a, scheduler, body) if _is_async_iterator(a) else a for a in args)
            kwargs = {k: _GatedIterator(v, scheduler, body) if _is_async_iterator(v) else v for k, v in kwargs.items()}
            result = attr(*args, **kwargs)
            if inspect.iscoroutine(result):
                return _gated_call(result, scheduler, what)
            if _is_async_iterator(result):
                return _GatedIterator(result, scheduler, PortCall(port, name, what.args, "step"))
            if hasattr(result, "__aenter__"):
                return _GatedContext(result, scheduler, PortCall(port, name, what.args, "enter"))
            return result

        return call


def _is_async_iterator(value: Any) -> bool:
    return hasattr(value, "__anext__")


async def _gated_call(coroutine: Any, scheduler: Scheduler, what: PortCall) -> Any:
    try:
        await scheduler.checkpoint(what)
    except BaseException:
        coroutine.close()
        raise
    return await coroutine


class _GatedIterator:
    def __init__(self, inner: Any, scheduler: Scheduler, what: PortCall) -> None:
        self._inner, self._scheduler, self._what = inner, scheduler, what

    def __aiter__(self) -> _GatedIterator:
        return self

    async def __anext__(self) -> Any:
        await self._scheduler.checkpoint(self._what)
        return await self._inner.__anext__()

    async def aclose(self) -> None:
        close = getattr(self._inner, "aclose", None)
        if close is not None:
            await close()


class _GatedContext:
    def __init__(self, inner: Any, scheduler: Scheduler, what: PortCall) -> None:
        self._inner, self._scheduler, self._what = inner, scheduler, what

    async def __aenter__(self) -> Any:
        await self._scheduler.checkpoint(self._what)
        return await self._inner.__aenter__()

    async def __aexit__(self, *exc: Any) -> Any:
        return await self._inner.__aexit__(*exc)


def random_policy(rng: random.Random, reads: frozenset[str] = frozenset(),
                  habits: Sequence[str] = ("any", "keep1", "stale", "stale")) -> Callable[[list[str]], int]:
    """A `choose` for the Scheduler, with a habit drawn from `habits` by `rng`: pick any parked task at every
    step ("any"); keep the last task going with odds 1:1 or 3:1 ("keep1", "keep3": one call often runs
    several steps inside another's window); or run one task at a time, and stop one of them right after its
    k-th call of a method in `reads` (k random, small) until the others are done ("stale": a whole request
    fits between a read and the write that relies on it). Labels are "task: port.method(...)", as the
    scheduler makes them."""
    habit = rng.choice(habits)
    keep = {"keep1": 1, "keep3": 3}.get(habit, 0)
    victim, reads_left, held = None, rng.randint(1, 4), False
    current, did = None, ""  # the task picked last, and the method it was about to call

    def choose(labels: list[str]) -> int:
        nonlocal victim, reads_left, held, current, did
        names = [label.split(": ", 1)[0] for label in labels]
        if current not in names:
            current = None
        if habit == "stale":
            victim = victim or rng.choice(names)
            if current == victim and did in reads:
                reads_left -= 1
                held = held or reads_left == 0
            runnable = [name for name in names if not (held and name == victim)] or names
            if current not in runnable:
                current = victim if victim in runnable else rng.choice(runnable)
        elif current is None or not keep or rng.randrange(keep + 1) == keep:
            current = rng.choice(names)
        index = names.index(current)
        did = labels[index].split(": ", 1)[1].split("(", 1)[0].split(".")[-1]
        return index

    return choose


def gate_ports(container: Any, scheduler: Scheduler, adapters: dict[str, Any] | None = None) -> dict[str, Any]:
    """Route the container's use-cases through gated ports (call before any use-case is built), around its
    own adapters or the given ones (a copy of a prepared registry, say). Returns the real adapters, for
    checks that should not go through the gates."""
    inner = {}
    for port in PORTS:
        provider = getattr(container.adapters, port)
        inner[port] = (adapters or {}).get(port) or provider()
        provider.override(providers.Object(Gate(inner[port], scheduler, port)))
    return inner


async def body(*chunks: bytes) -> AsyncIterator[bytes]:
    """A request body; the port that consumes it parks before each chunk."""
    for chunk in chunks:
        yield chunk
