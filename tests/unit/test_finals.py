import dataclasses

from channels.base import Notification
from core.states import Fact
from gateway.finals import FinalOrders

PAID = {"order_id": "P1", "status": "SUCCEEDED", "amount": 600, "currency": "CNY",
        "channel_trade_no": "T1"}
NOTE = Notification("P1", Fact.PAID, "T1", 600, "CNY", "n1", "TRADE_SUCCESS")


def test_only_an_exact_repeat_of_a_known_final_fact_is_a_duplicate():
    f = FinalOrders(10)
    assert not f.repeats_known_final(NOTE)  # unknown order: goes to the shard
    f.remember(PAID)
    assert f.repeats_known_final(NOTE)
    for changed in ({"amount": 601}, {"currency": "USD"}, {"channel_trade_no": "T2"},
                    {"fact": Fact.CLOSED}, {"fact": Fact.DECLINED}, {"order_id": "P2"}):
        assert not f.repeats_known_final(dataclasses.replace(NOTE, **changed)), changed
    assert f.hits == 1


def test_pending_and_failed_orders_are_not_remembered_and_the_cache_is_bounded():
    f = FinalOrders(2)
    f.remember({**PAID, "status": "PENDING"})
    f.remember({**PAID, "order_id": "F", "status": "FAILED"})
    assert len(f) == 0
    for i in range(5):
        f.remember({**PAID, "order_id": f"P{i}"})
    assert len(f) == 2
    assert not f.repeats_known_final(dataclasses.replace(NOTE, order_id="P0"))
    assert f.repeats_known_final(dataclasses.replace(NOTE, order_id="P4"))
    assert FinalOrders(0).repeats_known_final(NOTE) is False


def test_refund_notes_and_notes_from_another_channel_are_not_duplicates() -> None:
    import dataclasses
    from channels.base import Notification, NotificationKind
    from core.states import Fact
    from gateway.finals import FinalOrders
    f = FinalOrders(10)
    f.remember({"order_id": "o1", "status": "SUCCEEDED", "amount": 600, "currency": "CNY",
                "channel_trade_no": "T1", "channel": "alipay"})
    paid = Notification("o1", Fact.PAID, "T1", 600, "CNY", "n1", "TRADE_SUCCESS",
                        channel="alipay")
    assert f.repeats_known_final(paid)
    assert not f.repeats_known_final(dataclasses.replace(paid, channel="wechatpay"))
    assert not f.repeats_known_final(dataclasses.replace(paid, kind=NotificationKind.REFUND,
                                                         refund_id="r1"))
