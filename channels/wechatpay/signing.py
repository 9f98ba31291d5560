"""WeChat Pay API v3 signatures and callback encryption, pure functions over `cryptography` keys.

The rules follow the v3 signing guide (wechatpay-im `guide/getting-started.md`, wechatpay-go
`core/consts` and `core/auth`):

* Request: SHA256withRSA (PKCS#1 v1.5) with the merchant API private key over five lines, each
  ending in ``\\n``: ``METHOD``, the URL path with its query string exactly as sent, the Unix
  timestamp, a nonce, the body (empty for GET). Sent as
  ``Authorization: WECHATPAY2-SHA256-RSA2048 mchid="…",nonce_str="…",timestamp="…",serial_no="…",signature="…"``.
* Response and callback: SHA256withRSA with the PLATFORM key (never the merchant's) over three
  lines ``TIMESTAMP\\nNONCE\\nBODY\\n`` (a 204's body is empty), in the headers
  Wechatpay-Timestamp / -Nonce / -Signature / -Serial / -Signature-Type. The serial must be the
  configured platform serial (public-key mode: ``PUB_KEY_ID_…``) and the timestamp within five
  minutes of now.
* Callback resource: AEAD_AES_256_GCM with the 32-byte APIv3 key, a 12-character nonce used as its
  UTF-8 bytes and ``associated_data`` as AAD; ``ciphertext`` is Base64 of ciphertext‖16-byte tag.
* APP pay parameters: the merchant key signs ``appid\\ntimestamp\\nnoncestr\\nprepayid\\n``
  (wechatpay-go `PrepayWithRequestPayment`).

Nothing here logs; keys and signatures never appear in exception messages.
"""
from __future__ import annotations

import base64
import binascii
import re
from typing import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from channels import crypto
from channels.base import ProtocolError

SCHEMA = "WECHATPAY2-SHA256-RSA2048"
AEAD_ALGORITHM = "AEAD_AES_256_GCM"
CLOCK_SKEW_S_MAX = 300                 # wechatpay-go FiveMinute
APIV3_KEY_BYTES = 32
AEAD_NONCE_CHARS = 12
CIPHERTEXT_B64_MAX_CHARS = 65_536

H_TIMESTAMP = "Wechatpay-Timestamp"
H_NONCE = "Wechatpay-Nonce"
H_SIGNATURE = "Wechatpay-Signature"
H_SERIAL = "Wechatpay-Serial"
H_SIGNATURE_TYPE = "Wechatpay-Signature-Type"
H_REQUEST_ID = "Request-ID"

AUTH_FIELDS = ("mchid", "nonce_str", "timestamp", "serial_no", "signature")
_AUTH_PARAM = re.compile(r'\s*([a-z_]+)="([^"]*)"\s*')


# ---- keys -----------------------------------------------------------------------------------

load_private_key = crypto.load_private_key      # PEM files, as every RSA channel's
load_public_key = crypto.load_public_key


# ---- messages -------------------------------------------------------------------------------

def request_message(method: str, path: str, timestamp: int | str, nonce: str,
                    body: bytes | str = b"") -> bytes:
    """The five signed lines of a request; `path` is the URL path plus ``?query`` as sent."""
    text = body.decode("utf-8") if isinstance(body, bytes) else body
    return f"{method.upper()}\n{path}\n{timestamp}\n{nonce}\n{text}\n".encode("utf-8")


def response_message(timestamp: int | str, nonce: str, body: bytes | str = b"") -> bytes:
    """The three signed lines of an answer or a callback."""
    raw = body.encode("utf-8") if isinstance(body, str) else body
    return f"{timestamp}\n{nonce}\n".encode("utf-8") + raw + b"\n"


# ---- SHA256withRSA --------------------------------------------------------------------------

def sign(private_key: rsa.RSAPrivateKey, message: bytes) -> str:
    return crypto.sign(private_key, message)


def verify(public_key: rsa.RSAPublicKey, message: bytes, signature_b64: str) -> bool:
    """True only for a valid signature; never raises on malformed input."""
    return crypto.verify(public_key, message, signature_b64)


# ---- the Authorization header ----------------------------------------------------------------

def authorization(mchid: str, serial_no: str, private_key: rsa.RSAPrivateKey, method: str,
                  path: str, timestamp: int, nonce: str, body: bytes = b"") -> str:
    """The Authorization header value of one request."""
    signature = sign(private_key, request_message(method, path, timestamp, nonce, body))
    return (f'{SCHEMA} mchid="{mchid}",nonce_str="{nonce}",timestamp="{timestamp}",'
            f'serial_no="{serial_no}",signature="{signature}"')


