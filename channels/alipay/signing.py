"""Alipay Open Platform signatures (RSA2), pure functions over loaded `cryptography` keys.

The rules follow the official SDK (`alipay.aop.api.util.SignatureUtils` and
`DefaultAlipayClient.__parse_response`) and Alipay's server-side check for notifications:

* Request sign content: every parameter except `sign`, common parameters and `biz_content`
  alike, sorted by key (plain code-point order), joined as ``k=v`` with ``&``. Values that are not
  strings are JSON-dumped the way the SDK does (`json.dumps(v, ensure_ascii=False)`). Parameters
  whose value is None or "" are left out: the SDK never sends them (it adds optional common
  parameters only when they have a value) and Alipay's own signature check skips empty values.
* Response: the signature covers the raw bytes of the ``"<method_with_underscores>_response":{...}``
  object exactly as it appears in the body, located by the key name and the matching closing brace
  (braces inside JSON strings and escaped quotes do not count), and the top-level ``"sign"`` field.
* Notification sign content: every form field except `sign` AND `sign_type`, sorted, ``k=v`` with
  ``&`` (Alipay's `getSignCheckContentV1`).
* RSA2 = SHA256withRSA, PKCS#1 v1.5 padding, Base64 of the signature.

Nothing here logs; keys and signatures never appear in exception messages.
"""
from __future__ import annotations

import json
import re
from typing import Any, Mapping

import orjson
from cryptography.hazmat.primitives.asymmetric import rsa

from channels import crypto
from channels.base import ProtocolError

CHARSET = "utf-8"
SIGN_TYPE = "RSA2"
ERROR_RESPONSE_KEY = "error_response"


# ---- keys -----------------------------------------------------------------------------------

load_private_key = crypto.load_private_key      # PEM files, as every RSA channel's
load_public_key = crypto.load_public_key


# ---- sign content ---------------------------------------------------------------------------

def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _content(params: Mapping[str, Any], excluded: frozenset[str]) -> str:
    return "&".join(
        f"{k}={_text(v)}" for k, v in sorted(params.items())
        if k not in excluded and v is not None and v != ""
    )


_REQUEST_EXCLUDED = frozenset({"sign"})
_NOTIFY_EXCLUDED = frozenset({"sign", "sign_type"})


def request_sign_content(params: Mapping[str, Any]) -> str:
    """What a request's `sign` covers: all params but `sign`, sorted, ``k=v&k=v``."""
    return _content(params, _REQUEST_EXCLUDED)


def notify_sign_content(params: Mapping[str, Any]) -> str:
    """What a notification's `sign` covers: all fields but `sign` and `sign_type`."""
    return _content(params, _NOTIFY_EXCLUDED)


# ---- RSA2 -----------------------------------------------------------------------------------

def sign_rsa2(private_key: rsa.RSAPrivateKey, content: str | bytes) -> str:
    return crypto.sign(private_key, content)       # CHARSET is crypto's: UTF-8


def verify_rsa2(public_key: rsa.RSAPublicKey, content: str | bytes, signature_b64: str) -> bool:
    """True only for a valid SHA256withRSA signature; never raises on malformed input."""
    return crypto.verify(public_key, content, signature_b64)


def sign_params(params: Mapping[str, str], private_key: rsa.RSAPrivateKey) -> dict[str, str]:
    """A copy of request (or notification) params with `sign` added."""
    signed = dict(params)
    signed["sign"] = sign_rsa2(private_key, request_sign_content(params))
    return signed


def sign_notification(params: Mapping[str, str], private_key: rsa.RSAPrivateKey) -> dict[str, str]:
    signed = dict(params)
    signed["sign"] = sign_rsa2(private_key, notify_sign_content(params))
    return signed


def verify_request(params: Mapping[str, str], public_key: rsa.RSAPublicKey) -> bool:
    return verify_rsa2(public_key, request_sign_content(params), params.get("sign", ""))


def verify_notification(params: Mapping[str, str], public_key: rsa.RSAPublicKey) -> bool:
    return verify_rsa2(public_key, notify_sign_content(params), params.get("sign", ""))


# ---- responses ------------------------------------------------------------------------------

def response_key(method: str) -> str:
    """alipay.trade.pay -> alipay_trade_pay_response."""
    return method.replace(".", "_") + "_response"


def _object_end(text: str, begin: int) -> int:
    """Index just past the `}` matching the `{` at `begin`, or -1 (the SDK's brace scan)."""
    depth, in_quotes, escapes = 0, False, 0
    for i in range(begin, len(text)):
        ch = text[i]
        if ch == '"' and escapes % 2 == 0:
            in_quotes = not in_quotes
        elif not in_quotes and ch == "{":
            depth += 1
        elif not in_quotes and ch == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        escapes = escapes + 1 if ch == "\\" else 0
    return -1


def extract_response(body: str, method: str) -> tuple[str, str, str]:
    """(response key, raw `{...}` substring, sign) of an Alipay answer; ProtocolError if absent.

    Looks for the method's own key first and falls back to `error_response` (what the gateway
    answers when it cannot tell the method).
    """
    for key in (response_key(method), ERROR_RESPONSE_KEY):
        m = re.search(r'"' + re.escape(key) + r'"[ \t\r\n]*:[ \t\r\n]*\{', body)
        if m is not None:
            break
    else:
        raise ProtocolError(f"alipay answer has no {response_key(method)} object")
    begin = m.end() - 1
    end = _object_end(body, begin)
    if end < 0:
        raise ProtocolError("alipay answer: unterminated response object")
    try:
        top = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ProtocolError("alipay answer is not JSON") from None
    sign = top.get("sign") if isinstance(top, dict) else None
    if not isinstance(sign, str) or not sign:
        raise ProtocolError("alipay answer is not signed")
    return key, body[begin:end], sign


def open_response(body: bytes, method: str, public_key: rsa.RSAPublicKey) -> dict[str, Any]:
    """Verify an answer's signature over its raw response object and return that object parsed."""
    try:
        text = body.decode(CHARSET)
    except UnicodeDecodeError:
        raise ProtocolError("alipay answer is not utf-8") from None
    _, raw, sign = extract_response(text, method)
    if not verify_rsa2(public_key, raw, sign):
        raise ProtocolError("alipay answer signature does not verify")
    payload = orjson.loads(raw)
    if not isinstance(payload, dict):
        raise ProtocolError("alipay response object is not a JSON object")
    return payload


def build_response(method: str, payload: Mapping[str, Any],
                   private_key: rsa.RSAPrivateKey) -> bytes:
    """A signed answer in Alipay's format (the sandbox's side): {"<key>":{...},"sign":"..."}."""
    key = response_key(method) if method else ERROR_RESPONSE_KEY
    raw = orjson.dumps(payload)
    sign = sign_rsa2(private_key, raw)
    return b'{"' + key.encode() + b'":' + raw + b',"sign":"' + sign.encode("ascii") + b'"}'
