"""UnionPay 5.1.0 signing: the sign content, the hex-digest-then-RSA rule, the certificate checks
on signPubKeyCert, the k=v answer format, and the order-id / txnTime rules."""
from __future__ import annotations

import base64
import hashlib
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given, strategies as st

from channels.base import ProtocolError
from channels.sandbox import keyring
from channels.unionpay import ids, signing
from core.ids import make_order_id
from core.settings import KEYS_DIR

MERCHANT_KEY = signing.load_private_key(KEYS_DIR / "unionpay_merchant_private.pem")
MERCHANT_CERT = signing.load_cert(KEYS_DIR / "unionpay_merchant_cert.pem")
SIGN_KEY = signing.load_private_key(KEYS_DIR / "unionpay_sign_private.pem")
SIGN_CERT = signing.load_cert(KEYS_DIR / "unionpay_sign_cert.pem")
ROOT = signing.load_cert(KEYS_DIR / "unionpay_root_cert.pem")
MIDDLE = signing.load_cert(KEYS_DIR / "unionpay_middle_cert.pem")
NOW = datetime(2025, 3, 1, 8, 0, tzinfo=timezone.utc)


def _trust(**kw: bool) -> signing.Trust:
    return signing.Trust(ROOT, MIDDLE, **kw)


# ---- sign content and signature -------------------------------------------------------------

def test_content_sorts_by_name_and_leaves_out_only_signature() -> None:
    params = {"txnType": "01", "version": "5.1.0", "signature": "zz", "certId": "6962",
              "signPubKeyCert": "PEM", "accessType": "0"}
    assert signing.sign_content(params) == (
        "accessType=0&certId=6962&signPubKeyCert=PEM&txnType=01&version=5.1.0")


def test_signature_is_rsa_sha256_over_the_hex_digest_of_the_content() -> None:
    params = {"version": "5.1.0", "merId": "777290058110048", "txnAmt": "1200"}
    signed = signing.sign_params(params, MERCHANT_KEY, "69629715588")
    content = "certId=69629715588&merId=777290058110048&txnAmt=1200&version=5.1.0"
    assert signing.sign_content(signed) == content
    digest_hex = hashlib.sha256(content.encode()).hexdigest().encode()
    # independent check: the RSA signature verifies over the 64-char hex text, not the content
    public = MERCHANT_CERT.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    public.verify(base64.b64decode(signed["signature"]), digest_hex, padding.PKCS1v15(),
                  hashes.SHA256())
    with pytest.raises(Exception):
        public.verify(base64.b64decode(signed["signature"]), content.encode(),
                      padding.PKCS1v15(), hashes.SHA256())


def test_sign_params_drops_empty_fields_and_sets_cert_id() -> None:
    signed = signing.sign_params({"a": "1", "b": ""}, MERCHANT_KEY, "69629715588")
    assert set(signed) == {"a", "certId", "signature"} and signed["certId"] == "69629715588"
    assert signing.cert_id(MERCHANT_CERT) == "69629715588"


@given(st.dictionaries(st.text("abcdefghijXYZ", min_size=1, max_size=8),
                       st.text(min_size=1, max_size=30), min_size=1, max_size=6))
def test_round_trip_and_any_change_breaks_it(params: dict[str, str]) -> None:
    params = {k: v for k, v in params.items() if k != "signature"}
    signed = signing.sign_params(params, MERCHANT_KEY, "1")
    public = MERCHANT_CERT.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    assert signing.verify(public, signed)
    name = next(iter(params))
    assert not signing.verify(public, {**signed, name: signed[name] + "x"})


@pytest.mark.parametrize("bad", ["", "!!!", "A" * 2000, base64.b64encode(b"short").decode()])
def test_verify_is_false_for_malformed_signatures(bad: str) -> None:
    public = MERCHANT_CERT.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    assert signing.verify(public, {"a": "1", "signature": bad}) is False


# ---- signPubKeyCert -------------------------------------------------------------------------

