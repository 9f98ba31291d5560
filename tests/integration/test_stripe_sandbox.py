"""The Stripe sandbox's request rules over raw HTTP (no SDK, no Ray, no Redis): authentication,
API version, validation that is never saved under an idempotency key, replays, key conflicts and
the 409 for a key whose first request is still running, and the cancel fence."""
from __future__ import annotations

import asyncio
import uuid
from typing import Any, AsyncIterator

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from channels.sandbox.app import create_sandbox_app, sandbox_of
from channels.sandbox.engine import SandboxConfig
from channels.sandbox.knobs import Knobs
from channels.sandbox.stripe import SECRET_KEY
from channels.stripe import forms, transformers as tf

pytestmark = pytest.mark.integration

AUTH = {"Authorization": f"Bearer {SECRET_KEY}"}


@pytest_asyncio.fixture(scope="module")
async def base() -> AsyncIterator[tuple[str, aiohttp.ClientSession, Any]]:
    app = create_sandbox_app(SandboxConfig(seed=9, knobs=Knobs(hang_ms=400)), ["stripe"])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    async with aiohttp.ClientSession() as http:
        try:
            yield f"http://127.0.0.1:{runner.addresses[0][1]}/stripe", http, sandbox_of(app, "stripe")
        finally:
            await runner.cleanup()


def _create(order_id: str, amount: int, **over: Any) -> str:
    params: dict[str, Any] = {"amount": amount, "currency": "usd", "confirm": True,
                              "off_session": True, "payment_method": "pm_card_visa",
                              "metadata": {tf.ORDER_KEY: order_id}}
    params.update(over)
    return forms.form_body({k: v for k, v in params.items() if v is not None})


async def _post(base: Any, path: str, body: str, key: str = "",
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any], Any]:
    url, http, _ = base
    h = {**AUTH, "Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
    if key:
        h["Idempotency-Key"] = key
    async with http.post(url + path, data=body, headers=h) as resp:
        return resp.status, await resp.json(), resp.headers


async def test_authentication_and_version(base: Any) -> None:
    url, http, _ = base
    async with http.get(url + "/v1/payment_intents/pi_x") as resp:
        assert resp.status == 401
        assert "did not provide an API key" in (await resp.json())["error"]["message"]
    async with http.get(url + "/v1/payment_intents/pi_x",
                        headers={"Authorization": "Bearer sk_test_wrong_key_00000"}) as resp:
        body = await resp.json()
        assert resp.status == 401 and body["error"]["type"] == "invalid_request_error"
        assert "sk_test_wrong_key_00000" not in body["error"]["message"]
    async with http.get(url + "/v1/payment_intents/pi_x",
                        headers={**AUTH, "Stripe-Version": "yesterday"}) as resp:
        assert resp.status == 400
    async with http.get(url + "/v1/payment_intents/pi_x", headers=AUTH) as resp:
        assert resp.status == 404 and (await resp.json())["error"]["code"] == "resource_missing"


async def test_validation_errors_are_not_saved_under_the_key(base: Any) -> None:
    order = f"sb{uuid.uuid4().hex[:12]}"
    status, body, _ = await _post(base, "/v1/payment_intents", _create(order, 49), key=order)
    assert (status, body["error"]["code"]) == (400, "amount_too_small")
    status, body, _ = await _post(base, "/v1/payment_intents",
                                  _create(order, 1200, payment_method=None), key=order)
    assert (status, body["error"]["param"]) == (400, "payment_method")
    status, body, headers = await _post(base, "/v1/payment_intents", _create(order, 1200),
                                        key=order)
    assert (status, body["status"]) == (200, "succeeded")
    assert "Idempotent-Replayed" not in headers
    status, again, headers = await _post(base, "/v1/payment_intents", _create(order, 1200),
                                         key=order)
    assert (status, again["id"], headers["Idempotent-Replayed"]) == (200, body["id"], "true")
    status, conflict, _ = await _post(base, "/v1/payment_intents", _create(order, 1300),
                                      key=order)
    assert (status, conflict["error"]["type"]) == (400, "idempotency_error")
    status, other_endpoint, _ = await _post(base, "/v1/refunds",
                                            forms.form_body({"payment_intent": body["id"]}),
                                            key=order)
    assert (status, other_endpoint["error"]["type"]) == (400, "idempotency_error")
    assert base[2].ledger.get(order).charges == 1


async def test_a_key_still_running_answers_409_and_a_saved_500_is_replayed(base: Any) -> None:
    order = f"sb{uuid.uuid4().hex[:12]}"
    first = asyncio.create_task(_post(base, "/v1/payment_intents", _create(order, 1204),
                                      key=order))
    await asyncio.sleep(0.1)
    status, body, _ = await _post(base, "/v1/payment_intents", _create(order, 1204), key=order)
    assert (status, body["error"]["type"]) == (409, "idempotency_error")
    status, body, _ = await first
    assert (status, body["status"]) == (200, "succeeded")

    broken = f"sb{uuid.uuid4().hex[:12]}"
    status, body, _ = await _post(base, "/v1/payment_intents", _create(broken, 1207), key=broken)
    assert (status, body["error"]["type"]) == (500, "api_error")
    status, body, headers = await _post(base, "/v1/payment_intents", _create(broken, 1200),
                                        key=broken)
    assert (status, body["error"]["type"]) == (400, "idempotency_error")
    status, body, headers = await _post(base, "/v1/payment_intents", _create(broken, 1207),
                                        key=broken)
    assert (status, headers["Idempotent-Replayed"]) == (500, "true")
    assert base[2].ledger.get(broken).charges == 0


async def test_the_fence_holds_the_key_against_a_late_charge(base: Any) -> None:
    order = f"sb{uuid.uuid4().hex[:12]}"
    status, fence, _ = await _post(base, "/v1/payment_intents",
                                   forms.form_body(tf.fence_params(order)), key=order)
    assert (status, fence["status"]) == (200, "requires_payment_method")
    status, canceled, _ = await _post(base, f"/v1/payment_intents/{fence['id']}/cancel",
                                      forms.form_body(tf.cancel_params()), key="c1")
    assert (status, canceled["status"]) == (200, "canceled")
    status, late, _ = await _post(base, "/v1/payment_intents", _create(order, 1200), key=order)
    assert (status, late["error"]["type"]) == (400, "idempotency_error")
    status, again, _ = await _post(base, f"/v1/payment_intents/{fence['id']}/cancel", "",
                                   key="c2")
    assert (status, again["error"]["code"]) == (400, "payment_intent_unexpected_state")
    assert (base[2].ledger.get(order).status.value, base[2].ledger.get(order).charges) == (
        "CLOSED", 0)
