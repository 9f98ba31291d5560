"""actors.board.TaskBoard: an answer collected in the loop turn its task finished in (before the
task's done callback ran) is not marked done afterwards, so the board keeps working."""
from __future__ import annotations

import asyncio

from actors.board import TaskBoard


async def test_an_answer_taken_before_its_done_callback_does_not_break_the_board() -> None:
    board: TaskBoard[str, str] = TaskBoard(
        inflight_max=10, keep_s=0.0, refused=lambda k: "refused", lost=lambda k: "lost",
        crashed=lambda k, e: f"crashed {e!r}")
    gate = asyncio.get_running_loop().create_future()

    async def work() -> str:
        await gate
        return "done"

    async def poll() -> dict[str, str]:
        await gate                  # woken in the same loop turn as the task, right after it
        return await board.collect(["t1"], wait_s=0)

    assert await board.run_many([("t1", work)], wait_s=0) == [None]   # still running
    polled = asyncio.ensure_future(poll())
    await asyncio.sleep(0)
    gate.set_result(None)
    assert await polled == {"t1": "done"}
    await asyncio.sleep(0.01)       # past keep_s: the next call sweeps
    assert await board.run_many([("t2", work)], wait_s=None) == ["done"]
    assert len(board) == 0
