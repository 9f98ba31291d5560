"""Which connectors exist: an explicit dict of factories, nothing discovered or imported by name.

A factory builds a connector from the settings, the notify URL the channel should call back and an
optional shared aiohttp session (None: the connector opens its own on first use).
"""
from __future__ import annotations

from typing import Callable

import aiohttp

from channels.alipay import AlipayConfig, AlipayConnector
from channels.base import Connector
from channels.paypal import PayPalConfig, PayPalConnector
from channels.qpay import QPayConfig, QPayConnector
from channels.stripe import StripeConfig, StripeConnector
from channels.wechatpay import WechatPayConfig, WechatPayConnector
from channels.unionpay import UnionPayConfig, UnionPayConnector
from channels.wire_ids import WireIdConnector, check_fits
from core.ids import WIRE_ID_MAX
from core.settings import Settings

ConnectorFactory = Callable[[Settings, str, "aiohttp.ClientSession | None"], Connector]


def alipay_factory(settings: Settings, notify_url: str,
                   session: aiohttp.ClientSession | None) -> Connector:
    return AlipayConnector(AlipayConfig.from_settings(settings, notify_url), session)


def paypal_factory(settings: Settings, notify_url: str,
                   session: aiohttp.ClientSession | None) -> Connector:
    return PayPalConnector(PayPalConfig.from_settings(settings, notify_url), session)


def qpay_factory(settings: Settings, notify_url: str,
                 session: aiohttp.ClientSession | None) -> Connector:
    check_fits("qpay", settings, WIRE_ID_MAX)
    return WireIdConnector(QPayConnector(QPayConfig.from_settings(settings, notify_url), session),
                           WIRE_ID_MAX)


def stripe_factory(settings: Settings, notify_url: str,
                   session: aiohttp.ClientSession | None) -> Connector:
    return StripeConnector(StripeConfig.from_settings(settings, notify_url), session)


def wechatpay_factory(settings: Settings, notify_url: str,
                      session: aiohttp.ClientSession | None) -> Connector:
    check_fits("wechatpay", settings, WIRE_ID_MAX)
    return WireIdConnector(
        WechatPayConnector(WechatPayConfig.from_settings(settings, notify_url), session),
        WIRE_ID_MAX)


def unionpay_factory(settings: Settings, notify_url: str,
                     session: aiohttp.ClientSession | None) -> Connector:
    return UnionPayConnector(UnionPayConfig.from_settings(settings, notify_url), session)


CONNECTORS: dict[str, ConnectorFactory] = {
    "alipay": alipay_factory,
    "paypal": paypal_factory,
    "qpay": qpay_factory,
    "stripe": stripe_factory,
    "wechatpay": wechatpay_factory,
    "unionpay": unionpay_factory,
}


def build_connector(name: str, settings: Settings, notify_url: str,
                    session: aiohttp.ClientSession | None = None) -> Connector:
    try:
        factory = CONNECTORS[name]
    except KeyError:
        raise KeyError(f"no connector named {name!r}; known: {sorted(CONNECTORS)}") from None
    return factory(settings, notify_url, session)


def enabled_channels(settings: Settings) -> list[str]:
    """Registered channels whose settings section says enabled, in registry order."""
    return [name for name in CONNECTORS if getattr(settings, name).enabled]
