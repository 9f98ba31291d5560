"""QPay signatures and flat XML: known-answer vectors, verification edge cases, the XML codec."""
from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, strategies as st

from channels.base import ProtocolError
from channels.qpay import signing

# The signature example of QPay's "商户签名算法规则", which is the WeChat Pay v2 example QPay's
# merchant API reuses: the same fields, key and expected signatures (MD5 and HMAC-SHA256).
DOC_PARAMS = {"appid": "wxd930ea5d5a258f4f", "mch_id": "10000100", "device_info": "1000",
              "body": "test", "nonce_str": "ibuaiVcKdpRxkhJA"}
DOC_KEY = "192006250b4c09247ec02edce69f6a2d"
DOC_MD5 = "9A0A8659F005D6984697E2CA0A9CF3B7"
DOC_HMAC = "6A9AE1657590FD6257D693A078E1C3E4BB6BA4DC30B23E0EE2496E54170DACD6"
KEY = "paycellSandboxQPayKey0123456789ab"


def test_sign_content_is_sorted_non_empty_pairs_then_key() -> None:
    assert signing.sign_content(DOC_PARAMS, DOC_KEY) == (
        "appid=wxd930ea5d5a258f4f&body=test&device_info=1000&mch_id=10000100"
        "&nonce_str=ibuaiVcKdpRxkhJA&key=192006250b4c09247ec02edce69f6a2d")


def test_documented_md5_vector() -> None:
    assert signing.sign(DOC_PARAMS, DOC_KEY) == DOC_MD5
    assert signing.sign(DOC_PARAMS, DOC_KEY, signing.SIGN_MD5) == DOC_MD5


def test_documented_hmac_sha256_vector() -> None:
    assert signing.sign(DOC_PARAMS, DOC_KEY, signing.SIGN_HMAC_SHA256) == DOC_HMAC


def test_sign_ignores_empty_values_and_its_own_sign() -> None:
    with_extras = {**DOC_PARAMS, "attach": "", "sign": "ANYTHING"}
    assert signing.sign(with_extras, DOC_KEY) == DOC_MD5


def test_sign_type_field_is_signed_like_any_other() -> None:
    named = {**DOC_PARAMS, "sign_type": "MD5"}
    assert signing.sign(named, DOC_KEY) != DOC_MD5
    expected = hashlib.md5(signing.sign_content(named, DOC_KEY).encode()).hexdigest().upper()
    assert signing.sign(named, DOC_KEY) == expected


def test_unknown_sign_type_cannot_sign() -> None:
    with pytest.raises(ValueError):
        signing.sign(DOC_PARAMS, DOC_KEY, "RSA")


def test_sign_params_adds_sign_type_only_for_hmac() -> None:
    md5 = signing.sign_params(DOC_PARAMS, DOC_KEY)
    assert md5 == {**DOC_PARAMS, "sign": DOC_MD5}
    hm = signing.sign_params(DOC_PARAMS, DOC_KEY, signing.SIGN_HMAC_SHA256)
    assert hm["sign_type"] == "HMAC-SHA256"
    assert hm["sign"] == signing.sign({**DOC_PARAMS, "sign_type": "HMAC-SHA256"}, DOC_KEY,
                                      signing.SIGN_HMAC_SHA256)
    assert signing.verify(hm, DOC_KEY)


def test_verify_accepts_the_documented_message() -> None:
    assert signing.verify({**DOC_PARAMS, "sign": DOC_MD5}, DOC_KEY)


@pytest.mark.parametrize("change", [
    {"body": "tesT"}, {"sign": DOC_MD5.lower()}, {"sign": ""}, {"sign_type": "SHA1"},
    {"sign_type": "HMAC-SHA256"}, {"extra": "1"},
])
def test_verify_refuses_any_change(change: dict[str, str]) -> None:
    assert not signing.verify({**DOC_PARAMS, "sign": DOC_MD5, **change}, DOC_KEY)


def test_verify_refuses_a_missing_sign_and_a_wrong_key() -> None:
    assert not signing.verify(DOC_PARAMS, DOC_KEY)
    assert not signing.verify({**DOC_PARAMS, "sign": DOC_MD5}, DOC_KEY + "x")


def test_verify_uses_the_default_sign_type_when_none_is_named() -> None:
    signed = {**DOC_PARAMS, "sign": DOC_HMAC}
    assert not signing.verify(signed, DOC_KEY)
    assert signing.verify(signed, DOC_KEY, signing.SIGN_HMAC_SHA256)


def test_operator_password_is_lowercase_md5_hex() -> None:
    assert signing.operator_password("123456") == "e10adc3949ba59abbe56e057f20f883e"


_names = st.from_regex(r"[a-z][a-z_0-9]{0,15}", fullmatch=True).filter(lambda k: k != "sign")
_values = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=40).map(str.strip)


@given(st.dictionaries(_names, _values, min_size=1, max_size=12), st.sampled_from(
    sorted(signing.SIGN_TYPES)))
def test_sign_verify_round_trip_and_field_tamper(params: dict[str, str], sign_type: str) -> None:
    signed = signing.sign_params(params, KEY, sign_type)
    assert signing.verify(signed, KEY)
    for name, value in params.items():
        if value:
            tampered = {**signed, name: value + "x"}
            assert not signing.verify(tampered, KEY)


# ---- XML --------------------------------------------------------------------------------------

def test_to_xml_escapes_and_puts_sign_last() -> None:
    xml = signing.to_xml({"sign": "S", "body": "a<b&c>d", "mch_id": "1"})
    assert xml == b"<xml><body>a&lt;b&amp;c&gt;d</body><mch_id>1</mch_id><sign>S</sign></xml>"


@given(st.dictionaries(_names, _values, max_size=12))
def test_xml_round_trip(params: dict[str, str]) -> None:
    assert signing.parse_xml(signing.to_xml(params)) == params


def test_parse_reads_cdata_and_the_documented_shape() -> None:
    body = ("<xml><return_code><![CDATA[SUCCESS]]></return_code><total_fee>888</total_fee>"
            "<body><![CDATA[深圳分店 <x>]]></body></xml>").encode()
    assert signing.parse_xml(body) == {"return_code": "SUCCESS", "total_fee": "888",
                                       "body": "深圳分店 <x>"}


@pytest.mark.parametrize("body", [
    b"", b"not xml", b"<root><a>1</a></root>", b"<xml><a>1</a><a>2</a></xml>",
    b"<xml><a><b>1</b></a></xml>",
    b'<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY x "y">]><xml><a>&x;</a></xml>',
    b"<xml>" + b"<a>1</a>" * 0 + b"<b>" + b"x" * 70_000 + b"</b></xml>",
])
def test_parse_refuses_anything_but_a_small_flat_xml(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        signing.parse_xml(body)


def test_open_signed_verifies_success_answers_only() -> None:
    ok = signing.to_xml(signing.sign_params({"return_code": "SUCCESS", "result_code": "SUCCESS",
                                             "mch_id": "1"}, KEY))
    assert signing.open_signed(ok, KEY)["result_code"] == "SUCCESS"
    with pytest.raises(ProtocolError):
        signing.open_signed(ok, "another key")
    unsigned_fail = b"<xml><return_code>FAIL</return_code><return_msg>bad</return_msg></xml>"
    assert signing.open_signed(unsigned_fail, KEY)["return_code"] == "FAIL"
    unsigned_ok = b"<xml><return_code>SUCCESS</return_code></xml>"
    with pytest.raises(ProtocolError):
        signing.open_signed(unsigned_ok, KEY)
