"""Validation of merchant input: the create-order body and the ids in paths and queries.

On the hot path, so: one orjson parse, precompiled patterns, and a duplicate-key check that costs
one ``orjson.dumps`` and two byte counts (see ``_may_have_duplicate_keys``). Every field problem is
collected, so a client learns all of them from one answer.
"""
from __future__ import annotations

import ipaddress
import json
import re
from typing import Any, Callable, Collection
from urllib.parse import urlsplit

import orjson

from core.errors import NotFound, ValidationError
from core.ids import parse_order_id
from core.money import AMOUNT_MINOR_MAX, CURRENCY_EXPONENT
from core.order import CreateOrder
from core.refund import CreateRefund

PAYMENT_TYPES = ("barcode", "app", "native", "card")
TOP_LEVEL_FIELDS = frozenset({"out_trade_no", "user_id", "amount", "currency", "subject",
                              "channel", "payment", "device", "region", "country", "notify_url"})
REQUIRED_FIELDS = ("out_trade_no", "user_id", "amount", "currency", "subject", "payment")
PAYMENT_FIELDS = {"barcode": frozenset({"type", "auth_code"}), "app": frozenset({"type"}),
                  "native": frozenset({"type"}), "card": frozenset({"type", "token"})}
DEVICE_FIELDS = frozenset({"fingerprint", "ip"})

OUT_TRADE_NO_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
AUTH_CODE_RE = re.compile(r"[0-9]{10,32}")
PAYMENT_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{4,128}")
COUNTRY_RE = re.compile(r"[A-Z]{2}")
REGION_RE = re.compile(r"[a-z0-9-]{1,32}")
USER_ID_LEN_MAX = 64
SUBJECT_LEN_MAX = 128
FINGERPRINT_LEN_MAX = 128
NOTIFY_URL_LEN_MAX = 512
REFUND_FIELDS = frozenset({"out_refund_no", "amount", "reason"})
REFUND_REQUIRED_FIELDS = ("out_refund_no", "amount")
OUT_REFUND_NO_RE = OUT_TRADE_NO_RE
REASON_LEN_MAX = 80    # WeChat Pay's refund reason; the tightest of the channels

_ESCAPED_COLON_RE = re.compile(rb"\\u003[aA]")
BODY_FIELD = "body"  # the field named when the body as a whole is wrong


class _Problems:
    """Collects one {"field", "message"} per problem."""

    def __init__(self) -> None:
        self.errors: list[dict[str, str]] = []

    def add(self, field: str, message: str) -> None:
        self.errors.append({"field": field, "message": message})

    def raise_if_any(self) -> None:
        if self.errors:
            fields = ", ".join(e["field"] for e in self.errors)
            raise ValidationError(f"invalid field(s): {fields}", errors=self.errors)


def parse_create_order(app_id: str, body: bytes, channels: Collection[str]) -> CreateOrder:
    """Parse and check a POST /v1/orders body; raises ``ValidationError`` listing every problem.
    Without ``channel`` the order is routed: paycell chooses among the enabled ``channels``.

    ``device`` and ``region`` are checked but not carried: ``CreateOrder`` has no place for
    them yet.
    """
    data = parse_json_object(body)
    problems = _Problems()
    for name in sorted(set(data) - TOP_LEVEL_FIELDS):
        problems.add(name, "unknown field")
    for name in REQUIRED_FIELDS:
        if name not in data:
            problems.add(name, "is required")
    out_trade_no = _check(problems, data, "out_trade_no", _out_trade_no_problem)
    user_id = _check(problems, data, "user_id", _user_id_problem)
    amount = _check(problems, data, "amount", _amount_problem)
    currency = _check(problems, data, "currency", _currency_problem)
    subject = _check(problems, data, "subject", _subject_problem)
    channel = _check(problems, data, "channel", lambda v: _channel_problem(v, channels))
    notify_url = _check(problems, data, "notify_url", _notify_url_problem)
    _check(problems, data, "region", _region_problem)
    country = _check(problems, data, "country", _country_problem)
    if "device" in data:
        _check_device(problems, data["device"])
    payment_type, auth_code, token = ("", "", "")
    if "payment" in data:
        payment_type, auth_code, token = _check_payment(problems, data["payment"])
    problems.raise_if_any()
    return CreateOrder(app_id=app_id, out_trade_no=out_trade_no, user_id=user_id, amount=amount,
                       currency=currency, subject=subject, channel=channel or "",
                       payment_type=payment_type, auth_code=auth_code, notify_url=notify_url or "",
                       payment_token=token, country=country or "")


