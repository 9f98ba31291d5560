"""Locust users for a running paycell gateway: every task is one signed, paid order.

  locust -f bench/locustfile.py --headless -u 8 -r 8 -t 30s --host http://127.0.0.1:8080

Environment: PAYCELL_BENCH_APP / PAYCELL_BENCH_SECRET (default the local demo app).

`locust` is imported first and nothing here imports aiohttp or redis: gevent's monkey-patching
must come before them (docs/performance.md §7e). So requests are signed inline, with the gateway's
signing string (METHOD, PATH, TIMESTAMP, NONCE, SHA256_HEX(body), each followed by a newline;
HMAC-SHA256 hex under the app secret), instead of importing gateway.client.
"""
from __future__ import annotations

from locust import FastHttpUser, task  # first: gevent monkey-patching

import hashlib
import hmac
import json
import os
import secrets
import time

PATH = "/v1/orders"
AMOUNT_PAID_AT_ONCE = 600   # sandbox: an amount ending in 00 is paid at once
OK_HTTP = (200, 202)
OK_ORDER = ("SUCCEEDED", "PENDING")


def sign(secret: str, method: str, path: str, timestamp: str, nonce: str, body: bytes) -> str:
    message = f"{method}\n{path}\n{timestamp}\n{nonce}\n{hashlib.sha256(body).hexdigest()}\n"
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def order_request(app_id: str, secret: str, out_trade_no: str) -> tuple[dict[str, str], bytes]:
    """Headers and body of one POST /v1/orders with a fresh timestamp and nonce."""
    body = json.dumps({"out_trade_no": out_trade_no, "user_id": "u-locust",
                       "amount": AMOUNT_PAID_AT_ONCE, "currency": "CNY", "subject": "bench",
                       "channel": "alipay",
                       "payment": {"type": "barcode", "auth_code": "28763443825664394"}},
                      separators=(",", ":")).encode()
    timestamp, nonce = str(int(time.time())), secrets.token_hex(16)
    headers = {"Content-Type": "application/json", "X-Paycell-App": app_id,
               "X-Paycell-Timestamp": timestamp, "X-Paycell-Nonce": nonce,
               "X-Paycell-Signature": sign(secret, "POST", PATH, timestamp, nonce, body)}
    return headers, body


class PayingUser(FastHttpUser):
    host = "http://127.0.0.1:8080"

    def on_start(self) -> None:
        self.app_id = os.environ.get("PAYCELL_BENCH_APP", "demo-app")
        self.secret = os.environ.get("PAYCELL_BENCH_SECRET", "demo-secret")
        self.prefix = f"locust-{secrets.token_hex(4)}"
        self.sent = 0

    @task
    def pay(self) -> None:
        self.sent += 1
        headers, body = order_request(self.app_id, self.secret, f"{self.prefix}-{self.sent}")
        with self.client.post(PATH, data=body.decode(), headers=headers, name="POST /v1/orders",
                              catch_response=True) as resp:
            if resp.status_code not in OK_HTTP:
                resp.failure(f"HTTP {resp.status_code}: {(resp.text or '')[:200]}")
                return
            try:
                status = resp.json().get("status")
            except ValueError:
                resp.failure("response is not JSON")
                return
            if status not in OK_ORDER:
                resp.failure(f"order status {status!r}")
            else:
                resp.success()
