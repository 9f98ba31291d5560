"""Stripe's webhook signature scheme and API authentication: pure functions, no I/O.

Webhooks (docs.stripe.com/webhooks#verify-manually, "Verify signatures manually"):
  * the header is ``Stripe-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>...][,v0=<hex>]``;
  * the signed payload is ``"<t>.<raw request body>"`` (the body exactly as received, utf-8);
  * ``v1`` is the hex HMAC-SHA256 of the signed payload keyed with the endpoint's secret
    (``whsec_...``, used as given, prefix included); several ``v1`` entries appear while a secret
    is being rotated and any one matching is enough; ``v0`` (test-mode legacy) is ignored;
  * compare in constant time and refuse timestamps outside a tolerance (Stripe's libraries
    default to 300 s) so that a captured event cannot be replayed later.

API requests carry ``Authorization: Bearer <secret key>`` (the docs also accept HTTP Basic with
the key as user name and an empty password; the official SDKs send Bearer).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass

SIGNATURE_HEADER = "Stripe-Signature"
SCHEME = "v1"
DEFAULT_TOLERANCE_S = 300
HEADER_MAX_CHARS = 4096
SIGNATURES_MAX = 16


@dataclass(frozen=True, slots=True)
class SignatureHeader:
    timestamp: int
    signatures: tuple[str, ...]      # the v1 entries, lowercase hex


def compute_signature(payload: bytes, secret: str, timestamp: int) -> str:
    """Hex HMAC-SHA256 of "<timestamp>.<payload>" keyed with the webhook secret."""
    signed = str(timestamp).encode() + b"." + payload
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def signature_header(payload: bytes, secret: str, timestamp: int) -> str:
    """The Stripe-Signature header value Stripe would send for `payload` at `timestamp`."""
    return f"t={timestamp},{SCHEME}={compute_signature(payload, secret, timestamp)}"


def parse_header(header: str) -> SignatureHeader | None:
    """The timestamp and v1 signatures of a Stripe-Signature header, or None when malformed."""
    if not header or len(header) > HEADER_MAX_CHARS:
        return None
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            return None
        if key == "t":
            if timestamp is not None or not value.isdigit() or len(value) > 12:
                return None
            timestamp = int(value)
        elif key == SCHEME:
            signatures.append(value.lower())
    if timestamp is None or not signatures or len(signatures) > SIGNATURES_MAX:
        return None
    return SignatureHeader(timestamp, tuple(signatures))


def verify(payload: bytes, header: str, secret: str, now_unix: int,
           tolerance_s: int = DEFAULT_TOLERANCE_S) -> bool:
    """True when one v1 signature matches and the timestamp is within tolerance of now (either
    side: Stripe's libraries only refuse old timestamps; a far-future one is refused here too)."""
    parsed = parse_header(header)
    if parsed is None or abs(now_unix - parsed.timestamp) > tolerance_s:
        return False
    expected = compute_signature(payload, secret, parsed.timestamp)
    return any(hmac.compare_digest(expected, sig) for sig in parsed.signatures)


def bearer(secret_key: str) -> str:
    return f"Bearer {secret_key}"


def api_key_of(authorization: str) -> str | None:
    """The API key an Authorization header carries (Bearer, or Basic with the key as user)."""
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() == "bearer" and value:
        return value.strip()
    if scheme.lower() == "basic" and value:
        try:
            user, _, _ = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return user or None
    return None
