"""Alipay RSA2 signing: sign-content rules, round trips, tampering and response extraction."""
from __future__ import annotations

import base64
import json

import pytest
from alipay.aop.api.util import SignatureUtils as sdk
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings, strategies as st

from channels.alipay import signing
from channels.base import ProtocolError
from core.settings import KEYS_DIR

APP_KEY = signing.load_private_key(KEYS_DIR / "alipay_app_private.pem")
APP_PUB = signing.load_public_key(KEYS_DIR / "alipay_app_public.pem")
PLATFORM_KEY = signing.load_private_key(KEYS_DIR / "alipay_platform_private.pem")
PLATFORM_PUB = signing.load_public_key(KEYS_DIR / "alipay_platform_public.pem")

keys_st = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12)
values_st = st.text(min_size=1, max_size=40)
params_st = st.dictionaries(keys_st, values_st, min_size=1, max_size=8)


def _pem_body(path: str) -> str:
    text = (KEYS_DIR / path).read_text()
    return "".join(line for line in text.splitlines() if not line.startswith("-----"))


# ---- sign content ---------------------------------------------------------------------------

def test_request_content_sorts_and_leaves_out_only_sign() -> None:
    params = {"method": "alipay.trade.pay", "app_id": "1", "sign_type": "RSA2", "sign": "zz",
              "biz_content": '{"a":1}', "charset": "utf-8"}
    assert signing.request_sign_content(params) == (
        'app_id=1&biz_content={"a":1}&charset=utf-8&method=alipay.trade.pay&sign_type=RSA2')


def test_notify_content_leaves_out_sign_and_sign_type() -> None:
    form = {"trade_status": "TRADE_SUCCESS", "sign": "x", "sign_type": "RSA2", "app_id": "9",
            "notify_id": "n1"}
    assert signing.notify_sign_content(form) == "app_id=9&notify_id=n1&trade_status=TRADE_SUCCESS"


def test_empty_and_none_values_are_left_out() -> None:
    assert signing.request_sign_content({"b": "", "a": "1", "c": None, "d": "0"}) == "a=1&d=0"


def test_non_strings_are_dumped_like_the_sdk() -> None:
    params = {"n": 5, "l": ["中", 1], "d": {"k": True}, "s": "文字"}
    assert signing.request_sign_content(params) == 'd={"k": true}&l=["中", 1]&n=5&s=文字'
    assert signing.request_sign_content(params) == sdk.get_sign_content(params)


def test_sorting_is_by_code_point_not_locale() -> None:
    assert signing.request_sign_content({"b": "1", "B": "2", "_a": "3"}) == "B=2&_a=3&b=1"


@given(params_st)
def test_request_content_matches_the_sdk(params: dict[str, str]) -> None:
    without_sign = {k: v for k, v in params.items() if k != "sign"}
    assert signing.request_sign_content(params) == sdk.get_sign_content(without_sign)


# ---- RSA2 -----------------------------------------------------------------------------------

def test_signature_is_identical_to_the_sdk_rsa2() -> None:
    content = "app_id=1&biz_content={\"subject\":\"测试\"}&method=alipay.trade.pay"
    pkcs1 = APP_KEY.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption()).decode()
    ours = signing.sign_rsa2(APP_KEY, content)
    assert ours == sdk.sign_with_rsa2(pkcs1, content, "utf-8")   # PKCS#1 v1.5 is deterministic
    assert sdk.verify_with_rsa(_pem_body("alipay_app_public.pem"), content.encode(), ours)


@settings(max_examples=40, deadline=None)
@given(params_st)
def test_sign_verify_round_trip(params: dict[str, str]) -> None:
    signed = signing.sign_params(params, APP_KEY)
    assert signing.verify_request(signed, APP_PUB)
    assert not signing.verify_request(signed, PLATFORM_PUB)


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=200), st.data())
def test_one_byte_changed_in_content_fails(content: bytes, data: st.DataObject) -> None:
    sig = signing.sign_rsa2(PLATFORM_KEY, content)
    i = data.draw(st.integers(0, len(content) - 1))
    flip = data.draw(st.integers(1, 255))
    tampered = content[:i] + bytes([content[i] ^ flip]) + content[i + 1:]
    assert signing.verify_rsa2(PLATFORM_PUB, content, sig)
    assert not signing.verify_rsa2(PLATFORM_PUB, tampered, sig)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 255), st.integers(1, 255))
def test_one_byte_changed_in_signature_fails(index: int, flip: int) -> None:
    sig = base64.b64decode(signing.sign_rsa2(PLATFORM_KEY, "x=1"))
    raw = bytearray(sig)
    raw[index % len(raw)] ^= flip
    assert not signing.verify_rsa2(PLATFORM_PUB, "x=1", base64.b64encode(bytes(raw)).decode())


@pytest.mark.parametrize("bad", ["", "not base64!!", "QUJD", "A" * 2000])
def test_malformed_signatures_are_false_not_errors(bad: str) -> None:
    assert signing.verify_rsa2(PLATFORM_PUB, "x=1", bad) is False


