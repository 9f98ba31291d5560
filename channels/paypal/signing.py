"""PayPal REST credentials and webhook signatures, pure functions over `cryptography` objects.

* OAuth2 client credentials: ``POST /v1/oauth2/token`` with HTTP Basic
  ``base64(client_id:client_secret)`` and the form ``grant_type=client_credentials``.
* Webhook transmission signature (PayPal's "verify the signature yourself" rule, as the official
  Node and Java SDKs implement it): the signed message is
  ``<PAYPAL-TRANSMISSION-ID>|<PAYPAL-TRANSMISSION-TIME>|<webhook id>|<crc32(raw body)>`` with the
  CRC-32 of the untouched body written as an unsigned decimal integer, signed SHA256withRSA
  (PKCS#1 v1.5, the PAYPAL-AUTH-ALGO ``SHA256withRSA``) with the key of the X.509 certificate at
  PAYPAL-CERT-URL, Base64 in PAYPAL-TRANSMISSION-SIG.

paycell does not download the certificate (parse_notification is synchronous): the certificate
is pinned in settings, and PAYPAL-CERT-URL must name a certificate under the configured API base
URL's ``/v1/notifications/certs/`` (`cert_url_allowed`). Nothing here logs; keys and signatures
never appear in exception messages.
"""
from __future__ import annotations

import base64
import binascii
import zlib
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from channels import callbacks, crypto

AUTH_ALGO = "SHA256withRSA"
CERTS_PATH = "/v1/notifications/certs/"
HEADER_VALUE_MAX_CHARS = 500          # PayPal's own bounds for these headers are 50..500

H_TRANSMISSION_ID = "PAYPAL-TRANSMISSION-ID"
H_TRANSMISSION_TIME = "PAYPAL-TRANSMISSION-TIME"
H_TRANSMISSION_SIG = "PAYPAL-TRANSMISSION-SIG"
H_CERT_URL = "PAYPAL-CERT-URL"
H_AUTH_ALGO = "PAYPAL-AUTH-ALGO"
WEBHOOK_HEADERS = (H_TRANSMISSION_ID, H_TRANSMISSION_TIME, H_TRANSMISSION_SIG, H_CERT_URL,
                   H_AUTH_ALGO)


# ---- OAuth2 ---------------------------------------------------------------------------------

def basic_auth(client_id: str, client_secret: str) -> str:
    """The Authorization header value of the token request."""
    raw = f"{client_id}:{client_secret}".encode("utf-8")
    return "Basic " + base64.b64encode(raw).decode("ascii")


def parse_basic_auth(header: str) -> tuple[str, str] | None:
    """(client_id, client_secret) of a Basic header, or None (the sandbox's side)."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        text = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    client_id, sep, secret = text.partition(":")
    return (client_id, secret) if sep else None


# ---- certificates ---------------------------------------------------------------------------

def load_certificate(path: str | Path) -> x509.Certificate:
    cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    if not isinstance(cert.public_key(), rsa.RSAPublicKey):
        raise ValueError(f"{path}: not an RSA certificate")
    return cert


def cert_url_allowed(cert_url: str, base_url: str) -> bool:
    """True when PAYPAL-CERT-URL names a certificate under the API base URL we talk to."""
    if not cert_url or len(cert_url) > HEADER_VALUE_MAX_CHARS:
        return False
    got, base = urlsplit(cert_url), urlsplit(base_url.rstrip("/"))
    if (got.scheme, got.netloc) != (base.scheme, base.netloc) or got.query or got.fragment:
        return False
    prefix = base.path + CERTS_PATH
    name = got.path[len(prefix):]
    return got.path.startswith(prefix) and bool(name) and "/" not in name and ".." not in name


# ---- webhook transmission signature ---------------------------------------------------------

def crc32_decimal(body: bytes) -> str:
    return str(zlib.crc32(body) & 0xFFFFFFFF)


def transmission_message(transmission_id: str, transmission_time: str, webhook_id: str,
                         body: bytes) -> bytes:
    """What PAYPAL-TRANSMISSION-SIG covers."""
    text = f"{transmission_id}|{transmission_time}|{webhook_id}|{crc32_decimal(body)}"
    return text.encode("utf-8")


def sign_transmission(private_key: rsa.RSAPrivateKey, transmission_id: str,
                      transmission_time: str, webhook_id: str, body: bytes) -> str:
    """The sandbox's side: Base64 SHA256withRSA over the transmission message."""
    message = transmission_message(transmission_id, transmission_time, webhook_id, body)
    return crypto.sign(private_key, message)


def verify_transmission(cert: x509.Certificate, transmission_id: str, transmission_time: str,
                        webhook_id: str, body: bytes, signature_b64: str) -> bool:
    """True only for a valid signature by `cert`'s key; never raises on malformed input."""
    signature = crypto.decode_signature(signature_b64)
    if signature is None:
        return False
    key = cert.public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    message = transmission_message(transmission_id, transmission_time, webhook_id, body)
    return crypto.verify_raw(key, message, signature)


header = callbacks.header      # by case-insensitive name, "" when absent


def verify_webhook(headers: Mapping[str, str], body: bytes, webhook_id: str,
                   pinned_cert: x509.Certificate, base_url: str) -> bool:
    """The whole check of one webhook delivery: headers present and bounded, the algorithm
    PayPal uses, the certificate URL under our base URL, and the signature by the pinned cert."""
    values = {name: header(headers, name) for name in WEBHOOK_HEADERS}
    if any(not v or len(v) > HEADER_VALUE_MAX_CHARS for v in values.values()):
        return False
    if values[H_AUTH_ALGO] != AUTH_ALGO or not cert_url_allowed(values[H_CERT_URL], base_url):
        return False
    return verify_transmission(pinned_cert, values[H_TRANSMISSION_ID],
                               values[H_TRANSMISSION_TIME], webhook_id, body,
                               values[H_TRANSMISSION_SIG])
