"""MerchantNotifier: delivers a shard's merchant events to their notify_url.

Events are written by the commit script in the same atomic call as the final state they report
(actors/store.py), into the shard's Redis due set; the notifier only takes due ones from there,
so a crashed or restarted shard loses none: its next incarnation takes them again (an event
taken and not settled is leased for `lease_ms`, then due again).

One notifier per shard, in the shard's process and event loop: the shard owns its events as it
owns its orders (same hash tag, same Redis slot), delivery needs no extra actor to place, watch
or restart, and it is bounded on its own (`deliveries_inflight_max` POSTs, `queue_max` events
taken) so a slow merchant never takes channel-call slots from payments.

Delivery is at least once: a POST whose 2xx was lost is sent again; merchants deduplicate by
`X-Paycell-Event-Id`. A non-2xx answer, a timeout or a connection error is retried after the next
wait of `retry_schedule_ms`; when the schedule is spent the event is dead. A target that is, or
resolves only to, a loopback, private, link-local... address is refused at once (not retried)
unless `allow_private_targets`; names are checked on the addresses the connection uses (the
connector's resolver filters them), so a DNS answer that changes between a check and the connect
cannot reach an internal address. Redirects are not followed.
"""
from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any, Protocol

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from core.clock import Clock, SystemClock
from core.errors import PaycellError
from core.events import event_headers
from core.netguard import blocked_reason, literal_ip
from core.settings import MerchantNotifySettings

log = logging.getLogger("paycell.merchant_notify")

DELIVERED, DEAD, REFUSED = "delivered", "dead", "refused"
ERROR_TEXT_MAX = 200


class EventStorePort(Protocol):
    async def take_due_events(self, now: float, limit: int, lease_s: float) -> list[str]: ...
    async def get_event(self, event_id: str) -> dict[str, str] | None: ...
    async def event_retry(self, event_id: str, attempts: int, error: str, at: float) -> None: ...
    async def event_settled(self, event_id: str, state: str, attempts: int, error: str,
                            now: float, dead_kept_max: int) -> None: ...
    async def drop_due_event(self, event_id: str) -> None: ...
    async def event_counts(self) -> tuple[int, int]: ...


class TargetRefused(OSError):
    """The target is, or resolves only to, addresses paycell does not call."""


class GuardedResolver(AbstractResolver):
    """Resolves with `inner` and keeps only public unicast addresses (core.netguard); raises
    TargetRefused when none is left. Used by the connector, so the connection goes to an
    address that was checked."""

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self._inner = inner or DefaultResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        kept = [r for r in found if not blocked_reason(r["host"])]
        if not kept:
            why = ", ".join(sorted({f"{r['host']} ({blocked_reason(r['host'])})"
                                    for r in found}))
            raise TargetRefused(f"{host} resolves only to addresses not called: {why}")
        return kept

    async def close(self) -> None:
        await self._inner.close()


def target_problem(url: str, allow_private: bool) -> str:
    """Why `url` is refused before any DNS lookup (an IP literal that is not public), else ""."""
    if allow_private:
        return ""
    host = URL(url).host or ""
    ip = literal_ip(host)
    if ip is None:
        return ""
    reason = blocked_reason(ip)
    return f"{host} is {reason}" if reason else ""


