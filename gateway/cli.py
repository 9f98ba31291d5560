"""The `paycell` command.

  paycell up                 the whole local stack on embedded defaults (what `make run` calls)
  paycell pay [--amount N]   create and pay one demo order against a running gateway, signed
  paycell curl               print a ready-to-paste signed curl command for POST /v1/orders
  paycell get ORDER_ID       fetch an order
  paycell config             print the effective settings (YAML, secrets masked)
  paycell reconcile --channel alipay [--date YYYY-MM-DD]
                             reconcile a channel's day through the running gateway (operator
                             credentials from ops.*), print progress and the report
"""
from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import socket
import sys
from pathlib import Path
from typing import Any

_LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def _demo_body(amount: int, out_trade_no: str | None = None, *, channel: str | None = None,
               card: str | None = None, currency: str | None = None,
               payment_type: str | None = None) -> dict[str, Any]:
    """A demo order: an Alipay barcode payment, or (--card TOKEN) a card payment that paycell
    routes, or (--type app|native) a prepay; --channel names a channel instead of routing."""
    payment: dict[str, str] = {"type": "barcode", "auth_code": "28763443825664394"}
    if card:
        payment = {"type": "card", "token": card}
    elif payment_type in ("app", "native"):
        payment = {"type": payment_type}
    body: dict[str, Any] = {
        "out_trade_no": out_trade_no or f"demo-{secrets.token_hex(6)}", "user_id": "u-42",
        "amount": amount, "currency": currency or ("USD" if card else "CNY"),
        "subject": "60 gems", "payment": payment}
    if channel:
        body["channel"] = channel
    return body


def _body_from(args: argparse.Namespace) -> dict[str, Any]:
    return _demo_body(args.amount, getattr(args, "out_trade_no", None), channel=args.channel,
                      card=args.card, currency=args.currency, payment_type=args.type)


