"""QQ Wallet (QPay) merchant API signatures and its flat XML, pure functions.

The rules follow QPay's "商户签名算法规则" (the same scheme as WeChat Pay API v2, which QPay's
merchant API mirrors), as the public SDKs implement it (go-pay/gopay `qq/param.go`,
netcccyun/qqpay-sdk-php `BaseService::makeSign`):

* Sign content: every field except `sign` whose value is not empty, sorted by field name (byte
  order of the ASCII names), joined as ``k=v`` with ``&``; then ``&key=<API key>`` is appended.
* MD5 (the default, and what `sign_type` absent means): upper-case hex MD5 of that string, UTF-8.
* HMAC-SHA256 (``sign_type=HMAC-SHA256``): upper-case hex HMAC-SHA256 of the same string, keyed
  with the API key.
* Requests, responses whose return_code is SUCCESS and payment notifications are all signed the
  same way; a notification or response is verified with the sign type it names.

Messages are flat XML: ``<xml><field>value</field>...</xml>``, values as text or CDATA. The parser
refuses DOCTYPE / entity declarations (no entity expansion), nested elements, repeated fields and
oversized bodies. Nothing here logs; keys and signatures never appear in exception messages.
"""
from __future__ import annotations

import hashlib
import hmac
import xml.etree.ElementTree as ET
from typing import Mapping
from xml.sax.saxutils import escape

from channels.base import ProtocolError

CHARSET = "utf-8"
SIGN_MD5 = "MD5"
SIGN_HMAC_SHA256 = "HMAC-SHA256"
SIGN_TYPES = frozenset({SIGN_MD5, SIGN_HMAC_SHA256})
XML_BODY_MAX_BYTES = 65_536
XML_FIELDS_MAX = 200
ROOT = "xml"


# ---- signatures -----------------------------------------------------------------------------

def sign_content(params: Mapping[str, str], api_key: str) -> str:
    """``k=v&...&key=<api key>``: what the signature is computed over (stringSignTemp)."""
    pairs = "&".join(f"{k}={v}" for k, v in sorted(params.items()) if k != "sign" and v != "")
    return f"{pairs}&key={api_key}" if pairs else f"key={api_key}"


def sign(params: Mapping[str, str], api_key: str, sign_type: str = SIGN_MD5) -> str:
    """The upper-case hex signature of `params` (their own `sign` ignored)."""
    data = sign_content(params, api_key).encode(CHARSET)
    if sign_type == SIGN_MD5:
        return hashlib.md5(data).hexdigest().upper()
    if sign_type == SIGN_HMAC_SHA256:
        return hmac.new(api_key.encode(CHARSET), data, hashlib.sha256).hexdigest().upper()
    raise ValueError(f"unsupported sign_type {sign_type!r}")


def sign_params(params: Mapping[str, str], api_key: str,
                sign_type: str = SIGN_MD5) -> dict[str, str]:
    """A copy of `params` with `sign` (and `sign_type` when it is not the default MD5)."""
    signed = {k: v for k, v in params.items() if k != "sign"}
    if sign_type != SIGN_MD5:
        signed["sign_type"] = sign_type
    signed["sign"] = sign(signed, api_key, sign_type)
    return signed


def verify(params: Mapping[str, str], api_key: str, default_sign_type: str = SIGN_MD5) -> bool:
    """True only when `sign` is present and right for the sign type the message names (or,
    when it names none, `default_sign_type`: the one the request was signed with)."""
    given = params.get("sign", "")
    sign_type = params.get("sign_type") or default_sign_type
    if not given or sign_type not in SIGN_TYPES:
        return False
    expected = sign(params, api_key, sign_type)
    return hmac.compare_digest(expected.encode("ascii"), given.encode(CHARSET))


def operator_password(password: str) -> str:
    """op_user_passwd as QPay wants it: the lower-case hex MD5 of the operator's password."""
    return hashlib.md5(password.encode(CHARSET)).hexdigest()


# ---- flat XML -------------------------------------------------------------------------------

def to_xml(params: Mapping[str, str]) -> bytes:
    """``<xml><k>v</k>...</xml>`` with values escaped, `sign` last (as the SDKs send it)."""
    keys = [k for k in params if k != "sign"] + (["sign"] if "sign" in params else [])
    for k in keys:
        assert k.replace("_", "").isalnum(), k
    inner = "".join(f"<{k}>{escape(params[k])}</{k}>" for k in keys)
    return f"<{ROOT}>{inner}</{ROOT}>".encode(CHARSET)


def parse_xml(body: bytes) -> dict[str, str]:
    """A flat ``<xml>`` message as a dict; ProtocolError for anything else."""
    if len(body) > XML_BODY_MAX_BYTES:
        raise ProtocolError("qpay message too large")
    if b"<!DOCTYPE" in body.upper() or b"<!ENTITY" in body.upper():
        raise ProtocolError("qpay message declares a DTD")
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        raise ProtocolError("qpay message is not XML") from None
    if root.tag != ROOT or len(root) > XML_FIELDS_MAX:
        raise ProtocolError("qpay message is not an <xml> object")
    fields: dict[str, str] = {}
    for child in root:
        if len(child) or not isinstance(child.tag, str) or child.tag in fields:
            raise ProtocolError("qpay message has nested or repeated fields")
        fields[child.tag] = (child.text or "").strip()
    return fields


def open_signed(body: bytes, api_key: str, sign_type: str = SIGN_MD5) -> dict[str, str]:
    """Parse an answer; when it says return_code SUCCESS its signature must verify.

    An answer with return_code FAIL is the gateway refusing the request before any business
    processing (QPay does not sign those); the caller decides what it means.
    """
    fields = parse_xml(body)
    if fields.get("return_code") == "SUCCESS" and not verify(fields, api_key, sign_type):
        raise ProtocolError("qpay answer signature does not verify")
    return fields
