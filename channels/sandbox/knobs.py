"""The sandbox's fault knobs: one validated, replaceable value, settable by flags and over HTTP.

Rates are probabilities in [0, 1] drawn from the sandbox's seeded RNG (they are not money, so they
may be floats). Durations are milliseconds.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

DURATION_MS_MAX = 600_000
NOTIFY_RETRIES_MAX = 10


@dataclass(frozen=True)
class Knobs:
    latency_ms: int = 0                  # added to every API answer
    decline_rate: float = 0.0            # charge: the payer's payment is declined, nothing taken
    hang_rate: float = 0.0               # pay: commit, then hold the answer hang_ms
    hang_ms: int = 3000
    commit_then_drop_rate: float = 0.0   # pay: commit, then close the connection without answer
    error_rate: float = 0.0              # any method: answer 20000 and do nothing
    followup_error_rate: float = 0.0     # query and cancel (close, reverse) only: as error_rate;
                                         # charges, refunds and statements are not affected
    notify_drop_rate: float = 0.0        # a notification is never sent
    notify_delay_ms: int = 200           # before the first delivery (after the pay answer, as at Alipay)
    notify_duplicate_rate: float = 0.0   # a notification is delivered twice (same notify_id)
    payer_confirm_ms: int = 1500         # amount ending 02: the payer confirms after this
    naive_charge: bool = False           # every pay request charges again (no idempotency)
    refund_delay_ms: int = 0             # 0: a refund succeeds at once; else PROCESSING this long
    notify_retry_ms: tuple[int, ...] = field(default=(1000, 2000, 4000))

    def replace(self, changes: Mapping[str, Any]) -> Knobs:
        """A copy with `changes` applied; ValueError naming the first bad knob."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        clean: dict[str, Any] = {}
        for name, raw in changes.items():
            if name not in fields:
                raise ValueError(f"unknown knob {name!r}")
            clean[name] = _check(name, getattr(self, name), raw)
        return dataclasses.replace(self, **clean)

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["notify_retry_ms"] = list(self.notify_retry_ms)
        return out


def _check(name: str, current: Any, raw: Any) -> Any:
    if isinstance(current, bool):
        if not isinstance(raw, bool):
            raise ValueError(f"{name}: expected true or false")
        return raw
    if isinstance(current, tuple):
        if (not isinstance(raw, (list, tuple)) or len(raw) > NOTIFY_RETRIES_MAX
                or not all(_is_int(v) and 0 <= v <= DURATION_MS_MAX for v in raw)):
            raise ValueError(f"{name}: expected at most {NOTIFY_RETRIES_MAX} durations in ms")
        return tuple(raw)
    if isinstance(current, float):
        if not (_is_int(raw) or isinstance(raw, float)) or not 0 <= raw <= 1:
            raise ValueError(f"{name}: expected a probability in [0, 1]")
        return float(raw)
    if not _is_int(raw) or not 0 <= raw <= DURATION_MS_MAX:
        raise ValueError(f"{name}: expected milliseconds in [0, {DURATION_MS_MAX}]")
    return raw


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
