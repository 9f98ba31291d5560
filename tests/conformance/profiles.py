"""How the conformance suite pays through each registered channel: one line per channel.

A profile names the currency and payment type a plain charge uses and the payer credential the
sandbox accepts. Connectors are built exactly as paycell builds them (channels.registry), from
settings whose sandbox URL points at the suite's in-process sandbox.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    channel: str
    currency: str
    payment_type: str
    auth_code: str = ""
    payment_token: str = ""
    sends_refund_notifications: bool = True
    cancel_reverses_paid: bool = True       # False: cancel of a paid trade reports it PAID


PROFILES: tuple[Profile, ...] = (
    Profile("alipay", "CNY", "barcode", auth_code="28763443825664394"),
    Profile("unionpay", "CNY", "card", payment_token="6226090000000048"),
)
