"""Which connectors exist: an explicit dict of factories, nothing discovered or imported by name.

A factory builds a connector from the settings, the notify URL the channel should call back and an
optional shared aiohttp session (None: the connector opens its own on first use).
"""
from __future__ import annotations

from typing import Callable

import aiohttp

from channels.alipay import AlipayConfig, AlipayConnector
from channels.base import Connector
from channels.unionpay import UnionPayConfig, UnionPayConnector
from core.settings import Settings

ConnectorFactory = Callable[[Settings, str, "aiohttp.ClientSession | None"], Connector]


def alipay_factory(settings: Settings, notify_url: str,
                   session: aiohttp.ClientSession | None) -> Connector:
    return AlipayConnector(AlipayConfig.from_settings(settings, notify_url), session)


def unionpay_factory(settings: Settings, notify_url: str,
                     session: aiohttp.ClientSession | None) -> Connector:
    return UnionPayConnector(UnionPayConfig.from_settings(settings, notify_url), session)


CONNECTORS: dict[str, ConnectorFactory] = {
    "alipay": alipay_factory,
    "unionpay": unionpay_factory,
}


def build_connector(name: str, settings: Settings, notify_url: str,
                    session: aiohttp.ClientSession | None = None) -> Connector:
    try:
        factory = CONNECTORS[name]
    except KeyError:
        raise KeyError(f"no connector named {name!r}; known: {sorted(CONNECTORS)}") from None
    return factory(settings, notify_url, session)