def parse_authorization(header: str) -> dict[str, str] | None:
    """The five fields of an Authorization header in any order, or None when malformed."""
    schema, _, rest = header.strip().partition(" ")
    if schema != SCHEMA:
        return None
    fields: dict[str, str] = {}
    for part in rest.split(","):
        m = _AUTH_PARAM.fullmatch(part)
        if m is None or m.group(1) in fields:
            return None
        fields[m.group(1)] = m.group(2)
    if set(fields) != set(AUTH_FIELDS) or not all(fields.values()):
        return None
    return fields


# ---- signed answers (the sandbox's side) and their check (the connector's) ------------------

def signed_headers(private_key: rsa.RSAPrivateKey, serial: str, body: bytes, timestamp: int,
                   nonce: str) -> dict[str, str]:
    """The Wechatpay-* headers that sign `body`."""
    return {
        H_TIMESTAMP: str(timestamp), H_NONCE: nonce, H_SERIAL: serial,
        H_SIGNATURE: sign(private_key, response_message(timestamp, nonce, body)),
        H_SIGNATURE_TYPE: SCHEMA,
    }


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def check_signed(headers: Mapping[str, str], body: bytes, public_key: rsa.RSAPublicKey,
                 platform_serial: str, now_s: float) -> None:
    """ProtocolError unless `body` carries a valid platform signature made within 5 minutes."""
    h = _lower(headers)
    signature_type = h.get(H_SIGNATURE_TYPE.lower(), SCHEMA)
    if signature_type != SCHEMA:
        raise ProtocolError("wechatpay: unsupported signature type")
    if h.get(H_SERIAL.lower()) != platform_serial:
        raise ProtocolError("wechatpay: signed by an unknown platform serial")
    timestamp, nonce = h.get(H_TIMESTAMP.lower(), ""), h.get(H_NONCE.lower(), "")
    if not timestamp.isdigit() or not nonce:
        raise ProtocolError("wechatpay: missing Wechatpay-Timestamp or Wechatpay-Nonce")
    if abs(now_s - int(timestamp)) > CLOCK_SKEW_S_MAX:
        raise ProtocolError("wechatpay: signature timestamp outside the 5 minute window")
    if not verify(public_key, response_message(timestamp, nonce, body),
                  h.get(H_SIGNATURE.lower(), "")):
        raise ProtocolError("wechatpay: signature does not verify")


# ---- AEAD_AES_256_GCM -----------------------------------------------------------------------

def _aead(apiv3_key: str) -> AESGCM:
    key = apiv3_key.encode("utf-8")
    if len(key) != APIV3_KEY_BYTES:
        raise ValueError("the APIv3 key must be 32 bytes")
    return AESGCM(key)


def encrypt_resource(apiv3_key: str, plaintext: bytes, nonce: str,
                     associated_data: str) -> str:
    """Base64 of ciphertext‖tag, as in a callback's `resource.ciphertext`."""
    assert len(nonce) == AEAD_NONCE_CHARS, "the AEAD nonce is 12 characters"
    sealed = _aead(apiv3_key).encrypt(nonce.encode("utf-8"), plaintext,
                                      associated_data.encode("utf-8"))
    return base64.b64encode(sealed).decode("ascii")


def decrypt_resource(apiv3_key: str, ciphertext_b64: str, nonce: str,
                     associated_data: str) -> bytes:
    """The plaintext of a callback resource; ProtocolError when it does not authenticate."""
    if not ciphertext_b64 or len(ciphertext_b64) > CIPHERTEXT_B64_MAX_CHARS:
        raise ProtocolError("wechatpay: resource ciphertext missing or too large")
    try:
        sealed = base64.b64decode(ciphertext_b64, validate=True)
        return _aead(apiv3_key).decrypt(nonce.encode("utf-8"), sealed,
                                        associated_data.encode("utf-8"))
    except (binascii.Error, ValueError, InvalidTag):
        raise ProtocolError("wechatpay: resource does not decrypt") from None


# ---- APP pay parameters ---------------------------------------------------------------------

def app_pay_sign(private_key: rsa.RSAPrivateKey, appid: str, timestamp: int, nonce: str,
                 prepay_id: str) -> str:
    """`sign` of the APP SDK's PayReq: the merchant key over appid, timestamp, nonce, prepayid."""
    return sign(private_key, f"{appid}\n{timestamp}\n{nonce}\n{prepay_id}\n".encode("utf-8"))