def _answer(key: rsa.RSAPrivateKey = SIGN_KEY,
            cert: x509.Certificate = SIGN_CERT) -> dict[str, str]:
    return signing.sign_answer({"respCode": "00", "signMethod": "01", "orderId": "abcdefgh1"},
                               key, cert)


def test_sandbox_signing_cert_is_unionpays_and_chains_to_the_root() -> None:
    assert signing.cn_identity(SIGN_CERT) == signing.UNIONPAY_CNNAME
    assert _trust().check_cert(SIGN_CERT, NOW) == ""
    assert signing.open_signed(_answer(), _trust(), NOW)["respCode"] == "00"


def test_answer_signed_with_another_key_is_refused() -> None:
    with pytest.raises(ProtocolError, match="signature"):
        signing.open_signed(_answer(key=keyring.attacker_key()), _trust(), NOW)


def test_answer_without_cert_or_with_another_sign_method_is_refused() -> None:
    answer = _answer()
    with pytest.raises(ProtocolError, match="signPubKeyCert"):
        signing.open_signed({**answer, "signPubKeyCert": ""}, _trust(), NOW)
    with pytest.raises(ProtocolError, match="signMethod"):
        signing.open_signed({**answer, "signMethod": "11"}, _trust(), NOW)
    with pytest.raises(ProtocolError, match="PEM"):
        signing.open_signed({**answer, "signPubKeyCert": "-----BEGIN CERTIFICATE-----\nxx"},
                            _trust(), NOW)


def _ca(cn: str, key: rsa.RSAPrivateKey, issuer: x509.Name | None = None,
        issuer_key: rsa.RSAPrivateKey | None = None, ca: bool = True) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    return (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name)
            .public_key(key.public_key()).serial_number(7)
            .not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(issuer_key or key, hashes.SHA256()))


def _chain(leaf_cn: str) -> tuple[x509.Certificate, x509.Certificate, x509.Certificate,
                                  rsa.RSAPrivateKey]:
    rk, mk, lk = (rsa.generate_private_key(public_exponent=65537, key_size=2048)
                  for _ in range(3))
    root = _ca("other root", rk)
    middle = _ca("other middle", mk, root.subject, rk)
    leaf = _ca(leaf_cn, lk, middle.subject, mk, ca=False)
    return root, middle, leaf, lk


def test_a_unionpay_named_cert_from_another_root_is_refused() -> None:
    _, _, leaf, leaf_key = _chain("041@8310000000083040@中国银联股份有限公司@00000001")
    assert "middle" in _trust().check_cert(leaf, NOW)
    with pytest.raises(ProtocolError, match="chain"):
        signing.open_signed(_answer(leaf_key, leaf), _trust(), NOW)


def test_a_cert_of_the_right_chain_but_another_owner_is_refused() -> None:
    root, middle, leaf, _ = _chain("041@Z2024@SOME SHOP LTD@00000001")
    assert signing.Trust(root, middle).check_cert(leaf, NOW) == "signPubKeyCert is not UnionPay's"
    _, _, test_leaf, _ = _chain("041@Z2017-11-1@00040000:SIGN@00000001")
    trust = signing.Trust(root, middle)
    assert trust.check_cert(test_leaf, NOW) != ""      # other chain anyway
    root2, middle2, test_leaf2, _ = _chain("041@Z2017-11-1@00040000:SIGN@00000001")
    assert signing.Trust(root2, middle2).check_cert(test_leaf2, NOW) != ""
    assert signing.Trust(root2, middle2, accept_test_cn=True).check_cert(test_leaf2, NOW) == ""


def test_expired_or_not_yet_valid_cert_is_refused() -> None:
    assert _trust().check_cert(SIGN_CERT, datetime(2050, 1, 1, tzinfo=timezone.utc)) != ""
    assert _trust().check_cert(SIGN_CERT, datetime(2020, 1, 1, tzinfo=timezone.utc)) != ""


def test_swapped_root_and_middle_are_refused() -> None:
    assert signing.Trust(MIDDLE, ROOT).check_cert(SIGN_CERT, NOW) != ""


# ---- answer format --------------------------------------------------------------------------

