"""WeChat Pay v3 signing: message formats from the docs, interop with the wechatpayv3 SDK's own
crypto helpers, the Authorization header, answer checks and AEAD callback resources."""
from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings, strategies as st
from wechatpayv3 import utils as sdk

from channels.base import ProtocolError
from channels.wechatpay import signing
from core.settings import KEYS_DIR

MERCHANT_KEY = signing.load_private_key(KEYS_DIR / "wechatpay_merchant_private.pem")
MERCHANT_PUB = signing.load_public_key(KEYS_DIR / "wechatpay_merchant_public.pem")
PLATFORM_KEY = signing.load_private_key(KEYS_DIR / "wechatpay_platform_private.pem")
PLATFORM_PUB = signing.load_public_key(KEYS_DIR / "wechatpay_platform_public.pem")
SERIAL = "PUB_KEY_ID_0119000091912025112500000000000001"
APIV3 = "paycellSandboxApiV3Key0123456789"
NOW = 1_764_000_000


# ---- message formats (the examples of the v3 signing guide) --------------------------------

def test_request_message_is_five_lines_with_an_empty_get_body() -> None:
    assert signing.request_message("GET", "/v3/certificates", 1554208460,
                                   "593BEC0C930BF1AFEB40B4A08C8FB242") == (
        b"GET\n/v3/certificates\n1554208460\n593BEC0C930BF1AFEB40B4A08C8FB242\n\n")


def test_request_message_keeps_the_query_and_body_bytes() -> None:
    body = '{"mchid":"1900009191","description":"游戏币"}'.encode()
    assert signing.request_message("post", "/v3/pay/transactions/out-trade-no/a?mchid=1", 1, "n",
                                   body) == (
        b"POST\n/v3/pay/transactions/out-trade-no/a?mchid=1\n1\nn\n" + body + b"\n")


def test_response_message_of_a_204_ends_with_an_empty_line() -> None:
    assert signing.response_message(1554209980, "c5ac7061fccab6bf3e254dcf98995b8c") == (
        b"1554209980\nc5ac7061fccab6bf3e254dcf98995b8c\n\n")


def test_signature_is_deterministic_and_verifies_only_with_the_right_key() -> None:
    message = signing.request_message("GET", "/v3/certificates", 1554208460, "593BEC0C")
    sig = signing.sign(MERCHANT_KEY, message)
    assert sig == signing.sign(MERCHANT_KEY, message)          # PKCS#1 v1.5: deterministic
    assert len(base64.b64decode(sig)) == 256                   # RSA 2048
    assert signing.verify(MERCHANT_PUB, message, sig)
    assert not signing.verify(PLATFORM_PUB, message, sig)
    assert not signing.verify(MERCHANT_PUB, message + b"x", sig)
    assert not signing.verify(MERCHANT_PUB, message, "not base64!")
    assert not signing.verify(MERCHANT_PUB, message, "")
    assert not signing.verify(MERCHANT_PUB, message, "A" * 2000)


# ---- interop with the wechatpayv3 SDK -----------------------------------------------------

def test_sdk_authorization_verifies_with_our_parser_and_checker() -> None:
    header = sdk.build_authorization("/v3/pay/transactions/native", "POST", "1900009191",
                                     "3775B6A45ACD", MERCHANT_KEY, data={"a": 1}, nonce_str="N1")
    fields = signing.parse_authorization(header)
    assert fields is not None
    assert (fields["mchid"], fields["serial_no"], fields["nonce_str"]) == (
        "1900009191", "3775B6A45ACD", "N1")
    message = signing.request_message("POST", "/v3/pay/transactions/native",
                                      fields["timestamp"], "N1", b'{"a": 1}')
    assert signing.verify(MERCHANT_PUB, message, fields["signature"])


def test_our_authorization_matches_the_sdk_signature() -> None:
    header = signing.authorization("1900009191", "SER", MERCHANT_KEY, "GET", "/v3/x?y=1", NOW,
                                   "NONCE")
    fields = signing.parse_authorization(header)
    assert fields is not None and fields["timestamp"] == str(NOW)
    expected = sdk.rsa_sign(MERCHANT_KEY, f"GET\n/v3/x?y=1\n{NOW}\nNONCE\n\n")
    assert fields["signature"] == expected


def test_sdk_verifies_our_signed_answers() -> None:
    body = b'{"code_url":"weixin://wxpay/bizpayurl?pr=abc"}'
    headers = signing.signed_headers(PLATFORM_KEY, SERIAL, body, NOW, "nonce42")
    assert headers[signing.H_SERIAL] == SERIAL
    assert headers[signing.H_SIGNATURE_TYPE] == "WECHATPAY2-SHA256-RSA2048"
    assert sdk.rsa_verify(str(NOW), "nonce42", body.decode(), headers[signing.H_SIGNATURE],
                          PLATFORM_PUB)
    assert not sdk.rsa_verify(str(NOW), "nonce42", body.decode() + " ",
                              headers[signing.H_SIGNATURE], PLATFORM_PUB)


