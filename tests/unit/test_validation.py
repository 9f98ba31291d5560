"""Create-order body validation: the good path, ~50 bad inputs each naming its field, ids."""
from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.errors import NotFound, ValidationError
from core.ids import make_order_id
from core.money import AMOUNT_MINOR_MAX
from gateway.validation import (check_order_id, check_out_trade_no, parse_create_order,
                                parse_json_object)

CHANNELS = ("alipay", "sandbox")
GOOD: dict[str, Any] = {
    "out_trade_no": "g-100234", "user_id": "u-42", "amount": 600, "currency": "CNY",
    "subject": "60 gems", "channel": "alipay",
    "payment": {"type": "barcode", "auth_code": "28763443825664394"},
    "device": {"fingerprint": "fp-1", "ip": "203.0.113.7"}, "region": "cn-south",
    "notify_url": "https://merchant.example/notify",
}


def parse(body: dict[str, Any] | bytes) -> Any:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return parse_create_order("demo-app", raw, CHANNELS)


def with_(**changes: Any) -> dict[str, Any]:
    body = dict(GOOD)
    for key, value in changes.items():
        if value is DROP:
            body.pop(key)
        else:
            body[key] = value
    return body


DROP = object()


def fields_of(body: dict[str, Any] | bytes) -> list[str]:
    with pytest.raises(ValidationError) as err:
        parse(body)
    assert err.value.code == "invalid_request"
    return [e["field"] for e in err.value.errors]


def test_good_body_gives_create_order() -> None:
    cmd = parse(GOOD)
    assert (cmd.app_id, cmd.out_trade_no, cmd.user_id, cmd.amount, cmd.currency, cmd.subject,
            cmd.channel, cmd.payment_type, cmd.auth_code, cmd.notify_url) == (
        "demo-app", "g-100234", "u-42", 600, "CNY", "60 gems", "alipay", "barcode",
        "28763443825664394", "https://merchant.example/notify")


def test_minimal_app_payment_is_routed() -> None:
    body = {"out_trade_no": "a_B-9", "user_id": "用户42", "amount": AMOUNT_MINOR_MAX,
            "currency": "JPY", "subject": "礼包", "payment": {"type": "app"}}
    cmd = parse(body)
    assert (cmd.channel, cmd.payment_type, cmd.auth_code, cmd.notify_url) == ("", "app", "", "")
    assert cmd.amount == AMOUNT_MINOR_MAX


def test_card_payment_carries_its_token_and_country() -> None:
    cmd = parse(with_(channel=DROP, payment={"type": "card", "token": "pm_card_visa"},
                      currency="USD", country="US"))
    assert (cmd.channel, cmd.payment_type, cmd.payment_token, cmd.country, cmd.auth_code) == (
        "", "card", "pm_card_visa", "US", "")
    assert "pm_card_visa" not in repr(cmd)


def test_ipv6_and_http_url_accepted() -> None:
    cmd = parse(with_(device={"ip": "2001:db8::1"}, notify_url="http://10.0.0.1:8080/cb?x=1"))
    assert cmd.notify_url == "http://10.0.0.1:8080/cb?x=1"


def test_escaped_unicode_body_accepted() -> None:
    raw = orjson.dumps(GOOD).replace(b'"60 gems"', b'"\\u5b9d\\u77f3 \\u003a 60"')
    assert parse(raw).subject == "宝石 : 60"


