"""The client facade over shard actor handles: caches handles, re-resolves after an actor error,
and turns Ray's errors into paycell's (the model is ray.util.queue.Queue's wrapper).

Ray never retries a call to a shard (max_task_retries=0): a failed call answers 503, and the
client retries with the same out_trade_no, which the shard makes idempotent. With
`gateway.host_links` (the default) the calls to a host go over its direct link (actors/link.py),
found through Ray once per host incarnation; a lost link fails its calls the same way (503).
"""
from __future__ import annotations

import asyncio
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError

from actors.link import HostLink, LinkLost, RemoteError
from actors.names import host_count, host_of, reconciler_actor_name, shard_host_name
from actors.reconcile_match import RefundSettlement, Settlement
from channels.base import Notification
from core.errors import Unavailable
from core.order import CreateOrder
from core.refund import CreateRefund
from core.settings import Settings

_RAY_FAILURES = (RayActorError, RayError, GetTimeoutError, ValueError)
# Calls that change nothing, so one lost with its link is asked again once on a fresh link (the
# restarted host's, found through Ray): host pings and the shards' reads. Creates, notifications
# and long polls are not: their client retries (503), with its key.
_REPEATABLE_SHARD_METHODS = frozenset({"ping", "get", "find", "list_refunds", "stats"})
REPLY_POLL_S = 1.0  # long poll for replies a shard had not ready when its batch answered
LINK_OPEN_WAIT_S = 10.0   # asking a (restarting) host for its link: at most this long, then 503
LINK_OPEN_RETRY_S = 0.2


class _Handles:
    def __init__(self, namespace: str) -> None:
        self._namespace = namespace
        self._cache: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        handle = self._cache.get(name)
        if handle is None:
            handle = ray.get_actor(name, namespace=self._namespace)  # raises ValueError if absent
            self._cache[name] = handle
        return handle

    def forget(self, name: str) -> None:
        self._cache.pop(name, None)


