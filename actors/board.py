"""A board of keyed tasks: started in batches, answered within a wait, the rest collected later.

This is how paycell batches actor calls without letting one slow item hold up the others: a batch
call starts one task per item and returns every answer that arrived within `wait_s` (None for
the ones still running); `collect` is a long poll that returns late answers as they finish. An
answer the board no longer has (its actor restarted, or nobody collected it for `keep_s`) comes
back as `lost(key)`, so the caller can resolve it another way.
"""
from __future__ import annotations

import asyncio
import functools
from typing import Awaitable, Callable, Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TaskBoard(Generic[K, V]):
    def __init__(self, *, inflight_max: int, keep_s: float, refused: Callable[[K], V],
                 lost: Callable[[K], V], crashed: Callable[[K, BaseException], V]) -> None:
        self._inflight_max = inflight_max
        self._keep_s = keep_s
        self._refused, self._lost, self._crashed = refused, lost, crashed
        self._tasks: dict[K, asyncio.Task[V]] = {}
        self._done_at: dict[K, float] = {}

    def __len__(self) -> int:
        return len(self._tasks)

    async def run_many(self, items: list[tuple[K, Callable[[], Awaitable[V]]]],
                       wait_s: float | None) -> list[V | None]:
        """Start one task per (key, factory); None for a key whose task is still running after
        wait_s (None: wait for all). A key already on the board is not started again."""
        self._sweep()
        tasks = [self._start(key, make) for key, make in items]
        running = [t for t in tasks if t is not None and not t.done()]
        if running and (wait_s is None or wait_s > 0):
            await asyncio.wait(running, timeout=wait_s)
        out: list[V | None] = []
        for (key, _), task in zip(items, tasks):
            if task is None:
                out.append(self._refused(key))
            elif task.done():
                out.append(self._take(key))
            else:
                out.append(None)
        return out

    async def collect(self, keys: list[K], wait_s: float) -> dict[K, V]:
        """Answers for these keys: those done now, or the first to finish within wait_s."""
        lost = {k: self._lost(k) for k in keys if k not in self._tasks}
        mine = [self._tasks[k] for k in keys if k in self._tasks]
        if mine and not any(t.done() for t in mine) and wait_s > 0:
            await asyncio.wait(mine, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
        done = {k: self._take(k) for k in keys if k in self._tasks and self._tasks[k].done()}
        return {**lost, **done}

    def _start(self, key: K, make: Callable[[], Awaitable[V]]) -> asyncio.Task[V] | None:
        existing = self._tasks.get(key)
        if existing is not None:
            return existing
        if len(self._tasks) >= self._inflight_max:
            return None
        task = asyncio.ensure_future(make())
        self._tasks[key] = task
        task.add_done_callback(functools.partial(self._mark_done, key))
        return task

    def _mark_done(self, key: K, task: asyncio.Task[V]) -> None:
        # A done callback runs a loop turn after the task finished: a caller that saw it done
        # meanwhile may have taken it already (or a new task holds the key). Marking a key the
        # board no longer has would make _sweep take it again: a KeyError in every later call.
        if self._tasks.get(key) is task:
            self._done_at[key] = asyncio.get_running_loop().time()

    def _take(self, key: K) -> V:
        task = self._tasks.pop(key)
        self._done_at.pop(key, None)
        if task.cancelled():
            return self._crashed(key, asyncio.CancelledError())
        exc = task.exception()
        if exc is not None:
            return self._crashed(key, exc)
        return task.result()

    def _sweep(self) -> None:
        horizon = asyncio.get_running_loop().time() - self._keep_s
        for key in [k for k, at in self._done_at.items() if at < horizon]:
            self._take(key)