def parse_create_refund(app_id: str, order_id: str, body: bytes) -> CreateRefund:
    """Parse and check a POST /v1/orders/{order_id}/refunds body (``order_id`` already checked);
    raises ``ValidationError`` listing every problem."""
    data = parse_json_object(body)
    problems = _Problems()
    for name in sorted(set(data) - REFUND_FIELDS):
        problems.add(name, "unknown field")
    for name in REFUND_REQUIRED_FIELDS:
        if name not in data:
            problems.add(name, "is required")
    out_refund_no = _check(problems, data, "out_refund_no", _out_refund_no_problem)
    amount = _check(problems, data, "amount", _amount_problem)
    reason = _check(problems, data, "reason", _reason_problem)
    problems.raise_if_any()
    return CreateRefund(app_id=app_id, order_id=order_id, out_refund_no=out_refund_no,
                        amount=amount, reason=reason or "")


def parse_json_object(body: bytes) -> dict[str, Any]:
    """A JSON object from UTF-8 bytes, refusing duplicate keys at any depth."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise _body_error(body, e) from None
    if not isinstance(data, dict):
        raise ValidationError("the body must be a JSON object", field=BODY_FIELD)
    if _may_have_duplicate_keys(body, data):
        _raise_on_duplicate_key(body)
    return data


def _body_error(body: bytes, error: orjson.JSONDecodeError) -> ValidationError:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as e:
        return ValidationError(f"the body is not UTF-8 (byte {e.start})", field=BODY_FIELD)
    return ValidationError(f"the body is not valid JSON: {error.msg} at char {error.pos}",
                           field=BODY_FIELD)


def _may_have_duplicate_keys(body: bytes, data: Any) -> bool:
    """False only when ``body`` certainly has no duplicate key.

    Every ``:`` in valid JSON is either a key separator or inside a string. Without ``\\u003a``
    escapes, each string's colons are the same before and after decoding, and orjson's compact
    output of ``data`` has one separator per kept key plus the colons of the kept strings. A
    duplicate key drops a key (and the overwritten value's strings), so the body then has strictly
    more colons than the re-serialized data. With an escaped colon present we cannot tell: True.
    """
    if _ESCAPED_COLON_RE.search(body) is not None:
        return True
    return body.count(b":") != orjson.dumps(data).count(b":")


def _raise_on_duplicate_key(body: bytes) -> None:
    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen:
                raise ValidationError("duplicate key in the JSON body", field=key)
            seen[key] = value
        return seen

    json.loads(body, object_pairs_hook=pairs_hook)


def _check(problems: _Problems, data: dict[str, Any], name: str,
           problem_of: Callable[[Any], str]) -> Any:
    """The field's value when present and valid, else None (recording the problem)."""
    if name not in data:
        return None
    value = data[name]
    problem = problem_of(value)
    if problem:
        problems.add(name, problem)
        return None
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _out_trade_no_problem(value: Any) -> str:
    if isinstance(value, str) and OUT_TRADE_NO_RE.fullmatch(value):
        return ""
    return "must be 1-64 of [A-Za-z0-9_-]"


def _out_refund_no_problem(value: Any) -> str:
    if isinstance(value, str) and OUT_REFUND_NO_RE.fullmatch(value):
        return ""
    return "must be 1-64 of [A-Za-z0-9_-]"


def _reason_problem(value: Any) -> str:
    if isinstance(value, str) and len(value) <= REASON_LEN_MAX and value.isprintable():
        return ""
    return f"must be at most {REASON_LEN_MAX} printable characters"


def _user_id_problem(value: Any) -> str:
    if (isinstance(value, str) and 1 <= len(value) <= USER_ID_LEN_MAX and value.isprintable()
            and " " not in value):
        return ""
    return f"must be 1-{USER_ID_LEN_MAX} printable characters without spaces"


def _amount_problem(value: Any) -> str:
    if not _is_int(value):
        return "must be an integer number of minor units"
    if not 1 <= value <= AMOUNT_MINOR_MAX:
        return f"must be between 1 and {AMOUNT_MINOR_MAX}"
    return ""


def _currency_problem(value: Any) -> str:
    if isinstance(value, str) and value in CURRENCY_EXPONENT:
        return ""
    return "must be one of " + ", ".join(sorted(CURRENCY_EXPONENT))


def _subject_problem(value: Any) -> str:
    if isinstance(value, str) and 1 <= len(value) <= SUBJECT_LEN_MAX and value.isprintable():
        return ""
    return f"must be 1-{SUBJECT_LEN_MAX} printable characters"


def _channel_problem(value: Any, channels: Collection[str]) -> str:
    if isinstance(value, str) and value in channels:
        return ""
    return "must be one of " + ", ".join(sorted(channels))


def _region_problem(value: Any) -> str:
    if isinstance(value, str) and REGION_RE.fullmatch(value):
        return ""
    return "must be 1-32 of [a-z0-9-]"


def _notify_url_problem(value: Any) -> str:
    message = f"must be an http or https URL of at most {NOTIFY_URL_LEN_MAX} characters"
    if not isinstance(value, str) or len(value) > NOTIFY_URL_LEN_MAX:
        return message
    if not value.isprintable() or " " in value:
        return message
    try:
        parts = urlsplit(value)
        hostname = parts.hostname
        parts.port  # raises ValueError on a bad port
    except ValueError:
        return message
    if parts.scheme not in ("http", "https") or not hostname:
        return message
    return ""


def _fingerprint_problem(value: Any) -> str:
    if isinstance(value, str) and len(value) <= FINGERPRINT_LEN_MAX:
        return ""
    return f"must be a string of at most {FINGERPRINT_LEN_MAX} characters"


def _ip_problem(value: Any) -> str:
    if isinstance(value, str) and len(value) <= 64:
        try:
            ipaddress.ip_address(value)
            return ""
        except ValueError:
            pass
    return "must be an IPv4 or IPv6 address"


def _check_device(problems: _Problems, device: Any) -> None:
    if not isinstance(device, dict):
        problems.add("device", "must be an object with fingerprint and ip")
        return
    for name in sorted(set(device) - DEVICE_FIELDS):
        problems.add(f"device.{name}", "unknown field")
    for name, problem_of in (("fingerprint", _fingerprint_problem), ("ip", _ip_problem)):
        if name in device and (problem := problem_of(device[name])):
            problems.add(f"device.{name}", problem)


def _country_problem(value: Any) -> str:
    if isinstance(value, str) and COUNTRY_RE.fullmatch(value):
        return ""
    return "must be an ISO 3166 alpha-2 code in capitals, e.g. CN"


def _check_payment(problems: _Problems, payment: Any) -> tuple[str, str, str]:
    """(payment type, auth code, card token) when valid; problems recorded otherwise."""
    if not isinstance(payment, dict):
        problems.add("payment", "must be an object with a type")
        return "", "", ""
    kind = payment.get("type")
    if kind not in PAYMENT_TYPES:
        problems.add("payment.type", "must be one of " + ", ".join(PAYMENT_TYPES))
        return "", "", ""
    for name in sorted(set(payment) - PAYMENT_FIELDS[kind]):
        problems.add(f"payment.{name}", f"unknown field for payment type {kind}")
    if kind == "card":
        token = payment.get("token")
        if not isinstance(token, str) or not PAYMENT_TOKEN_RE.fullmatch(token):
            problems.add("payment.token", "card payments need token: 4-128 of [A-Za-z0-9_-]")
            return kind, "", ""
        return kind, "", token
    if kind != "barcode":
        return kind, "", ""
    auth_code = payment.get("auth_code")
    if not isinstance(auth_code, str) or not AUTH_CODE_RE.fullmatch(auth_code):
        problems.add("payment.auth_code", "barcode payments need auth_code: 10-32 digits")
        return kind, "", ""
    return kind, auth_code, ""


def check_order_id(text: str) -> str:
    """The order id from a path, or ``NotFound`` when it cannot be one of ours."""
    if parse_order_id(text) is None:
        raise NotFound("no such order")
    return text


def check_out_trade_no(text: str | None) -> str:
    """The ``out_trade_no`` query parameter, present and well formed."""
    if text is None:
        raise ValidationError("the out_trade_no query parameter is required", field="out_trade_no")
    if OUT_TRADE_NO_RE.fullmatch(text) is None:
        raise ValidationError("must be 1-64 of [A-Za-z0-9_-]", field="out_trade_no")
    return text