BAD_FIELDS: list[tuple[str, dict[str, Any], str]] = [
    ("amount float", with_(amount=600.0), "amount"),
    ("amount bool", with_(amount=True), "amount"),
    ("amount string", with_(amount="600"), "amount"),
    ("amount zero", with_(amount=0), "amount"),
    ("amount negative", with_(amount=-1), "amount"),
    ("amount too big", with_(amount=AMOUNT_MINOR_MAX + 1), "amount"),
    ("amount null", with_(amount=None), "amount"),
    ("amount missing", with_(amount=DROP), "amount"),
    ("currency unknown", with_(currency="XXX"), "currency"),
    ("currency lower", with_(currency="cny"), "currency"),
    ("currency number", with_(currency=156), "currency"),
    ("out_trade_no empty", with_(out_trade_no=""), "out_trade_no"),
    ("out_trade_no 65", with_(out_trade_no="a" * 65), "out_trade_no"),
    ("out_trade_no space", with_(out_trade_no="g 1"), "out_trade_no"),
    ("out_trade_no dot", with_(out_trade_no="g.1"), "out_trade_no"),
    ("out_trade_no newline", with_(out_trade_no="g1\n"), "out_trade_no"),
    ("out_trade_no number", with_(out_trade_no=100234), "out_trade_no"),
    ("out_trade_no missing", with_(out_trade_no=DROP), "out_trade_no"),
    ("user_id empty", with_(user_id=""), "user_id"),
    ("user_id space", with_(user_id="u 42"), "user_id"),
    ("user_id tab", with_(user_id="u\t42"), "user_id"),
    ("user_id 65", with_(user_id="u" * 65), "user_id"),
    ("user_id control", with_(user_id="u\x0142"), "user_id"),
    ("user_id missing", with_(user_id=DROP), "user_id"),
    ("subject empty", with_(subject=""), "subject"),
    ("subject 129", with_(subject="s" * 129), "subject"),
    ("subject list", with_(subject=["a"]), "subject"),
    ("subject missing", with_(subject=DROP), "subject"),
    ("channel unknown", with_(channel="paypal"), "channel"),
    ("channel null", with_(channel=None), "channel"),
    ("payment missing", with_(payment=DROP), "payment"),
    ("payment string", with_(payment="barcode"), "payment"),
    ("payment null", with_(payment=None), "payment"),
    ("payment type unknown", with_(payment={"type": "cash"}), "payment.type"),
    ("card without token", with_(payment={"type": "card"}), "payment.token"),
    ("card token with spaces", with_(payment={"type": "card", "token": "pm card"}),
     "payment.token"),
    ("card with auth_code", with_(payment={"type": "card", "token": "pm_1",
                                           "auth_code": "28763443825664394"}),
     "payment.auth_code"),
    ("country lower case", with_(country="cn"), "country"),
    ("country three letters", with_(country="CHN"), "country"),
    ("payment type missing", with_(payment={"auth_code": "28763443825664394"}), "payment.type"),
    ("barcode without code", with_(payment={"type": "barcode"}), "payment.auth_code"),
    ("auth_code 9 digits", with_(payment={"type": "barcode", "auth_code": "123456789"}),
     "payment.auth_code"),
    ("auth_code 33 digits", with_(payment={"type": "barcode", "auth_code": "1" * 33}),
     "payment.auth_code"),
    ("auth_code letters", with_(payment={"type": "barcode", "auth_code": "12345abcde"}),
     "payment.auth_code"),
    ("auth_code integer", with_(payment={"type": "barcode", "auth_code": 28763443825664394}),
     "payment.auth_code"),
    ("app with auth_code", with_(payment={"type": "app", "auth_code": "28763443825664394"}),
     "payment.auth_code"),
    ("payment extra field", with_(payment={"type": "app", "x": 1}), "payment.x"),
    ("device string", with_(device="fp"), "device"),
    ("device bad ip", with_(device={"ip": "300.1.1.1"}), "device.ip"),
    ("device ip hostname", with_(device={"ip": "localhost"}), "device.ip"),
    ("device ip number", with_(device={"ip": 3232235777}), "device.ip"),
    ("device fingerprint long", with_(device={"fingerprint": "f" * 129}), "device.fingerprint"),
    ("device extra field", with_(device={"os": "ios"}), "device.os"),
    ("region upper", with_(region="CN-South"), "region"),
    ("region 33", with_(region="r" * 33), "region"),
    ("region empty", with_(region=""), "region"),
    ("notify_url ftp", with_(notify_url="ftp://merchant.example/x"), "notify_url"),
    ("notify_url no host", with_(notify_url="https:///x"), "notify_url"),
    ("notify_url relative", with_(notify_url="/notify"), "notify_url"),
    ("notify_url long", with_(notify_url="https://m.example/" + "a" * 500), "notify_url"),
    ("notify_url space", with_(notify_url="https://m.example/a b"), "notify_url"),
    ("notify_url bad port", with_(notify_url="https://m.example:99999/"), "notify_url"),
    ("unknown field", with_(amount_yuan="6.00"), "amount_yuan"),
]


@pytest.mark.parametrize("case, body, field", BAD_FIELDS, ids=[c[0] for c in BAD_FIELDS])
def test_bad_field_names_the_field(case: str, body: dict[str, Any], field: str) -> None:
    assert fields_of(body) == [field]


def test_every_problem_is_reported_at_once() -> None:
    body = with_(amount=1.5, currency="XXX", out_trade_no="", channel="x", extra=1,
                 payment={"type": "barcode", "auth_code": "1"}, user_id=DROP)
    assert sorted(fields_of(body)) == sorted(["extra", "user_id", "out_trade_no", "amount",
                                              "currency", "channel", "payment.auth_code"])


@pytest.mark.parametrize("raw, message", [
    (b'{"amount": 1, "amount": 2}', "duplicate key"),
    (b'{"payment": {"type": "app", "type": "barcode"}}', "duplicate key"),
    (b'{"a\\u003a": 1, "a\\u003a": 2}', "duplicate key"),
    (b'\xff\xfe{}', "not UTF-8"),
    (b'{"subject": "\xe4\xb8"}', "not UTF-8"),
    (b'[1, 2]', "JSON object"),
    (b'"text"', "JSON object"),
    (b'', "not valid JSON"),
    (b'{"amount": 1,}', "not valid JSON"),
    (b'{"amount": NaN}', "not valid JSON"),
])
def test_bad_bodies(raw: bytes, message: str) -> None:
    with pytest.raises(ValidationError) as err:
        parse(raw)
    assert message in err.value.detail
    assert err.value.errors[0]["field"] in ("body", "amount", "type", "a:")


