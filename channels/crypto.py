"""RSA the channels share: PEM key files, and SHA256withRSA (PKCS#1 v1.5) signatures carried as
Base64 text. Pure functions over `cryptography` keys.

What a channel signs (its message format) is that channel's own rule and stays in its signing
module; this module only signs and checks bytes. Nothing here logs; keys and signatures never
appear in exception messages.
"""
from __future__ import annotations

import base64
import binascii
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

CHARSET = "utf-8"                  # how a text message is turned into the bytes signed
SIGNATURE_B64_MAX_CHARS = 1024     # a 4096-bit signature is 684 Base64 characters


# ---- keys -----------------------------------------------------------------------------------

def load_private_key(path: str | Path) -> rsa.RSAPrivateKey:
    """An unencrypted PEM RSA private key; ValueError naming the file when it is not one."""
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"{path}: not an RSA private key")
    return key


def load_public_key(path: str | Path) -> rsa.RSAPublicKey:
    """A PEM RSA public key; ValueError naming the file when it is not one."""
    key = serialization.load_pem_public_key(Path(path).read_bytes())
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError(f"{path}: not an RSA public key")
    return key


# ---- SHA256withRSA --------------------------------------------------------------------------

def _bytes(message: str | bytes) -> bytes:
    return message.encode(CHARSET) if isinstance(message, str) else message


def sign(private_key: rsa.RSAPrivateKey, message: str | bytes) -> str:
    """Base64 of the SHA256withRSA signature of `message` (text is signed as UTF-8)."""
    signature = private_key.sign(_bytes(message), padding.PKCS1v15(), hashes.SHA256())
    return base64.b64encode(signature).decode("ascii")


def decode_signature(signature_b64: str) -> bytes | None:
    """The raw signature of bounded, strict Base64 text, or None; never raises."""
    if not signature_b64 or len(signature_b64) > SIGNATURE_B64_MAX_CHARS:
        return None
    try:
        return base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError):
        return None


def verify_raw(public_key: rsa.RSAPublicKey, message: bytes, signature: bytes) -> bool:
    """True only when `signature` is a valid SHA256withRSA signature of `message`."""
    try:
        public_key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def verify(public_key: rsa.RSAPublicKey, message: str | bytes, signature_b64: str) -> bool:
    """True only for a valid Base64 SHA256withRSA signature; never raises on a malformed one
    (the signature is checked before the message is encoded)."""
    signature = decode_signature(signature_b64)
    if signature is None:
        return False
    return verify_raw(public_key, _bytes(message), signature)