def test_parse_answer_keeps_ampersands_inside_braces_and_equals_in_values() -> None:
    text = ("respCode=00&tokenPayData={token=62&trId=999}&signature=ab+c/d==&"
            "respMsg=成功[0000000]&reserved=[a&b]&empty=")
    assert signing.parse_answer(text) == {
        "respCode": "00", "tokenPayData": "{token=62&trId=999}", "signature": "ab+c/d==",
        "respMsg": "成功[0000000]", "reserved": "[a&b]", "empty": ""}


@pytest.mark.parametrize("bad", ["=x", "a=1&a=2", "a=1&&b=2"])
def test_parse_answer_refuses_malformed_text(bad: str) -> None:
    with pytest.raises(ProtocolError):
        signing.parse_answer(bad)


def test_a_signed_answer_survives_the_wire_format_with_its_pem() -> None:
    answer = _answer()
    assert "\n" in answer["signPubKeyCert"]
    parsed = signing.parse_answer(signing.build_answer(answer).decode())
    assert parsed == answer and signing.open_signed(parsed, _trust(), NOW)


# ---- order ids and txnTime ------------------------------------------------------------------

def test_plain_ids_go_unchanged_and_paycell_ids_are_packed_into_32() -> None:
    assert ids.to_wire_id("cf0123456789abcdef0123") == "cf0123456789abcdef0123"
    paycell = make_order_id("local", "s0", 3, 1_740_816_000_000, rand=2**64 - 1)
    assert len(paycell) == 32
    wire = ids.to_wire_id(paycell)
    assert wire.startswith("W") and wire.isalnum() and len(wire) == 28
    assert ids.from_wire_id(wire) == paycell
    packed = ids.to_wire_id("ab_cd")
    assert packed.startswith("X") and ids.from_wire_id(packed) == "ab_cd"


@given(st.sampled_from(["", "P_", "R_"]),
       st.text("abcdefghijklmnopqrstuvwxyz0123456789_", min_size=1, max_size=34))
def test_packing_is_reversible(prefix: str, rest: str) -> None:
    paycell_id = prefix + rest
    try:
        wire = ids.to_wire_id(paycell_id)
    except ValueError:
        assert len(paycell_id) > 30
        return
    assert 8 <= len(wire) <= 32 and wire.isalnum()
    assert ids.from_wire_id(wire) == paycell_id


@pytest.mark.parametrize("bad", ["P-1-2-3-4567", "UPPERCASE_x", "P_Q_x", "a" * 60])
def test_ids_that_cannot_be_carried_are_refused_before_sending(bad: str) -> None:
    with pytest.raises(ValueError):
        ids.to_wire_id(bad)


def test_paycell_ids_carry_their_txn_time() -> None:
    ms = 1_740_816_000_123          # 2025-03-01 08:00:00.123 UTC
    oid = make_order_id("local", "s0", 3, ms, rand=42)
    assert ids.embedded_time(oid) == datetime(2025, 3, 1, 8, 0, 0, 123000, tzinfo=timezone.utc)
    assert ids.txn_time(ids.embedded_time(oid)) == "20250301160000"     # Beijing time
    assert ids.embedded_time("cf0123456789abcdef0123") is None


def test_refund_ids_pack_apart_from_order_ids_and_carry_their_txn_time() -> None:
    from core.ids import make_refund_id
    ms = 1_740_816_000_123
    rid = make_refund_id("local", "s0", 3, ms, rand=42)
    oid = "P" + rid[1:]
    rwire, owire = ids.to_wire_id(rid), ids.to_wire_id(oid)
    assert rwire.startswith("V") and owire.startswith("W") and rwire[1:] == owire[1:]
    assert ids.from_wire_id(rwire) == rid and ids.from_wire_id(owire) == oid
    assert ids.embedded_time(rid) == ids.embedded_time(oid)


def test_cancel_order_id_is_stable_and_distinct() -> None:
    a = ids.cancel_wire_id("cf0123456789abcdef0123")
    assert a == ids.cancel_wire_id("cf0123456789abcdef0123") and len(a) == 32
    assert a != ids.cancel_wire_id("cf0123456789abcdef0124") and a.startswith("Y")
