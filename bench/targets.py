"""The designs the suite measures, each started on free loopback ports with its own Redis and
sandbox (where it needs them), and stopped by PID.

A target exposes ``url`` and ``snapshot()`` (the CPU of all its processes, grouped as in
``bench.procs``). Only one target runs at a time.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import procs
from bench.baselines.work import WorkConfig
from bench.run import Stack, _same_proc
from gateway.local import Child, free_port, http_ok, start_redis, start_sandbox

READY_TIMEOUT_S = 150.0
STOP_GRACE_S = 15.0
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


class PaycellTarget:
    """paycell itself: one ``paycell up`` (bench.run's Stack)."""

    name = "paycell"
    label = "paycell (batched Ray actors)"

    def __init__(self) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="paycell-suite-"))
        self.stack = Stack(self.work)
        self.url = self.stack.url
        self.sandbox_url: str | None = None

    def start(self) -> None:
        self.stack.start()
        self.sandbox_url = self.stack.sandbox_url

    def snapshot(self) -> procs.Snapshot:
        return procs.snapshot(self.stack.pid)

    def stop(self) -> list[int]:
        left = self.stack.stop()
        if not left:
            shutil.rmtree(self.work, ignore_errors=True)
        return left


class BaselineTarget:
    """``python -m bench.baselines.<module>`` with, when ``needs_work``, its own Redis + sandbox."""

    def __init__(self, name: str, label: str, module: str, needs_work: bool,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.name, self.label, self.module = name, label, module
        self.needs_work, self.extra_args = needs_work, extra_args
        self.work = Path(tempfile.mkdtemp(prefix=f"paycell-suite-{name}-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.helpers: list[Child] = []
        self.server: Child | None = None
        self.sandbox_url: str | None = None
        self._tree: procs.Snapshot = {}

    def start(self) -> None:
        argv = [sys.executable, "-m", self.module, "--port", str(self.port), *self.extra_args]
        if self.needs_work:
            argv += self._start_helpers().as_args()
        env = dict(os.environ, **RAY_ENV)
        self.server = Child(self.name, argv, self.work / "server.log", env=env)
        self.server.start()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self.server.alive():
                raise RuntimeError(f"{self.name} exited while starting:\n{self.tail()}")
            if http_ok(self.url + "/healthz"):
                self._tree = self.snapshot()
                return
            time.sleep(0.25)
        raise RuntimeError(f"{self.name} not ready after {READY_TIMEOUT_S:.0f} s:\n{self.tail()}")

    def _start_helpers(self) -> WorkConfig:
        config = WorkConfig(free_port(), free_port(), self.url)
        settings = config.settings()
        self.helpers.append(start_redis(settings, self.work))
        self.helpers.append(start_sandbox(settings, self.work))
        self.sandbox_url = settings.sandbox.url()
        return config

    def snapshot(self) -> procs.Snapshot:
        assert self.server is not None
        return procs.snapshot(self.server.pid, extra_roots=[c.pid for c in self.helpers])

    def tail(self, lines: int = 25) -> str:
        return procs.log_tail(self.work / "server.log", lines)

    def stop(self) -> list[int]:
        """Server first (SIGTERM, then SIGKILL), then what it left behind, then the helpers."""
        tree = dict(self._tree)
        if self.server is not None and self.server.alive():
            tree.update(self.snapshot())
            self._stop_server()
        left = _kill_left(tree, exclude={c.pid for c in self.helpers})
        for child in reversed(self.helpers):
            child.stop()
        if not left:
            shutil.rmtree(self.work, ignore_errors=True)
        return left

    def _stop_server(self) -> None:
        assert self.server is not None and self.server.proc is not None
        proc = self.server.proc
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _kill_left(tree: procs.Snapshot, exclude: set[int]) -> list[int]:
    """SIGTERM, then SIGKILL, the processes of ``tree`` still alive (same PID and start time)."""
    time.sleep(0.5)
    left = [pid for pid, s in tree.items() if pid not in exclude and _same_proc(pid, s)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in left:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(1.0)
        left = [pid for pid in left if _same_proc(pid, tree[pid])]
        if not left:
            break
    return left


def all_targets(serve_replicas: int, serve_max_ongoing: int) -> list:
    """In running order: paycell first (its maximum sets the shared open-loop rate)."""
    serve_args = ("--replicas", str(serve_replicas),
                  "--max-ongoing-requests", str(serve_max_ongoing))
    return [PaycellTarget(),
            BaselineTarget("bare", "bare aiohttp+uvloop (fixed JSON)", "bench.baselines.bare",
                           False),
            BaselineTarget("naive_ray", "aiohttp gateway + 1 Ray actor call per request",
                           "bench.baselines.naive_ray", True),
            BaselineTarget("ray_serve", f"Ray Serve ({serve_replicas} replica(s))",
                           "bench.baselines.serve_app", True, serve_args)]