def test_sdk_decrypts_our_resource_and_we_decrypt_its_inverse() -> None:
    plain = '{"out_trade_no":"o1","trade_state":"SUCCESS"}'
    ciphertext = signing.encrypt_resource(APIV3, plain.encode(), "fdasflkja484", "transaction")
    assert sdk.aes_decrypt("fdasflkja484", ciphertext, "transaction", APIV3) == plain
    assert signing.decrypt_resource(APIV3, ciphertext, "fdasflkja484", "transaction") == (
        plain.encode())
    assert len(base64.b64decode(ciphertext)) == len(plain.encode()) + 16   # + GCM tag


# ---- Authorization parsing --------------------------------------------------------------------

@pytest.mark.parametrize("header", [
    "", "Bearer x", 'WECHATPAY2-SHA256-RSA2048 mchid="1"',
    'WECHATPAY2-SHA256-RSA2048 mchid="1",nonce_str="n",timestamp="1",serial_no="s"',
    'WECHATPAY2-SHA256-RSA2048 mchid="1",mchid="2",nonce_str="n",timestamp="1",serial_no="s"',
    'WECHATPAY2-SHA256-RSA2048 mchid="1",nonce_str="",timestamp="1",serial_no="s",signature="x"',
    'WECHATPAY2-SHA256-RSA2048 mchid=1,nonce_str="n",timestamp="1",serial_no="s",signature="x"',
])
def test_malformed_authorization_is_refused(header: str) -> None:
    assert signing.parse_authorization(header) is None


def test_authorization_fields_in_any_order() -> None:
    header = ('WECHATPAY2-SHA256-RSA2048 signature="c2ln",timestamp="1554208460",'
              'serial_no="1DDE",nonce_str="593B",mchid="1900009191"')
    assert signing.parse_authorization(header) == {
        "signature": "c2ln", "timestamp": "1554208460", "serial_no": "1DDE",
        "nonce_str": "593B", "mchid": "1900009191"}


# ---- answer checks -----------------------------------------------------------------------------

def _signed(body: bytes, ts: int = NOW, key: object = PLATFORM_KEY) -> dict[str, str]:
    return signing.signed_headers(key, SERIAL, body, ts, "abc")  # type: ignore[arg-type]


def test_check_signed_accepts_a_good_answer_with_any_header_case() -> None:
    body = b'{"a":1}'
    lowered = {k.lower(): v for k, v in _signed(body).items()}
    signing.check_signed(lowered, body, PLATFORM_PUB, SERIAL, NOW + 299)


@pytest.mark.parametrize("change", ["serial", "type", "skew", "no_ts", "body", "key", "no_sig"])
def test_check_signed_refuses(change: str) -> None:
    body = b'{"a":1}'
    headers = _signed(body, key=MERCHANT_KEY if change == "key" else PLATFORM_KEY)
    now = NOW
    if change == "serial":
        headers[signing.H_SERIAL] = "PUB_KEY_ID_OTHER"
    elif change == "type":
        headers[signing.H_SIGNATURE_TYPE] = "WECHATPAY2-SM2-WITH-SM3"
    elif change == "skew":
        now = NOW + 301
    elif change == "no_ts":
        del headers[signing.H_TIMESTAMP]
    elif change == "body":
        body = b'{"a":2}'
    elif change == "no_sig":
        del headers[signing.H_SIGNATURE]
    with pytest.raises(ProtocolError):
        signing.check_signed(headers, body, PLATFORM_PUB, SERIAL, now)


def test_resource_that_does_not_authenticate_is_a_protocol_error() -> None:
    ciphertext = signing.encrypt_resource(APIV3, b"{}", "123456789012", "refund")
    for args in ((ciphertext, "123456789012", "transaction"),    # other AAD
                 (ciphertext, "123456789013", "refund"),          # other nonce
                 ("!!notbase64", "123456789012", "refund"), ("", "123456789012", "refund")):
        with pytest.raises(ProtocolError):
            signing.decrypt_resource(APIV3, *args)
    with pytest.raises(ProtocolError):
        signing.decrypt_resource("x" * 32, ciphertext, "123456789012", "refund")


def test_app_pay_sign_covers_appid_timestamp_nonce_prepay_id() -> None:
    sig = signing.app_pay_sign(MERCHANT_KEY, "wxd678efh567hg6787", NOW, "5K8264", "wx2017")
    message = f"wxd678efh567hg6787\n{NOW}\n5K8264\nwx2017\n".encode()
    assert signing.verify(MERCHANT_PUB, message, sig)


@settings(max_examples=30, deadline=None)
@given(body=st.binary(max_size=200), nonce=st.text(alphabet="0123456789ABCDEF", min_size=1,
                                                      max_size=32))
def test_any_answer_round_trips_and_any_flipped_byte_fails(body: bytes, nonce: str) -> None:
    headers = signing.signed_headers(PLATFORM_KEY, SERIAL, body, NOW, nonce)
    signing.check_signed(headers, body, PLATFORM_PUB, SERIAL, NOW)
    if body:
        tampered = bytes([body[0] ^ 1]) + body[1:]
        with pytest.raises(ProtocolError):
            signing.check_signed(headers, tampered, PLATFORM_PUB, SERIAL, NOW)


@settings(max_examples=30, deadline=None)
@given(plain=st.binary(max_size=300), ad=st.text(max_size=20))
def test_any_resource_round_trips(plain: bytes, ad: str) -> None:
    ciphertext = signing.encrypt_resource(APIV3, plain, "abcdefghijkl", ad)
    assert signing.decrypt_resource(APIV3, ciphertext, "abcdefghijkl", ad) == plain
