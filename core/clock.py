"""Injected time: wall clock in UTC-aware datetimes, deadlines on a monotonic clock."""
from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...
    def time(self) -> float: ...       # Unix seconds
    def monotonic(self) -> float: ...  # seconds, only for intervals


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(timezone.utc)

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class FakeClock:
    """A clock for tests: starts at a fixed instant and moves only when told."""

    def __init__(self, start: float = 1_764_000_000.0) -> None:
        self._t = start
        self._mono = 1000.0

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._t, timezone.utc)

    def time(self) -> float:
        return self._t

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        assert seconds >= 0
        self._t += seconds
        self._mono += seconds


def rfc3339(ts: float) -> str:
    """Unix seconds -> RFC 3339 UTC with milliseconds, e.g. 2026-11-25T03:40:00.123Z."""
    dt = datetime.fromtimestamp(ts, timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