def test_notification_signature_ignores_sign_type() -> None:
    form = signing.sign_notification({"a": "1", "sign_type": "RSA2"}, PLATFORM_KEY)
    assert signing.verify_notification(form, PLATFORM_PUB)
    form["sign_type"] = "RSA"            # not covered by the signature
    assert signing.verify_notification(form, PLATFORM_PUB)
    form["a"] = "2"
    assert not signing.verify_notification(form, PLATFORM_PUB)


# ---- responses ------------------------------------------------------------------------------

def _signed_body(raw: str, key: str = "alipay_trade_pay_response", space: str = "") -> str:
    sign = signing.sign_rsa2(PLATFORM_KEY, raw)
    return f'{{"{key}"{space}:{space}{raw}{space},{space}"sign"{space}:{space}"{sign}"}}'


TRICKY_RAWS = [
    '{"code":"10000","msg":"Success"}',
    '{"code":"10000","subject":"a } brace { inside"}',
    '{"code":"10000","subject":"quote \\" and },\\"sign\\":\\"x"}',
    '{"code":"10000","subject":"backslash \\\\","n":{"deep":{"er":"}"}}}',
    '{"code":"10000","subject":"中文 \\u4e2d"}',
    '{ "code" : "10000" ,\n "msg" : "Success" }',
]


@pytest.mark.parametrize("raw", TRICKY_RAWS)
@pytest.mark.parametrize("space", ["", " ", "\n "])
def test_extract_finds_the_raw_object(raw: str, space: str) -> None:
    key, got, sign = signing.extract_response(_signed_body(raw, space=space), "alipay.trade.pay")
    assert key == "alipay_trade_pay_response"
    assert got == raw
    assert signing.verify_rsa2(PLATFORM_PUB, got, sign)
    assert signing.open_response(_signed_body(raw, space=space).encode(), "alipay.trade.pay",
                                 PLATFORM_PUB) == json.loads(raw)


def test_extract_falls_back_to_error_response() -> None:
    raw = '{"code":"40002","sub_code":"isv.invalid-method"}'
    key, got, _ = signing.extract_response(_signed_body(raw, key="error_response"), "x.y")
    assert (key, got) == ("error_response", raw)


def test_extract_prefers_the_method_key_over_others() -> None:
    body = ('{"alipay_trade_query_response":{"code":"1"},'
            '"alipay_trade_pay_response":{"code":"2"},"sign":"' + "A" * 8 + '"}')
    _, got, _ = signing.extract_response(body, "alipay.trade.pay")
    assert got == '{"code":"2"}'


@pytest.mark.parametrize("body", [
    '{"other_response":{"code":"10000"},"sign":"abc"}',          # no such object
    '{"alipay_trade_pay_response":{"code":"10000"}}',            # unsigned
    '{"alipay_trade_pay_response":{"code":"10000"},"sign":""}',  # empty sign
    '{"alipay_trade_pay_response":{"code":"10000","sign":"x"',   # unterminated
    '{"alipay_trade_pay_response":{"code":"10000"},"sign":"a"} trailing',  # not JSON
])
def test_extract_rejects_malformed_bodies(body: str) -> None:
    with pytest.raises(ProtocolError):
        signing.extract_response(body, "alipay.trade.pay")


def test_open_response_rejects_a_changed_byte_and_a_wrong_key() -> None:
    raw = '{"code":"10000","total_amount":"12.34"}'
    body = _signed_body(raw)
    with pytest.raises(ProtocolError):
        signing.open_response(body.replace("12.34", "12.35").encode(), "alipay.trade.pay",
                              PLATFORM_PUB)
    with pytest.raises(ProtocolError):
        signing.open_response(body.encode(), "alipay.trade.pay", APP_PUB)
    with pytest.raises(ProtocolError):
        signing.open_response(b"\xff\xfe", "alipay.trade.pay", PLATFORM_PUB)


def test_build_response_is_accepted_by_the_sdk_parser() -> None:
    """The SDK's own response verification (no network) accepts what the sandbox signs."""
    from alipay.aop.api.AlipayClientConfig import AlipayClientConfig
    from alipay.aop.api.constant.CommonConstants import THREAD_LOCAL
    from alipay.aop.api.DefaultAlipayClient import DefaultAlipayClient
    THREAD_LOCAL.logger, THREAD_LOCAL.uuid = None, "unit"   # what execute() sets first
    config = AlipayClientConfig()
    config.alipay_public_key = _pem_body("alipay_platform_public.pem")
    client = DefaultAlipayClient(config)
    payload = {"code": "10000", "msg": "Success", "subject": "中文 } \" ,\"sign\":\""}
    body = signing.build_response("alipay.trade.pay", payload, PLATFORM_KEY)
    parsed = client._DefaultAlipayClient__parse_response(body)
    assert json.loads(parsed) == payload
    assert signing.open_response(body, "alipay.trade.pay", PLATFORM_PUB) == payload


def test_response_key_names() -> None:
    assert signing.response_key("alipay.trade.pay") == "alipay_trade_pay_response"
    assert signing.response_key("alipay.trade.cancel") == "alipay_trade_cancel_response"