async def _serve(settings: Any, listener: socket.socket) -> None:
    from aiohttp import web

    from core import heap
    from gateway.app import create_app
    from gateway.client import example_curl

    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.SockSite(runner, listener, backlog=1024)
    await site.start()
    heap.settle()
    url = settings.gateway.base_url()
    app_id, secret = next(iter(settings.app_secrets().items()))
    print(f"\npaycell is up: {url}  (Ctrl-C stops everything)\n", flush=True)
    print(f"Local demo app: {app_id} / {secret}  (local mode only)\n", flush=True)
    print("Pay one order (signed; paste as is within 5 minutes, or run `paycell pay`):\n", flush=True)
    print(example_curl(url, app_id, secret, _demo_body(600)) + "\n", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("stopping ...", flush=True)
    await runner.cleanup()


def cmd_up(args: argparse.Namespace) -> int:
    from core.settings import load_settings
    from gateway.local import reserve_port, start_ray, start_redis, start_sandbox

    from core.logs import configure as configure_logs
    settings = load_settings(args.config)
    configure_logs(settings.log_level)
    data_dir = Path(settings.data_dir).resolve()
    # the gateway's port is bound before anything else starts: Ray and the shard hosts open
    # ports of their own and would otherwise be free to take it while the stack comes up
    listener = reserve_port(settings.gateway.host, settings.gateway.port, "gateway.port")
    children = []
    cluster = None
    try:
        if settings.mode == "local" and not settings.redis.url:
            children.append(start_redis(settings, data_dir))
            print(f"redis-server on {settings.redis.effective_url()} "
                  f"(AOF {settings.redis.appendfsync}, data {data_dir / 'redis'})", flush=True)
        if settings.sandbox.start_local and not settings.alipay.gateway_url:
            children.append(start_sandbox(settings, data_dir))
            print(f"channel sandboxes on {settings.sandbox.url()}/<channel>/", flush=True)
        cluster = start_ray(settings)
        from actors.factory import deploy
        info = deploy(settings)
        print(f"ray: {settings.orders.shard_count} shards in {len(info['hosts'])} shard actors "
              f"on {info['nodes']} node(s)", flush=True)
        import uvloop
        uvloop.run(_serve(settings, listener))
        return 0
    finally:
        listener.close()
        if "ray" in sys.modules:
            import ray
            ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        for child in reversed(children):
            child.stop()
        print("stopped.", flush=True)


def _client_args(args: argparse.Namespace) -> tuple[str, str, str]:
    from core.settings import load_settings
    settings = load_settings(args.config)
    app_id, secret = next(iter(settings.app_secrets().items()))
    return (args.url or settings.gateway.base_url(), args.app or app_id, args.secret or secret)


def cmd_pay(args: argparse.Namespace) -> int:
    import orjson

    from gateway.client import PaycellClient
    url, app_id, secret = _client_args(args)

    async def run() -> int:
        async with PaycellClient(url, app_id, secret) as c:
            status, body = await c.create_order(_body_from(args))
        print(status, orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())
        return 0 if status in (200, 202) else 1
    return asyncio.run(run())


def cmd_get(args: argparse.Namespace) -> int:
    import orjson

    from gateway.client import PaycellClient
    url, app_id, secret = _client_args(args)

    async def run() -> int:
        async with PaycellClient(url, app_id, secret) as c:
            status, body = await c.get_order(args.order_id)
        print(status, orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())
        return 0 if status == 200 else 1
    return asyncio.run(run())


def cmd_curl(args: argparse.Namespace) -> int:
    from gateway.client import example_curl
    url, app_id, secret = _client_args(args)
    print(example_curl(url, app_id, secret, _body_from(args)))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """Print the effective settings (defaults <- file <- PAYCELL_ env) as YAML, secrets masked."""
    import dataclasses

    import yaml

    from core.settings import Secret, load_settings

    def plain(value: Any) -> Any:
        if isinstance(value, Secret):
            return "***"
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    settings = load_settings(args.config)
    print(yaml.safe_dump(plain(dataclasses.asdict(settings)), sort_keys=False), end="")
    return 0


def _progress_line(report: dict[str, Any]) -> str:
    c = report["counts"]
    return (f"[{report['status']}/{report['phase']}] lines parsed {c['lines_parsed']}, "
            f"matched {c['matched']}, settled {c['settled_paid'] + c['settled_closed']} "
            f"(already {c['already_settled']}), refunds {c['refunds_sent']}, "
            f"mismatches {c['mismatches']}, errors {c['errors']}")


def cmd_reconcile(args: argparse.Namespace) -> int:
    """POST the run, poll its report (printing progress as it changes), print the summary."""
    import time
    from datetime import datetime, timedelta, timezone
    from urllib.parse import quote

    import orjson

    from core.settings import load_settings
    from gateway.client import PaycellClient
    settings = load_settings(args.config)
    url = args.url or settings.gateway.base_url()
    operator = args.operator or settings.ops.operator_id
    secret = settings.ops.operator_secret.reveal()
    day = args.date or (datetime.now(timezone.utc).date() - timedelta(days=1)).isoformat()
    path = f"/v1/ops/reconciliation/{quote(args.channel, safe='')}/{quote(day, safe='')}"

    async def run() -> int:
        async with PaycellClient(url, operator, secret) as c:
            status, report, _ = await c.request("POST", path, None)
            if status not in (200, 202):
                print(f"paycell: {status} {report.get('detail', report)}", file=sys.stderr)
                return 1
            run_no, last = report["run"], ""
            deadline = time.monotonic() + args.timeout
            while True:
                line = _progress_line(report)
                if line != last:
                    print(line, flush=True)
                    last = line
                if report["status"] != "running" and report["run"] >= run_no:
                    break
                if time.monotonic() > deadline:
                    print(f"paycell: still running after {args.timeout} s; see GET {path}",
                          file=sys.stderr)
                    return 1
                await asyncio.sleep(args.poll)
                status, report, _ = await c.request("GET", path, None)
                if status != 200:
                    print(f"paycell: {status} {report.get('detail', report)}", file=sys.stderr)
                    return 1
            if args.json:
                print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
            else:
                _, text, _ = await c.request("GET", path + "?format=text", None)
                print(text.get("text", ""), end="")
            return 0 if report["status"] == "complete" else 1
    return asyncio.run(run())


def main(argv: list[str] | None = None) -> int:
    for k, v in _LOOPBACK_ENV.items():  # before anything imports ray
        os.environ.setdefault(k, v)
    p = argparse.ArgumentParser(prog="paycell")
    p.add_argument("--config", help="YAML settings file (default: PAYCELL_CONFIG or built-in)")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("up", help="run the whole local stack").set_defaults(fn=cmd_up)
    sub.add_parser("config", help="print the effective settings").set_defaults(fn=cmd_config)
    for name, fn in (("pay", cmd_pay), ("curl", cmd_curl), ("get", cmd_get)):
        sp = sub.add_parser(name)
        sp.add_argument("--url")
        sp.add_argument("--app")
        sp.add_argument("--secret")
        if name == "get":
            sp.add_argument("order_id")
        else:
            sp.add_argument("--amount", type=int, default=600)
            sp.add_argument("--out-trade-no", dest="out_trade_no")
            sp.add_argument("--channel", help="name the channel (default: paycell chooses)")
            sp.add_argument("--card", metavar="TOKEN",
                            help="a card payment with this saved method, e.g. pm_card_visa")
            sp.add_argument("--currency", help="default CNY (USD with --card)")
            sp.add_argument("--type", choices=("barcode", "app", "native"),
                            help="payment type without --card (default barcode)")
        sp.set_defaults(fn=fn)
    rp = sub.add_parser("reconcile", help="reconcile a channel's day (operator credentials)")
    rp.add_argument("--channel", required=True)
    rp.add_argument("--date", help="YYYY-MM-DD, a UTC day (default: yesterday)")
    rp.add_argument("--url", help="the gateway (default: gateway.* settings)")
    rp.add_argument("--operator", help="operator id (default: ops.operator_id); the secret is "
                                       "ops.operator_secret (PAYCELL_OPS__OPERATOR_SECRET)")
    rp.add_argument("--poll", type=float, default=0.5, help="seconds between progress polls")
    rp.add_argument("--timeout", type=float, default=600.0, help="give up waiting after this")
    rp.add_argument("--json", action="store_true", help="print the JSON report, not the summary")
    rp.set_defaults(fn=cmd_reconcile)
    args = p.parse_args(argv)
    from core.errors import ConfigError
    try:
        return int(args.fn(args))
    except ConfigError as e:
        print(f"paycell: configuration error: {e.detail}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
