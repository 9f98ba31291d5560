"""UnionPay online payments (全渠道) 5.1.0 signatures, signMethod=01, pure functions.

The rules follow UnionPay's ACP SDK (`SDKUtil.sign` / `validate`, `CertUtil.verifyCertificate`):

* Sign content: every field except ``signature`` (certId and, in answers, signPubKeyCert
  included), sorted by name (Java TreeMap: plain code-point order), joined as ``k=v`` with ``&``.
  Requests never carry empty fields (the SDK's `filterBlank` drops them before signing).
* signMethod 01, version 5.1.0: ``signature = Base64(SHA256withRSA(key, hex(SHA-256(content))))``,
  i.e. the RSA signature is over the lowercase hex text of the content's SHA-256 digest, not over
  the content itself (`SecureUtil.sha256X16` then `signBySoft256`).
* A request names the merchant's signing certificate by ``certId`` (its serial number, decimal).
* An answer or notification carries UnionPay's signing certificate in ``signPubKeyCert`` (PEM).
  It is trusted only if it is within its validity, chains to the configured middle and root
  certificates, and its subject CN names UnionPay: the CN's third ``@``-separated part must be
  "中国银联股份有限公司" (`UNIONPAY_CNNAME`; the SDK's test-mode alternative "00040000:SIGN" is
  accepted only with ``accept_test_cn=True``).
* Answers of the back-end APIs are ``k=v&k=v`` text, not URL-encoded; values may hold ``{...}`` or
  ``[...]`` with ``&`` inside (`SDKUtil.parseQString`).

Nothing here logs; keys and signatures never appear in exception messages.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Mapping

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from channels import crypto
from channels.base import ProtocolError

CHARSET = "utf-8"
SIGN_METHOD_RSA = "01"
SIGNATURE = "signature"
SIGN_PUB_KEY_CERT = "signPubKeyCert"
UNIONPAY_CNNAME = "中国银联股份有限公司"
TEST_CNNAME = "00040000:SIGN"
CERT_PEM_MAX_CHARS = 8192
VERIFIED_CERTS_MAX = 16          # UnionPay rotates its signing cert rarely


# ---- keys and certificates ------------------------------------------------------------------

load_private_key = crypto.load_private_key      # PEM files, as every RSA channel's


def load_cert(path: str | Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def cert_id(cert: x509.Certificate) -> str:
    """The certId UnionPay knows a certificate by: its serial number in decimal."""
    return str(cert.serial_number)


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


# ---- sign content and RSA -------------------------------------------------------------------

def sign_content(params: Mapping[str, str]) -> str:
    """What `signature` covers: all fields but `signature`, sorted, ``k=v&k=v``."""
    return "&".join(f"{k}={v}" for k, v in sorted(params.items()) if k != SIGNATURE)


def _digest_hex(content: str) -> bytes:
    return hashlib.sha256(content.encode(CHARSET)).hexdigest().encode("ascii")


def sign(private_key: rsa.RSAPrivateKey, params: Mapping[str, str]) -> str:
    return crypto.sign(private_key, _digest_hex(sign_content(params)))


def verify(public_key: rsa.RSAPublicKey, params: Mapping[str, str]) -> bool:
    """True only for a valid 5.1.0 signature; never raises on malformed input."""
    signature = crypto.decode_signature(params.get(SIGNATURE, ""))
    if signature is None:
        return False
    return crypto.verify_raw(public_key, _digest_hex(sign_content(params)), signature)


def sign_params(params: Mapping[str, str], private_key: rsa.RSAPrivateKey,
                signing_cert_id: str) -> dict[str, str]:
    """A request: empty fields dropped, certId set, `signature` added."""
    signed = {k: v for k, v in params.items() if v != ""}
    signed["certId"] = signing_cert_id
    signed[SIGNATURE] = sign(private_key, signed)
    return signed


def sign_answer(params: Mapping[str, str], private_key: rsa.RSAPrivateKey,
                signing_cert: x509.Certificate) -> dict[str, str]:
    """An answer or notification (UnionPay's side): signPubKeyCert set, `signature` added."""
    signed = {k: v for k, v in params.items() if v != ""}
    signed[SIGN_PUB_KEY_CERT] = cert_pem(signing_cert)
    signed[SIGNATURE] = sign(private_key, signed)
    return signed


# ---- UnionPay's signing certificate ---------------------------------------------------------

def cn_identity(cert: x509.Certificate) -> str:
    """The owner part of a CFCA CN ("041@8310000000083040@中国银联股份有限公司@00016494")."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(names[0].value) if names else ""
    parts = cn.split("@")
    return parts[2] if len(parts) >= 3 else ""


def _within(cert: x509.Certificate, now: datetime) -> bool:
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def _issued_by(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


@dataclass
class Trust:
    """UnionPay's root and middle certificates, and the signing certs already verified."""
    root: x509.Certificate
    middle: x509.Certificate
    accept_test_cn: bool = False
    _verified: OrderedDict[str, rsa.RSAPublicKey] = field(default_factory=OrderedDict, repr=False)

    def check_cert(self, cert: x509.Certificate, now: datetime) -> str:
        """"" when `cert` is UnionPay's signing cert under this trust, else why not."""
        if not all(_within(c, now) for c in (cert, self.middle, self.root)):
            return "certificate outside its validity"
        if not (_is_ca(self.middle) and _issued_by(self.middle, self.root)):
            return "middle certificate does not chain to the root"
        if not _issued_by(cert, self.middle):
            return "signPubKeyCert does not chain to the middle certificate"
        owner = cn_identity(cert)
        if owner != UNIONPAY_CNNAME and not (self.accept_test_cn and owner == TEST_CNNAME):
            return "signPubKeyCert is not UnionPay's"
        return ""

    def signing_key(self, pem: str, now: datetime) -> rsa.RSAPublicKey:
        """The public key of a signPubKeyCert that passes check_cert; ProtocolError otherwise."""
        cached = self._verified.get(pem)
        if cached is not None:
            self._verified.move_to_end(pem)
            return cached
        if not pem or len(pem) > CERT_PEM_MAX_CHARS:
            raise ProtocolError("unionpay answer without a usable signPubKeyCert")
        try:
            cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            raise ProtocolError("unionpay signPubKeyCert is not a PEM certificate") from None
        why = self.check_cert(cert, now)
        if why:
            raise ProtocolError(f"unionpay {why}")
        key = cert.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise ProtocolError("unionpay signPubKeyCert is not an RSA certificate")
        self._verified[pem] = key
        while len(self._verified) > VERIFIED_CERTS_MAX:
            self._verified.popitem(last=False)
        return key


def open_signed(params: Mapping[str, str], trust: Trust, now: datetime) -> dict[str, str]:
    """Verify an answer or notification signed by UnionPay (5.1.0, signMethod 01)."""
    if params.get("signMethod") != SIGN_METHOD_RSA:
        raise ProtocolError("unionpay answer: signMethod is not 01")
    key = trust.signing_key(params.get(SIGN_PUB_KEY_CERT, ""), now)
    if not verify(key, params):
        raise ProtocolError("unionpay answer signature does not verify")
    return dict(params)


# ---- the answer format ----------------------------------------------------------------------

def parse_answer(text: str) -> dict[str, str]:
    """``k=v&k=v`` as the SDK reads it: `&` inside {...} or [...] belongs to the value, the
    first `=` ends the name. ProtocolError on an empty name or a repeated one."""
    out: dict[str, str] = {}
    key, in_key, closer = "", True, ""
    buf: list[str] = []

    def put() -> None:
        name, value = (("".join(buf), "") if in_key else (key, "".join(buf)))
        if not name or name in out:
            raise ProtocolError("unionpay answer is not a k=v&k=v string")
        out[name] = value

    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1]
    for ch in text:
        if in_key:
            if ch == "=":
                key, buf, in_key = "".join(buf), [], False
            elif ch == "&":
                put()
                buf = []
            else:
                buf.append(ch)
            continue
        if closer:
            closer = "" if ch == closer else closer
        elif ch in "{[":
            closer = "}" if ch == "{" else "]"
        if ch == "&" and not closer:
            put()
            key, buf, in_key = "", [], True
        else:
            buf.append(ch)
    if buf or not in_key:
        put()
    return out


def build_answer(params: Mapping[str, str]) -> bytes:
    """An answer body in UnionPay's format (the sandbox's side), not URL-encoded."""
    return "&".join(f"{k}={v}" for k, v in params.items()).encode(CHARSET)