def test_duplicate_key_names_the_key() -> None:
    with pytest.raises(ValidationError) as err:
        parse(orjson.dumps(GOOD)[:-1] + b',"currency":"USD"}')
    assert err.value.errors == [{"field": "currency", "message": "duplicate key in the JSON body"}]


def test_duplicate_hidden_behind_colons_in_strings_is_found() -> None:
    # the overwritten value's colons must not mask the missing key separator
    raw = b'{"subject": "a:b:c", "subject": "x", "k": "::"}'
    with pytest.raises(ValidationError, match="duplicate"):
        parse_json_object(raw)


_keys = st.text(min_size=1, max_size=6)
_values = st.recursive(st.none() | st.booleans() | st.integers(-10, 10) | st.text(max_size=8),
                       lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(_keys, inner, max_size=3), max_leaves=8)


@given(st.dictionaries(_keys, _values, max_size=5))
def test_objects_without_duplicates_round_trip(obj: dict[str, Any]) -> None:
    assert parse_json_object(orjson.dumps(obj)) == obj


@given(st.dictionaries(_keys, _values, min_size=1, max_size=5), st.data())
def test_any_duplicated_key_is_refused(obj: dict[str, Any], data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(sorted(obj)))
    extra = data.draw(_values)
    raw = orjson.dumps(obj)[:-1] + b"," + orjson.dumps({key: extra})[1:]
    with pytest.raises(ValidationError, match="duplicate"):
        parse_json_object(raw)


def test_check_order_id() -> None:
    good = make_order_id("local", "s0", 3, 1_764_000_000_000, rand=12345)
    assert check_order_id(good) == good
    for bad in ("", "P_local", "../etc/passwd", good + "!", good.upper()):
        with pytest.raises(NotFound):
            check_order_id(bad)


def test_check_out_trade_no() -> None:
    assert check_out_trade_no("g-100234") == "g-100234"
    for bad in (None, "", "a" * 65, "g 1", "g%201"):
        with pytest.raises(ValidationError) as err:
            check_out_trade_no(bad)
        assert err.value.errors[0]["field"] == "out_trade_no"


# ---- refunds ---------------------------------------------------------------------------------

ORDER_ID = "P_local_s0_1_0mhzs5c0000000000000001"
GOOD_REFUND: dict[str, Any] = {"out_refund_no": "rf-1", "amount": 200, "reason": "not delivered"}
BAD_REFUNDS = [
    ("no key", {"amount": 1}, "out_refund_no"),
    ("no amount", {"out_refund_no": "r"}, "amount"),
    ("key too long", {**GOOD_REFUND, "out_refund_no": "r" * 65}, "out_refund_no"),
    ("key bad char", {**GOOD_REFUND, "out_refund_no": "r 1"}, "out_refund_no"),
    ("key not str", {**GOOD_REFUND, "out_refund_no": 7}, "out_refund_no"),
    ("amount zero", {**GOOD_REFUND, "amount": 0}, "amount"),
    ("amount float", {**GOOD_REFUND, "amount": 2.5}, "amount"),
    ("amount bool", {**GOOD_REFUND, "amount": True}, "amount"),
    ("amount string", {**GOOD_REFUND, "amount": "200"}, "amount"),
    ("amount huge", {**GOOD_REFUND, "amount": AMOUNT_MINOR_MAX + 1}, "amount"),
    ("reason long", {**GOOD_REFUND, "reason": "x" * 81}, "reason"),
    ("reason control", {**GOOD_REFUND, "reason": "a\nb"}, "reason"),
    ("reason not str", {**GOOD_REFUND, "reason": 5}, "reason"),
    ("unknown field", {**GOOD_REFUND, "currency": "CNY"}, "currency"),
]


def test_good_refund_body_gives_create_refund() -> None:
    from gateway.validation import parse_create_refund
    cmd = parse_create_refund("demo-app", ORDER_ID, orjson.dumps(GOOD_REFUND))
    assert (cmd.app_id, cmd.order_id, cmd.out_refund_no, cmd.amount, cmd.reason) == (
        "demo-app", ORDER_ID, "rf-1", 200, "not delivered")
    bare = parse_create_refund("demo-app", ORDER_ID, b'{"out_refund_no": "a", "amount": 1}')
    assert bare.reason == ""


@pytest.mark.parametrize("case, body, field", BAD_REFUNDS, ids=[c[0] for c in BAD_REFUNDS])
def test_bad_refund_field_names_the_field(case: str, body: dict[str, Any], field: str) -> None:
    from gateway.validation import parse_create_refund
    with pytest.raises(ValidationError) as err:
        parse_create_refund("demo-app", ORDER_ID, orjson.dumps(body))
    assert [e["field"] for e in err.value.errors] == [field], case


def test_bad_refund_bodies() -> None:
    from gateway.validation import parse_create_refund
    for raw in (b"[]", b"{", b'{"amount": 1, "amount": 2, "out_refund_no": "a"}'):
        with pytest.raises(ValidationError):
            parse_create_refund("demo-app", ORDER_ID, raw)
