"""Walk the whole transition table: every (status, fact, rung) combination, forbidden edges too."""
import itertools

import pytest

from core.order import CreateOrder, Order
from core.states import NOOPS, TRANSITIONS, Fact, OrderStatus, Outcome, Rung, apply

S, F = OrderStatus, Fact

EXPECTED = {
    (S.PENDING, F.PAID): (Outcome.MOVED, S.SUCCEEDED),
    (S.PENDING, F.DECLINED): (Outcome.MOVED, S.FAILED),
    (S.PENDING, F.CLOSED): (Outcome.MOVED, S.CLOSED),
    (S.PENDING, F.WAITING): (Outcome.NOOP, S.PENDING),
    (S.SUCCEEDED, F.PAID): (Outcome.NOOP, S.SUCCEEDED),
    (S.SUCCEEDED, F.DECLINED): (Outcome.CONFLICT, S.SUCCEEDED),
    (S.SUCCEEDED, F.CLOSED): (Outcome.CONFLICT, S.SUCCEEDED),
    (S.SUCCEEDED, F.WAITING): (Outcome.NOOP, S.SUCCEEDED),
    (S.FAILED, F.PAID): (Outcome.CONFLICT, S.FAILED),
    (S.FAILED, F.DECLINED): (Outcome.NOOP, S.FAILED),
    (S.FAILED, F.CLOSED): (Outcome.NOOP, S.FAILED),
    (S.FAILED, F.WAITING): (Outcome.NOOP, S.FAILED),
    (S.CLOSED, F.PAID): (Outcome.CONFLICT, S.CLOSED),
    (S.CLOSED, F.DECLINED): (Outcome.CONFLICT, S.CLOSED),
    (S.CLOSED, F.CLOSED): (Outcome.NOOP, S.CLOSED),
    (S.CLOSED, F.WAITING): (Outcome.NOOP, S.CLOSED),
}


def test_expected_table_covers_every_pair():
    assert set(EXPECTED) == set(itertools.product(S, F))


@pytest.mark.parametrize("status,fact,rung", list(itertools.product(S, F, Rung)))
def test_apply_every_edge(status, fact, rung):
    outcome, new_status = EXPECTED[(status, fact)]
    d = apply(status, fact, rung)
    assert d.outcome is outcome
    assert d.status is new_status
    assert d.resolved_by == (rung if outcome is Outcome.MOVED else None)


def test_final_states_never_move():
    for status in (S.SUCCEEDED, S.FAILED, S.CLOSED):
        for fact, rung in itertools.product(F, Rung):
            assert apply(status, fact, rung).status is status


def test_tables_are_disjoint_and_only_leave_pending():
    assert not set(TRANSITIONS) & NOOPS
    assert all(src is S.PENDING and dst.is_final for (src, _), dst in TRANSITIONS.items())


def _order() -> Order:
    cmd = CreateOrder("app", "k1", "u1", 600, "CNY", "gems", "alipay", "barcode", "123")
    return Order.new("P_local_s0_1_000000000abcdefgh", cmd, 100.0)


def test_order_learn_records_history_and_rung():
    o = _order()
    o2, d = o.learn(F.PAID, Rung.NOTIFY, 101.0, channel_trade_no="T1")
    assert (o2.status, o2.resolved_by, o2.channel_trade_no) == (S.SUCCEEDED, Rung.NOTIFY, "T1")
    assert [(c.status, c.fact, c.rung) for c in o2.history] == [("SUCCEEDED", "PAID", "notify")]
    o3, d3 = o2.learn(F.PAID, Rung.QUERY, 102.0)
    assert d3.outcome is Outcome.NOOP and o3 is o2
    o4, d4 = o2.learn(F.CLOSED, Rung.QUERY, 103.0)
    assert d4.outcome is Outcome.CONFLICT
    assert (o4.status, o4.conflicts, o4.resolved_by) == (S.SUCCEEDED, 1, Rung.NOTIFY)


def test_order_record_round_trip_and_api_form():
    o, _ = _order().learn(F.DECLINED, Rung.SYNC, 101.5, failure_code="ACQ.X",
                          failure_message="no money")
    back = Order.from_record(o.to_record())
    assert back == o
    api = o.to_api()
    assert api["status"] == "FAILED" and api["resolved_by"] == "sync"
    assert api["failure"] == {"code": "ACQ.X", "message": "no money"}
    assert api["created_at"] == "1970-01-01T00:01:40.000Z"
    assert "auth_code" not in o.to_record()


def test_fingerprint_ignores_auth_code_but_not_amount():
    a = CreateOrder("app", "k", "u", 600, "CNY", "s", "alipay", "barcode", "111")
    b = CreateOrder("app", "k", "u", 600, "CNY", "s", "alipay", "barcode", "222")
    c = CreateOrder("app", "k", "u", 601, "CNY", "s", "alipay", "barcode", "111")
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_from_record_fills_defaults_interns_shared_strings_and_refuses_a_broken_record():
    o = _order()
    rec = o.to_record()
    del rec["conflicts"]  # a record written before the field existed
    back = Order.from_record(rec)
    assert back == o and back.conflicts == 0
    other = Order.from_record(_order().to_record())
    assert back.app_id is other.app_id and back.channel is other.channel
    broken = o.to_record()
    del broken["amount"]
    with pytest.raises(KeyError):
        Order.from_record(broken)
