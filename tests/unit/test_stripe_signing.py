"""Stripe webhook signatures (t=..,v1=HMAC-SHA256(secret, "t.payload")) and API-key headers."""
from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings, strategies as st
from stripe import WebhookSignature as sdk

from channels.stripe import signing

SECRET = "whsec_test_secret"
PAYLOAD = b'{"id":"evt_test_webhook","object":"event"}'
T = 1492774577
# Known answer computed independently with OpenSSL:
#   printf '%s' '1492774577.{"id":"evt_test_webhook","object":"event"}' \
#     | openssl dgst -sha256 -hmac whsec_test_secret
KNOWN_V1 = "88a022085c6bdb887b02cb26ff76dd681234d9675c0f22844059f55552a8883a"


def test_known_answer() -> None:
    assert signing.compute_signature(PAYLOAD, SECRET, T) == KNOWN_V1
    assert signing.signature_header(PAYLOAD, SECRET, T) == f"t={T},v1={KNOWN_V1}"


def test_verify_accepts_within_tolerance_either_side() -> None:
    header = signing.signature_header(PAYLOAD, SECRET, T)
    assert signing.verify(PAYLOAD, header, SECRET, T)
    assert signing.verify(PAYLOAD, header, SECRET, T + 300, tolerance_s=300)
    assert signing.verify(PAYLOAD, header, SECRET, T - 300, tolerance_s=300)
    assert not signing.verify(PAYLOAD, header, SECRET, T + 301, tolerance_s=300)
    assert not signing.verify(PAYLOAD, header, SECRET, T - 301, tolerance_s=300)


def test_verify_refuses_other_secret_tampered_body_and_other_timestamp() -> None:
    header = signing.signature_header(PAYLOAD, SECRET, T)
    assert not signing.verify(PAYLOAD, header, "whsec_other", T)
    assert not signing.verify(PAYLOAD.replace(b"evt_", b"evt-"), header, SECRET, T)
    moved = header.replace(f"t={T}", f"t={T + 1}")
    assert not signing.verify(PAYLOAD, moved, SECRET, T)


def test_any_v1_matching_is_enough_and_v0_is_ignored() -> None:
    rotated = f"t={T},v1={'0' * 64},v1={KNOWN_V1},v0={'1' * 64}"
    assert signing.verify(PAYLOAD, rotated, SECRET, T)
    assert signing.verify(PAYLOAD, f"t={T},v1={KNOWN_V1.upper()}", SECRET, T)
    assert not signing.verify(PAYLOAD, f"t={T},v0={KNOWN_V1}", SECRET, T)


@pytest.mark.parametrize("header", [
    "", f"v1={KNOWN_V1}", f"t={T}", f"t=abc,v1={KNOWN_V1}", f"t={T},t={T},v1={KNOWN_V1}",
    f"t={T},v1{KNOWN_V1}", f"t=-{T},v1={KNOWN_V1}", "t=1," + ",".join(["v1=a"] * 17),
    f"t={T},v1={KNOWN_V1}" + "x" * 5000,
])
def test_malformed_headers_are_refused(header: str) -> None:
    assert signing.parse_header(header) is None
    assert not signing.verify(PAYLOAD, header, SECRET, T)


def test_parse_header_reads_timestamp_and_signatures() -> None:
    parsed = signing.parse_header(f" t={T}, v1=AB ,v1=cd,v0=ef")
    assert parsed == signing.SignatureHeader(T, ("ab", "cd"))


@settings(max_examples=60, deadline=None)
@given(payload=st.text(max_size=300), secret=st.text(alphabet="abcdef0123456789_", min_size=1,
                                                     max_size=40), t=st.integers(1, 2**33))
def test_agrees_with_the_official_sdk(payload: str, secret: str, t: int) -> None:
    body = payload.encode()
    ours = signing.signature_header(body, secret, t)
    assert ours == sdk.generate_signature_header(payload, secret, t)
    assert sdk.verify_header(payload, ours, secret, tolerance=None)
    assert signing.verify(body, sdk.generate_signature_header(payload, secret, t), secret, t)


def test_api_key_headers() -> None:
    key = "sk_test_abc"
    assert signing.bearer(key) == "Bearer sk_test_abc"
    assert signing.api_key_of(signing.bearer(key)) == key
    basic = base64.b64encode(f"{key}:".encode()).decode()
    assert signing.api_key_of(f"Basic {basic}") == key
    assert signing.api_key_of("Basic !!notbase64") is None
    assert signing.api_key_of(f"Basic {base64.b64encode(b':pw').decode()}") is None
    assert signing.api_key_of("Token sk_test_abc") is None
    assert signing.api_key_of("Bearer ") is None
