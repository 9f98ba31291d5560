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
    # False: the channel has no call that stops a payment waiting on the payer's funds (PayPal's
    # PENDING capture): cancel raises OutcomeUnknown and the payment stays waiting.
    cancel_closes_waiting: bool = True


PROFILES: tuple[Profile, ...] = (
    Profile("alipay", "CNY", "barcode", auth_code="28763443825664394"),
    Profile("paypal", "USD", "card", payment_token="8kk8451t", cancel_closes_waiting=False),
    Profile("qpay", "CNY", "barcode", auth_code="910123456789012345",
            sends_refund_notifications=False),
    Profile("stripe", "USD", "card", payment_token="pm_card_visa", cancel_reverses_paid=False),
    Profile("wechatpay", "CNY", "barcode", auth_code="134567890123456789"),
    Profile("unionpay", "CNY", "card", payment_token="6226090000000048"),
)
