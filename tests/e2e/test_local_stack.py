"""The whole local stack as `make run` starts it: `paycell up` as a process, driven over HTTP.

It pays an order, checks that nothing of ours listens beyond loopback, stops the stack with
Ctrl-C (SIGINT), checks that every process it started is gone, starts it again on the same data
folder and finds the acknowledged order unchanged.
"""
import asyncio
import contextlib
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import AsyncIterator

import aiohttp
import psutil
import pytest

from bench.procs import log_tail
from gateway.client import PaycellClient
from gateway.local import free_port

pytestmark = pytest.mark.e2e
PAYCELL = str(Path(sys.executable).with_name("paycell"))
START_TIMEOUT_S = 90


def stack_env(data_dir: Path, ports: dict[str, int]) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"PAYCELL_DATA_DIR": str(data_dir),
                "PAYCELL_GATEWAY__PORT": str(ports["gateway"]),
                "PAYCELL_REDIS__PORT": str(ports["redis"]),
                "PAYCELL_SANDBOX__PORT": str(ports["sandbox"]),
                "PAYCELL_RAY__NAMESPACE": "paycelle2e"})
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # the CLI must set it by itself
    return env


async def wait_ready(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"paycell up exited while starting:\n{log_tail(log, 40)}"
            try:
                async with s.get(url + "/readyz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.3)
    raise AssertionError(f"the stack never became ready:\n{log_tail(log, 40)}")


def start(data_dir: Path, ports: dict[str, int], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen([PAYCELL, "up"], env=stack_env(data_dir, ports), stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def tree(proc: subprocess.Popen) -> list[psutil.Process]:
    root = psutil.Process(proc.pid)
    return [root, *root.children(recursive=True)]


def stop(proc: subprocess.Popen, procs: list[psutil.Process]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    gone, alive = psutil.wait_procs(procs, timeout=15)
    for p in alive:  # only processes this test started (descendants of its own `paycell up`)
        p.kill()
    assert not alive, f"left running after Ctrl-C: {[p.pid for p in alive]}"


def listeners(procs: list[psutil.Process]) -> list[tuple[str, int, str]]:
    out = []
    for p in procs:
        try:
            for c in p.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    out.append((c.laddr.ip, c.laddr.port, p.name()))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


def is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    mapped = getattr(addr, "ipv4_mapped", None)
    return addr.is_loopback or (mapped is not None and mapped.is_loopback)


@contextlib.asynccontextmanager
async def running_stack(data: Path, ports: dict[str, int], log: Path
                        ) -> AsyncIterator[subprocess.Popen]:
    """`paycell up` until ready; on exit, Ctrl-C and every process it started must be gone."""
    proc = start(data, ports, log)
    procs: list[psutil.Process] = []
    try:
        await wait_ready(f"http://127.0.0.1:{ports['gateway']}", proc, log)
        procs = tree(proc)
        yield proc
    finally:
        stop(proc, procs or (tree(proc) if proc.poll() is None else []))


async def test_make_run_stack_pays_stops_and_keeps_orders(tmp_path):
    ports = {k: free_port() for k in ("gateway", "redis", "sandbox")}
    url = f"http://127.0.0.1:{ports['gateway']}"
    log = tmp_path / "paycell-up.log"
    body = {"out_trade_no": "e2e-1", "user_id": "u-1", "amount": 600, "currency": "CNY",
            "subject": "60 gems", "payment": {"type": "barcode",
                                              "auth_code": "28763443825664394"}}
    async with running_stack(tmp_path / "data", ports, log) as proc:
        async with PaycellClient(url, "demo-app", "demo-secret") as c:
            status, order = await c.create_order(body)
        assert status == 200 and order["status"] == "SUCCEEDED", order
        assert order["channel"] == "alipay" and order["resolved_by"] == "sync"
        # the CLI's own client command works against the same stack
        out = subprocess.run([PAYCELL, "get", order["order_id"], "--url", url],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and order["order_id"] in out.stdout, out.stdout + out.stderr
        found = listeners(tree(proc))
        assert {ports["gateway"], ports["redis"], ports["sandbox"]} <= {p for _, p, _ in found}
        assert all(is_loopback(ip) for ip, _, _ in found), found
    assert "stopped." in log.read_text()

    async with running_stack(tmp_path / "data", ports, log):
        async with PaycellClient(url, "demo-app", "demo-secret") as c:
            s1, again = await c.get_order(order["order_id"])
            s2, replay = await c.create_order(body)
        assert s1 == 200 and again == order
        assert s2 == 200 and replay == order  # idempotent across a restart: no second charge


def test_a_busy_gateway_port_stops_up_before_it_starts_anything(tmp_path):
    """The gateway's port is bound first, so a busy one is a configuration error (exit 2) that
    names the setting, and no redis-server, sandbox or Ray was started for nothing."""
    ports = {k: free_port() for k in ("gateway", "redis", "sandbox")}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ports["gateway"]))
        taken.listen()
        out = subprocess.run([PAYCELL, "up"], env=stack_env(tmp_path / "data", ports),
                             capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"gateway.port: 127.0.0.1:{ports['gateway']} is in use" in out.stderr
    assert "PAYCELL_GATEWAY__PORT" in out.stderr
    assert "redis-server on" not in out.stdout and "ray:" not in out.stdout
    assert not (tmp_path / "data" / "logs").exists()