class MerchantNotifier:
    def __init__(self, s: MerchantNotifySettings, shard: int, *, store: EventStorePort,
                 app_secrets: dict[str, str], clock: Clock | None = None,
                 resolver: AbstractResolver | None = None) -> None:
        self._s = s
        self._shard = shard
        self._store = store
        self._secrets = app_secrets
        self._clock = clock or SystemClock()
        self._resolver = resolver     # the unguarded resolver underneath (tests inject one)
        self._schedule = s.retry_schedule()
        self._slots = asyncio.Semaphore(s.deliveries_inflight_max)
        self._taken: set[str] = set()     # taken from Redis, not settled yet
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self.counters = {"events_delivered": 0, "event_attempts_failed": 0, "events_dead": 0,
                         "events_refused": 0, "events_expired": 0}

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start taking due events (idempotent); call from the shard's event loop."""
        if not self._s.enabled or (self._loop_task is not None and not self._loop_task.done()):
            return
        self._loop_task = asyncio.get_running_loop().create_task(self._run())

    def wake(self) -> None:
        """New events were committed: look now rather than at the next poll."""
        self._wake.set()

    async def close(self) -> None:
        for task in [self._loop_task, *self._tasks]:
            if task is not None:
                task.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def stats(self) -> dict[str, Any]:
        try:
            due, dead = await self._store.event_counts()
        except PaycellError:
            due, dead = -1, -1
        return {**self.counters, "events_due": due, "events_dead_kept": dead,
                "events_inflight": len(self._taken)}

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None:
            resolver: AbstractResolver | None = self._resolver
            if not self._s.allow_private_targets:
                resolver = GuardedResolver(self._resolver)
            connector = aiohttp.TCPConnector(limit=self._s.deliveries_inflight_max,
                                             resolver=resolver)
            self._session = aiohttp.ClientSession(
                connector=connector, trust_env=False,
                timeout=aiohttp.ClientTimeout(total=self._s.request_timeout_ms / 1000))
        return self._session

    # ------------------------------------------------------------------ taking due events
    async def _run(self) -> None:
        poll_s = self._s.poll_ms / 1000
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), poll_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.take_due()
            except PaycellError as e:   # Redis down: the events wait there
                log.warning("shard %d: due events not taken: %s", self._shard, e.code,
                            extra={"shard": self._shard})

    async def take_due(self) -> int:
        """Take due events (up to the free room of the queue) and start their deliveries."""
        room = self._s.queue_max - len(self._taken)
        if room <= 0:
            return 0
        ids = await self._store.take_due_events(self._clock.time(), room,
                                                self._s.lease_ms / 1000)
        started = 0
        for eid in ids:
            if eid in self._taken:
                continue
            self._taken.add(eid)
            task = asyncio.get_running_loop().create_task(self._deliver(eid))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            started += 1
        return started

    # ------------------------------------------------------------------ one delivery
    async def _deliver(self, eid: str) -> None:
        try:
            async with self._slots:
                await self._deliver_once(eid)
        except PaycellError as e:   # the outcome is not recorded: the lease makes it due again
            log.warning("event %s: delivery state not saved: %s", eid, e.code,
                        extra={"shard": self._shard})
        finally:
            self._taken.discard(eid)

    async def _deliver_once(self, eid: str) -> None:
        event = await self._store.get_event(eid)
        if event is None or event.get("state", "pending") != "pending":
            if event is None:
                self.counters["events_expired"] += 1
                log.error("event %s is due but its record is gone (expired)", eid,
                          extra={"shard": self._shard})
            await self._store.drop_due_event(eid)
            return
        attempts = int(event.get("attempts", "0")) + 1
        state, error = await self._post(eid, event)
        now = self._clock.time()
        ctx = {"shard": self._shard}
        if state == DELIVERED:
            self.counters["events_delivered"] += 1
            await self._store.event_settled(eid, DELIVERED, attempts, "", now,
                                            self._s.dead_kept_max)
            return
        if state == REFUSED:
            self.counters["events_refused"] += 1
            log.warning("event %s refused: %s", eid, error, extra=ctx)
            await self._store.event_settled(eid, REFUSED, attempts, error, now,
                                            self._s.dead_kept_max)
            return
        self.counters["event_attempts_failed"] += 1
        if attempts > len(self._schedule):
            self.counters["events_dead"] += 1
            log.error("event %s dead after %d attempts: %s", eid, attempts, error, extra=ctx)
            await self._store.event_settled(eid, DEAD, attempts, error, now,
                                            self._s.dead_kept_max)
            return
        wait_s = self._schedule[attempts - 1]
        log.info("event %s attempt %d failed (%s); next in %.1f s", eid, attempts, error,
                 wait_s, extra=ctx)
        await self._store.event_retry(eid, attempts, error, now + wait_s)
        asyncio.get_running_loop().call_later(wait_s, self._wake.set)

    async def _post(self, eid: str, event: dict[str, str]) -> tuple[str, str]:
        """(delivered | refused | retry, what went wrong)."""
        secret = self._secrets.get(event.get("app_id", ""))
        if secret is None:
            return REFUSED, "the app is no longer configured"
        url = event.get("url", "")
        problem = target_problem(url, self._s.allow_private_targets)
        if problem:
            return REFUSED, problem
        body = event.get("body", "").encode()
        headers = event_headers(secret, eid, int(self._clock.time()), body)
        try:
            async with self._session_now().post(URL(url), data=body, headers=headers,
                                                allow_redirects=False) as resp:
                await resp.content.read(self._s.response_body_max_bytes)
                if 200 <= resp.status < 300:
                    return DELIVERED, ""
                return "retry", f"HTTP {resp.status}"
        except aiohttp.ClientConnectorError as e:
            if isinstance(e.os_error, TargetRefused):
                return REFUSED, str(e.os_error)[:ERROR_TEXT_MAX]
            return "retry", f"connect: {e.os_error.strerror or type(e.os_error).__name__}"
        except aiohttp.InvalidURL as e:
            return REFUSED, f"invalid URL: {e}"[:ERROR_TEXT_MAX]
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            return "retry", type(e).__name__
