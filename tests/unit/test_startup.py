"""actors.startup.until_answered: a launcher deploying the actors waits for Redis instead of
giving up on the first Unavailable (bench.chaos mixed: `paycell up` restarted while Redis was
down exited with "order store unavailable" and never became ready)."""
from __future__ import annotations

import pytest

from actors.startup import until_answered
from core.errors import Unavailable


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


def _asker(fail_times: int, error: Exception) -> tuple[list[float], object]:
    lefts: list[float] = []

    def ask(left: float) -> str:
        lefts.append(left)
        if len(lefts) <= fail_times:
            raise error
        return "pong"
    return lefts, ask


def test_unavailable_is_asked_again_until_it_answers() -> None:
    t = FakeTime()
    lefts, ask = _asker(3, Unavailable("order store unavailable: TimeoutError"))
    assert until_answered(ask, t.now + 10, again_after_s=0.5, clock=t.clock,   # type: ignore
                          sleep=t.sleep) == "pong"
    assert t.slept == [0.5, 0.5, 0.5]
    assert lefts == [10.0, 9.5, 9.0, 8.5]          # each call gets what is left of the deadline


def test_unavailable_past_the_deadline_is_raised() -> None:
    t = FakeTime()
    lefts, ask = _asker(100, Unavailable("order store unavailable: ConnectionError"))
    with pytest.raises(Unavailable):
        until_answered(ask, t.now + 2, again_after_s=0.5, clock=t.clock,       # type: ignore
                       sleep=t.sleep)
    assert len(lefts) == 4 and t.now <= 102.0


def test_other_errors_are_not_retried() -> None:
    t = FakeTime()
    lefts, ask = _asker(1, ValueError("a bug"))
    with pytest.raises(ValueError):
        until_answered(ask, t.now + 10, clock=t.clock, sleep=t.sleep)          # type: ignore
    assert lefts == [10.0] and t.slept == []