class ShardClient:
    """What the gateway uses to reach the shards, through the actors that host them."""

    def __init__(self, settings: Settings) -> None:
        self._set = settings.orders.set_name
        self._timeout_s = settings.gateway.shard_call_timeout_ms / 1000
        self._reply_wait_s = settings.gateway.shard_reply_wait_ms / 1000
        self._handles = _Handles(settings.ray.namespace)
        self.hosts = host_count(settings.orders)
        self._use_links = settings.gateway.host_links
        self._links: dict[int, HostLink] = {}
        self._linking: dict[int, asyncio.Future[HostLink]] = {}
        self.link_calls = 0       # observability: calls that went over a host link
        self.links_opened = 0
        self.links_dropped = 0    # links given up after a call heard nothing (see _call_host)
        self._closed = False

    def host_of(self, shard: int) -> int:
        return host_of(shard, self.hosts)

    async def _call_host(self, host: int, method: str, *args: Any) -> Any:
        if not self._use_links:
            return await self._ray_call(host, method, *args)
        repeatable = method == "ping" or (
            method == "call" and len(args) > 1 and args[1] in _REPEATABLE_SHARD_METHODS)
        link: HostLink | None = None
        sent = 0.0
        try:
            for attempt in (1, 2):
                link = self._links.get(host)
                if link is None or link.closed:
                    link = await self._open_link(host)
                self.link_calls += 1
                sent = asyncio.get_running_loop().time()
                try:
                    return await asyncio.wait_for(link.call(method, *args), self._timeout_s)
                except LinkLost:
                    if not repeatable or attempt == 2:
                        raise
            raise AssertionError("unreachable")
        except asyncio.TimeoutError:
            if link is not None and link.silent_since(sent):
                # not a byte from the host for a whole call timeout: gone without a FIN (a lost
                # node, a partition) or hung. Drop the link, so the next call asks Ray, which
                # knows whether the host restarted elsewhere.
                self._drop_link(host, link)
            raise Unavailable(f"shard host {host} did not answer in time",
                              retry_after_s=1) from None
        except (LinkLost, RemoteError) as e:
            raise Unavailable(f"shard host {host} unavailable ({type(e).__name__}: {e})",
                              retry_after_s=1) from None

    async def _open_link(self, host: int) -> HostLink:
        """The host's link, asked for through Ray (one at a time per host)."""
        pending = self._linking.get(host)
        if pending is None:
            pending = self._linking[host] = asyncio.ensure_future(self._connect(host))
            pending.add_done_callback(lambda _: self._linking.pop(host, None))
        return await asyncio.shield(pending)

    async def _connect(self, host: int) -> HostLink:
        """Ask the host for its link, again while Ray says it is restarting (as Ray itself
        holds calls to a restarting actor), for up to LINK_OPEN_WAIT_S."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + min(LINK_OPEN_WAIT_S, self._timeout_s)
        while True:
            try:
                address, port, token = await self._ray_call(host, "open_link")
                break
            except Unavailable:
                if loop.time() + LINK_OPEN_RETRY_S > give_up:
                    raise
                await asyncio.sleep(LINK_OPEN_RETRY_S)
        link = await HostLink.connect(address, port, token, self._timeout_s)
        if self._closed:          # closed while this link was being opened: do not keep it
            link.close()
            raise Unavailable("the shard client is closed", retry_after_s=1)
        self._links[host] = link
        self.links_opened += 1
        return link

    def _drop_link(self, host: int, link: HostLink) -> None:
        link.close()
        if self._links.get(host) is link:
            del self._links[host]
        self.links_dropped += 1

    def close(self) -> None:
        self._closed = True
        for link in self._links.values():
            link.close()
        self._links.clear()

    async def _ray_call(self, host: int, method: str, *args: Any) -> Any:
        name = shard_host_name(self._set, host)
        try:
            ref = getattr(self._handles.get(name), method).remote(*args)
            return await asyncio.wait_for(ref, self._timeout_s)
        except asyncio.TimeoutError:
            raise Unavailable(f"shard host {host} did not answer in time",
                              retry_after_s=1) from None
        except _RAY_FAILURES as e:
            self._handles.forget(name)
            raise Unavailable(f"shard host {host} unavailable ({type(e).__name__})",
                              retry_after_s=1) from None

    async def _call(self, shard: int, method: str, *args: Any) -> Any:
        return await self._call_host(self.host_of(shard), "call", shard, method, *args)

    async def submit(self, host: int, tickets: list[str], shards: list[int],
                     cmds: list[CreateOrder]) -> list[dict[str, Any] | None]:
        """A batch for one host (any of its shards); None for replies not ready in time."""
        result: list[dict[str, Any] | None] = await self._call_host(
            host, "submit", shards, tickets, cmds, self._reply_wait_s)
        return result

    async def await_replies(self, host: int, tickets: list[str]) -> dict[str, dict[str, Any]]:
        result: dict[str, dict[str, Any]] = await self._call_host(
            host, "await_replies", tickets, REPLY_POLL_S)
        return result

    async def notify_many(self, host: int, _tickets: list[str], shards: list[int],
                          notes: list[Notification]) -> list[bool | None]:
        result: list[bool | None] = await self._call_host(host, "notify_many", shards, notes)
        return result

    async def get(self, shard: int, app_id: str, order_id: str) -> dict[str, Any] | None:
        return await self._call(shard, "get", app_id, order_id)

    async def find(self, shard: int, app_id: str, out_trade_no: str) -> dict[str, Any] | None:
        return await self._call(shard, "find", app_id, out_trade_no)

    async def create_refund(self, shard: int, cmd: CreateRefund) -> dict[str, Any]:
        """One refund per call (refunds are few): {"http", "refund"} or an error reply."""
        result: dict[str, Any] = await self._call(shard, "create_refund", cmd)
        return result

    async def list_refunds(self, shard: int, app_id: str, order_id: str
                           ) -> dict[str, Any] | None:
        return await self._call(shard, "list_refunds", app_id, order_id)

    async def ping(self, shard: int) -> dict[str, Any]:
        return await self._call(shard, "ping")

    async def host_ping(self, host: int) -> dict[str, Any]:
        """The host's own ping (ShardHost.ping): its process, shards and collector pauses."""
        result: dict[str, Any] = await self._call_host(host, "ping")
        return result

    async def settle(self, shard: int, facts: list[Settlement]) -> list[dict[str, Any]]:
        """Reconciliation facts for the shard to apply (OrderShard.settle)."""
        result: list[dict[str, Any]] = await self._call(shard, "settle", facts)
        return result

    async def settle_refunds(self, shard: int, facts: list[RefundSettlement]
                             ) -> list[dict[str, Any]]:
        """Final refund statuses for the shard to apply (OrderShard.settle_refunds)."""
        result: list[dict[str, Any]] = await self._call(shard, "settle_refunds", facts)
        return result

    async def reconcile_close(self, shard: int, order_ids: list[str]) -> list[dict[str, Any]]:
        """Unpaid orders for the shard to close at the channel (OrderShard.reconcile_close)."""
        result: list[dict[str, Any]] = await self._call(shard, "reconcile_close", order_ids)
        return result


class ReconcilerClient:
    """What the gateway uses to reach the SET's Reconciler actor."""

    def __init__(self, settings: Settings) -> None:
        self._name = reconciler_actor_name(settings.orders.set_name)
        self._timeout_s = settings.gateway.shard_call_timeout_ms / 1000
        self._handles = _Handles(settings.ray.namespace)

    async def _call(self, method: str, *args: Any) -> Any:
        try:
            ref = getattr(self._handles.get(self._name), method).remote(*args)
            return await asyncio.wait_for(ref, self._timeout_s)
        except asyncio.TimeoutError:
            raise Unavailable("the reconciler did not answer in time", retry_after_s=1) from None
        except _RAY_FAILURES as e:
            self._handles.forget(self._name)
            raise Unavailable(f"the reconciler is unavailable ({type(e).__name__})",
                              retry_after_s=1) from None

    async def start(self, channel: str, day: str) -> dict[str, Any]:
        """Start (or join) the run of a channel's day; its report so far, or {"error": ...}."""
        result: dict[str, Any] = await self._call("start", channel, day)
        return result

    async def stats(self) -> dict[str, Any]:
        """The reconciler's counters (Reconciler.stats), for /metrics."""
        result: dict[str, Any] = await self._call("stats")
        return result
