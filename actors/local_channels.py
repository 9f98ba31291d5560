"""Channel calls made inside the shard's own process: each shard owns its connectors, their HTTP
connection pool, its charges in flight and its share of routing health.

DESIGN.md puts connectors in a channel actor. Measured on this machine (bench.run, wrk 32
connections), the extra actor hop per charge cost ~390 us of CPU per order and 9% of the
throughput (464 -> 508 orders/s without it), so the connectors live in the shards; per-channel
limits and health are per-shard shares: each shard's QPS limiter allows its 1/shard_count of a
channel's documented rate, and each shard keeps its own success-rate window and circuit breaker
(every shard sees a random slice of the traffic, so each learns the same picture).

Each charge is its own task in the shard, bounded per channel (`channel_charges_inflight_max`:
past it a charge is refused before it is sent). A charge the router does not admit (circuit
open, rate limit reached) is refused the same way: NotSent, certainly not charged. What a shard
restart loses is "outcome unknown", resolved by query.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

import aiohttp

from channels.base import (Capabilities, ChannelError, ChannelResult, ChargeRequest, Connector,
                           NotSent, OutcomeUnknown, RefundRequest, RefundResult)
from channels.registry import build_connector, enabled_channels
from channels.routing import Attempt, Payment, Router, policy_from_settings
from core.settings import Settings
from core.states import Fact


def _with_qps(caps: Capabilities, qps_max: int) -> Capabilities:
    return dataclasses.replace(caps, qps=qps_max) if qps_max > 0 else caps


def attempt_of(res: ChannelResult | ChannelError) -> Attempt:
    if isinstance(res, (NotSent, OutcomeUnknown)):
        return Attempt.FAULT
    if isinstance(res, ChannelResult) and res.fact in (Fact.PAID, Fact.WAITING):
        return Attempt.SUCCESS
    return Attempt.DECLINED


class LocalChannelPort:
    def __init__(self, settings: Settings, notify_url_for: dict[str, str]) -> None:
        self._settings = settings
        self._notify_urls = notify_url_for
        self._session: aiohttp.ClientSession | None = None
        self._connectors: dict[str, Connector] = {}
        self._inflight_max = settings.orders.channel_charges_inflight_max
        self._inflight: dict[str, int] = {}
        self._enabled = enabled_channels(settings)
        capabilities = {name: _with_qps(build_connector(name, settings, "").capabilities,  # no I/O
                                        getattr(settings, name).qps_max)
                        for name in self._enabled}
        self._capabilities = capabilities
        self.router = Router(policy_from_settings(settings.routing, settings.orders.shard_count),
                             capabilities)

    def _connector(self, channel: str) -> Connector:
        """The channel's connector on this shard's pooled session (created inside the loop)."""
        connector = self._connectors.get(channel)
        if connector is None:
            if self._session is None:
                limit = self._settings.alipay.connections_max
                self._session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=limit, limit_per_host=limit))
            connector = build_connector(channel, self._settings,
                                        notify_url=self._notify_urls.get(channel, ""),
                                        session=self._session)
            self._connectors[channel] = connector
        return connector

    def route(self, payment: Payment, exclude: tuple[str, ...] = ()) -> list[str]:
        """Channels for an order that names none, best first (NoChannel / ChannelsBusy)."""
        return self.router.candidates(payment, exclude)

    def takes(self, channel: str, payment: Payment) -> bool:
        return channel in self._enabled and self.router.takes(channel, payment)

    def admit(self, channel: str) -> bool:
        """Take the channel's rate-limit token (and half-open probe) for a charge about to be
        created; False: refuse the order now, before anything is stored."""
        return channel in self._enabled and self.router.admit(channel)

    async def charge(self, channel: str, req: ChargeRequest, admitted: bool = False) -> ChannelResult:
        if channel not in self._enabled:
            raise NotSent(f"{channel}: not enabled")
        if self._inflight.get(channel, 0) >= self._inflight_max:
            raise NotSent(f"{channel}: {self._inflight_max} charges already in flight")
        if not admitted and not self.router.admit(channel):
            raise NotSent(f"{channel}: circuit open or at its rate limit")
        connector = self._connector(channel)
        self._inflight[channel] = self._inflight.get(channel, 0) + 1
        started = time.monotonic()
        res: ChannelResult | ChannelError | None = None
        try:
            try:
                res = await connector.charge(req)
            except ValueError as e:   # connectors refuse what they cannot take before sending
                raise NotSent(f"{channel}: {e}") from None
            return res
        except ChannelError as e:
            res = e
            raise
        finally:
            self._inflight[channel] -= 1
            if res is not None:
                self.router.record(channel, attempt_of(res), (time.monotonic() - started) * 1000)

    async def query(self, channel: str, order_id: str, currency: str) -> ChannelResult:
        return await self._connector(channel).query(order_id, currency)

    async def cancel(self, channel: str, order_id: str) -> ChannelResult:
        return await self._connector(channel).cancel(order_id)

    def capabilities(self, channel: str) -> Capabilities | None:
        """The channel's capabilities (refund window, partial refunds), None if not enabled."""
        return self._capabilities.get(channel)

    async def refund(self, channel: str, req: RefundRequest) -> RefundResult:
        """One refund call (no charge rate-limit token: refunds are few); a connector's refusal
        before sending is NotSent."""
        if channel not in self._enabled:
            raise NotSent(f"{channel}: not enabled")
        try:
            return await self._connector(channel).refund(req)
        except ValueError as e:
            raise NotSent(f"{channel}: {e}") from None

    async def refund_query(self, channel: str, order_id: str, refund_id: str,
                           currency: str) -> RefundResult:
        return await self._connector(channel).refund_query(order_id, refund_id, currency)

    def stats(self) -> dict[str, Any]:
        return {"routing": self.router.snapshot(), "inflight": dict(self._inflight)}
