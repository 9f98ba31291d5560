"""bench.routing's summary: shift and return times, phase shares, and the money checks."""
from bench.routing import Phase, Sent, summarize

PHASES = [Phase("steady", 3, {}), Phase("degraded", 4, {}), Phase("recovered", 4, {})]


def _sent(at: float, phase: str, channel: str, tried: list[str] | None = None,
          oid: str = "") -> Sent:
    order = {"order_id": oid or f"o{at}", "channel": channel}
    if tried:
        order["tried_channels"] = tried
    return Sent(at, phase, 200, order)


def test_shift_and_return_are_measured_from_the_phase_starts() -> None:
    sent = []
    plan = {0: "stripe", 1: "stripe", 2: "stripe",        # steady
            3: "stripe", 4: "paypal", 5: "paypal", 6: "paypal",   # degraded at 3 s
            7: "paypal", 8: "paypal", 9: "stripe", 10: "stripe"}  # recovered at 7 s
    for sec, ch in plan.items():
        for k in range(4):
            sent.append(_sent(sec + k / 4, "steady" if sec < 3 else
                              "degraded" if sec < 7 else "recovered", ch, oid=f"o{sec}-{k}"))
    ledgers = {"stripe": {s.order["order_id"]: {"charges": 1} for s in sent
                          if s.order["channel"] == "stripe"},
               "paypal": {s.order["order_id"]: {"charges": 1} for s in sent
                          if s.order["channel"] == "paypal"}}
    finals = {s.order["order_id"]: {**s.order, "status": "SUCCEEDED"} for s in sent}
    r = summarize(sent, PHASES, ("stripe", "paypal"), ledgers, finals)
    assert (r["shift_s"], r["return_s"]) == (1, 2)
    assert r["phases"]["degraded"]["first_choice_stripe_pct"] == 25.0
    assert r["double_charged"] == [] and r["money_mismatches"] == []


def test_a_failover_counts_for_the_first_choice_and_double_charges_are_found() -> None:
    a = _sent(0.1, "steady", "paypal", tried=["stripe"], oid="a")
    b = _sent(0.2, "steady", "stripe", oid="b")
    assert a.first_choice == "stripe"
    ledgers = {"stripe": {"a": {"charges": 0}, "b": {"charges": 1}},
               "paypal": {"a": {"charges": 1}, "b": {"charges": 1}}}
    finals = {"a": {"order_id": "a", "channel": "paypal", "status": "SUCCEEDED"},
              "b": {"order_id": "b", "channel": "stripe", "status": "SUCCEEDED"}}
    r = summarize([a, b], PHASES, ("stripe", "paypal"), ledgers, finals)
    assert r["phases"]["steady"]["failovers"] == 1
    assert r["double_charged"] == ["b"] and r["money_mismatches"] == ["b"]
