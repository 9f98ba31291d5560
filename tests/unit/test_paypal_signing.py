"""PayPal signing: Basic credentials, the webhook transmission message, and its verification."""
from __future__ import annotations

import zlib

import pytest
from hypothesis import given, strategies as st

from channels.paypal import signing
from channels.sandbox import keyring
from core.settings import KEYS_DIR

KEY = keyring.private_key("paypal_webhook_private.pem")
CERT = signing.load_certificate(KEYS_DIR / "paypal_webhook_cert.pem")
BASE = "http://127.0.0.1:8091/paypal"
CERT_URL = BASE + "/v1/notifications/certs/CERT-360caa42-fca2a594-paycell01"
WEBHOOK_ID = "8PT597110X687430LKGECATA"
BODY = b'{"id":"WH-1","event_type":"PAYMENT.CAPTURE.COMPLETED"}'


def _headers(body: bytes = BODY, key=KEY, **over: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    tid, ttime = "69cd13f0-d67a-11e5-baa3-778b53f4ae55", "2016-02-18T20:01:35Z"
    headers = {signing.H_TRANSMISSION_ID: tid, signing.H_TRANSMISSION_TIME: ttime,
               signing.H_CERT_URL: CERT_URL, signing.H_AUTH_ALGO: "SHA256withRSA",
               signing.H_TRANSMISSION_SIG: signing.sign_transmission(key, tid, ttime,
                                                                     WEBHOOK_ID, body)}
    headers.update(over)
    return headers


# ---- OAuth2 Basic -----------------------------------------------------------------------------

def test_basic_auth_known_answer() -> None:
    # RFC 7617's own example: Aladdin / open sesame
    assert signing.basic_auth("Aladdin", "open sesame") == "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
    assert signing.parse_basic_auth("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==") == ("Aladdin",
                                                                          "open sesame")


@pytest.mark.parametrize("header", ["", "Bearer abc", "Basic", "Basic !!!", "Basic YWJj"])
def test_parse_basic_auth_refuses_malformed(header: str) -> None:
    assert signing.parse_basic_auth(header) is None      # YWJj is "abc": no colon


# ---- the transmission message -------------------------------------------------------------------

def test_crc32_is_unsigned_decimal() -> None:
    # the classic CRC-32 check values
    assert signing.crc32_decimal(b"The quick brown fox jumps over the lazy dog") == "1095738169"
    assert signing.crc32_decimal(b"123456789") == str(0xCBF43926) == "3421780262"  # > 2**31
    assert signing.crc32_decimal(b"") == "0"


def test_transmission_message_format() -> None:
    msg = signing.transmission_message("tid", "2016-02-18T20:01:35Z", "WH1", b"123456789")
    assert msg == b"tid|2016-02-18T20:01:35Z|WH1|3421780262"


@given(st.binary(max_size=300))
def test_crc32_matches_zlib(body: bytes) -> None:
    assert int(signing.crc32_decimal(body)) == zlib.crc32(body) & 0xFFFFFFFF


# ---- verification -------------------------------------------------------------------------------

def test_a_signed_delivery_verifies() -> None:
    assert signing.verify_webhook(_headers(), BODY, WEBHOOK_ID, CERT, BASE)


def test_headers_are_case_insensitive() -> None:
    lower = {k.lower(): v for k, v in _headers().items()}
    assert signing.verify_webhook(lower, BODY, WEBHOOK_ID, CERT, BASE)


def test_tampered_body_or_other_webhook_id_fails() -> None:
    assert not signing.verify_webhook(_headers(), BODY.replace(b"WH-1", b"WH-2"), WEBHOOK_ID,
                                      CERT, BASE)
    assert not signing.verify_webhook(_headers(), BODY, "OTHERWEBHOOK", CERT, BASE)


def test_forged_signature_fails() -> None:
    assert not signing.verify_webhook(_headers(key=keyring.attacker_key()), BODY, WEBHOOK_ID,
                                      CERT, BASE)


@pytest.mark.parametrize("name, value", [
    (signing.H_AUTH_ALGO, "SHA1withRSA"),
    (signing.H_TRANSMISSION_SIG, "not base64!"),
    (signing.H_TRANSMISSION_SIG, ""),
    (signing.H_TRANSMISSION_TIME, "2016-02-18T20:01:36Z"),     # signed over the other time
    (signing.H_CERT_URL, "https://evil.example/v1/notifications/certs/CERT-1"),
])
def test_each_header_matters(name: str, value: str) -> None:
    assert not signing.verify_webhook(_headers(**{name: value}), BODY, WEBHOOK_ID, CERT, BASE)


def test_missing_header_fails() -> None:
    headers = _headers()
    del headers[signing.H_TRANSMISSION_ID]
    assert not signing.verify_webhook(headers, BODY, WEBHOOK_ID, CERT, BASE)


@pytest.mark.parametrize("url, ok", [
    (CERT_URL, True),
    ("http://127.0.0.1:8091/paypal/v1/notifications/certs/CERT-x", True),
    ("https://127.0.0.1:8091/paypal/v1/notifications/certs/CERT-x", False),   # scheme
    ("http://127.0.0.1:8092/paypal/v1/notifications/certs/CERT-x", False),    # port
    ("http://127.0.0.1:8091/other/v1/notifications/certs/CERT-x", False),     # base path
    ("http://127.0.0.1:8091/paypal/v1/notifications/certs/", False),          # no name
    ("http://127.0.0.1:8091/paypal/v1/notifications/certs/a/b", False),
    ("http://127.0.0.1:8091/paypal/v1/notifications/certs/..", False),
    ("http://127.0.0.1:8091/paypal/v1/notifications/certs/CERT-x?u=1", False),
])
def test_cert_url_must_be_under_the_base_url(url: str, ok: bool) -> None:
    assert signing.cert_url_allowed(url, BASE) is ok


def test_real_paypal_cert_url_shape() -> None:
    url = "https://api.paypal.com/v1/notifications/certs/CERT-360caa42-fca2a594-1d93a270"
    assert signing.cert_url_allowed(url, "https://api.paypal.com")
    assert not signing.cert_url_allowed(url, "https://api-m.sandbox.paypal.com")
