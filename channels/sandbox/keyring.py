"""Keys the sandboxes use: the published sandbox keys in channels/sandbox/keys, loaded once, and
one attacker key made per process for forged notifications."""
from __future__ import annotations

import functools
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa

from channels import crypto

KEYS_DIR = Path(__file__).resolve().parent / "keys"


@functools.lru_cache(maxsize=None)
def private_key(name: str) -> rsa.RSAPrivateKey:
    return crypto.load_private_key(KEYS_DIR / name)


@functools.lru_cache(maxsize=None)
def public_key(name: str) -> rsa.RSAPublicKey:
    return crypto.load_public_key(KEYS_DIR / name)


@functools.lru_cache(maxsize=1)
def attacker_key() -> rsa.RSAPrivateKey:
    """An RSA key no channel or merchant has: what a forger signs with."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)
