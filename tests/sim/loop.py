"""Virtual time: an asyncio event loop whose clock jumps to the next timer when nothing is ready.

The loop is asyncio's own SelectorEventLoop; only its selector is replaced. When the loop has
nothing ready it asks the selector to wait `timeout` seconds for I/O until the next timer; the
virtual selector does no I/O and instead moves the loop's clock to that timer. So
`asyncio.sleep(30)` returns at once in real time, 30 virtual seconds later, and a run is a pure
function of its inputs: callbacks run in asyncio's FIFO order, timers in time order, and nothing
reads the wall clock (the shard, its store and its channel port get `SimClock`, built on the
loop's time).

Every task remembers which shard incarnation created it (a context variable read by the task
factory), so a simulated crash can drop exactly the tasks of the dead incarnation, the way a
killed Ray actor process loses everything it was running.
"""
from __future__ import annotations

import asyncio
import contextvars
import selectors
from datetime import datetime, timezone
from typing import Any, Coroutine, Generator

EPOCH = 1_764_000_000.0   # the Unix time the simulation starts at (2025-11-24)

# Which shard incarnation is running the current code: 0 for the world (clients, channel,
# store), 1, 2, ... for the shard's lives.
INCARNATION: contextvars.ContextVar[int] = contextvars.ContextVar("sim_incarnation", default=0)


class Deadlock(RuntimeError):
    """The loop has nothing ready and no timer: every task waits on something that never comes."""


class _VirtualSelector(selectors.SelectSelector):
    """Registers file objects like a real selector (the loop's self-pipe) but never polls them:
    a wait for I/O becomes a jump of the virtual clock to the next timer."""

    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualTimeLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        loop = self.loop
        assert loop is not None
        if timeout is None:
            raise Deadlock(f"nothing ready and no timer at t={loop.time() - loop.start:.3f}s")
        if timeout > 0:
            loop.advance_to_next_timer()
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        selector = _VirtualSelector()
        super().__init__(selector)
        selector.loop = self
        self.start = 1000.0
        self._now = self.start
        self.iterations = 0
        self.tasks_by_incarnation: dict[int, dict[asyncio.Task[Any], None]] = {}
        self.set_task_factory(self._make_task)

    def time(self) -> float:
        return self._now

    def advance_to_next_timer(self) -> None:
        self.iterations += 1
        scheduled: list[asyncio.TimerHandle] = self._scheduled  # type: ignore[attr-defined]
        if scheduled:
            self._now = max(self._now, scheduled[0].when())

    def _make_task(self, loop: asyncio.AbstractEventLoop,
                   coro: Coroutine[Any, Any, Any] | Generator[Any, None, Any],
                   context: contextvars.Context | None = None) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.Task(coro, loop=loop, context=context)
        inc = context.get(INCARNATION, 0) if context is not None else INCARNATION.get()
        if inc:
            tasks = self.tasks_by_incarnation.setdefault(inc, {})
            tasks[task] = None
            task.add_done_callback(tasks.pop)
        return task

    def kill_incarnation(self, inc: int) -> int:
        """Cancel every task of incarnation `inc` (its coroutines never run again); how many."""
        tasks = self.tasks_by_incarnation.pop(inc, {})
        for task in list(tasks):
            task.cancel()
        return len(tasks)


class SimClock:
    """core.clock.Clock on the loop's virtual time: Unix time = EPOCH + elapsed virtual time."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        self._loop = loop

    def time(self) -> float:
        return EPOCH + (self._loop.time() - self._loop.start)

    def monotonic(self) -> float:
        return self._loop.time()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.time(), timezone.utc)

    def elapsed(self) -> float:
        """Virtual seconds since the run started."""
        return self._loop.time() - self._loop.start


def run_in_incarnation(inc: int, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    """Start `coro` as a task of shard incarnation `inc` (its children inherit it)."""
    ctx = contextvars.copy_context()
    ctx.run(INCARNATION.set, inc)
    return asyncio.get_running_loop().create_task(coro, context=ctx)
