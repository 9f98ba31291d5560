"""Money as an integer of minor units plus an ISO 4217 currency. No float anywhere."""
from __future__ import annotations

import re
from dataclasses import dataclass

from core.errors import ValidationError

# Minor-unit exponent per supported currency (ISO 4217).
CURRENCY_EXPONENT: dict[str, int] = {
    "CNY": 2, "USD": 2, "EUR": 2, "HKD": 2, "GBP": 2, "SGD": 2,
    "JPY": 0, "KRW": 0,
}
AMOUNT_MINOR_MAX = 10**12  # one trillion minor units: far beyond any single game payment

_DECIMAL_RE = re.compile(r"^(0|[1-9][0-9]*)(?:\.([0-9]+))?$")


@dataclass(frozen=True, slots=True)
class Money:
    amount: int  # minor units
    currency: str

    def __post_init__(self) -> None:
        assert isinstance(self.amount, int) and not isinstance(self.amount, bool), self.amount
        assert self.currency in CURRENCY_EXPONENT, self.currency

    def to_decimal_str(self) -> str:
        """Major units as a string with exactly the currency's decimals: 600 CNY -> "6.00"."""
        return minor_to_decimal_str(self.amount, self.currency)


def check_currency(currency: object) -> str:
    if not isinstance(currency, str) or currency not in CURRENCY_EXPONENT:
        raise ValidationError("unsupported currency", field="currency")
    return currency


def minor_to_decimal_str(amount: int, currency: str) -> str:
    exp = CURRENCY_EXPONENT[currency]
    sign = "-" if amount < 0 else ""
    whole, frac = divmod(abs(amount), 10**exp)
    if exp == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{frac:0{exp}d}"


def decimal_str_to_minor(text: str, currency: str) -> int:
    """"6.00" CNY -> 600. Rejects more decimals than the currency has, signs and exponents."""
    exp = CURRENCY_EXPONENT[currency]
    m = _DECIMAL_RE.match(text.strip()) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"not a decimal amount: {text!r}")
    whole, frac = m.group(1), m.group(2) or ""
    if len(frac) > exp:
        raise ValueError(f"too many decimals for {currency}: {text!r}")
    return int(whole) * 10**exp + (int(frac.ljust(exp, "0")) if exp else 0)
