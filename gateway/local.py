"""The local stack on one machine, all on loopback: a redis-server that paycell owns (append-only
file on, data under `data_dir`), the channel sandboxes, a local Ray cluster and the gateway.

Every child runs in its own session (a terminal's Ctrl-C reaches only the launcher, which then stops
them in order) and gets SIGTERM if the launcher dies (PR_SET_PDEATHSIG). Children are stopped by
their PID, never by name.
"""
from __future__ import annotations

import ctypes
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Sequence

from core.errors import ConfigError
from core.settings import Settings

_PR_SET_PDEATHSIG = 1
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0


def die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass  # not Linux: the launcher's own stop() is then the only cleanup


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def reserve_port(host: str, port: int, setting: str) -> socket.socket:
    """Bind `host:port` now and return the socket, so that nothing started later (Ray's
    processes, the shard hosts' links, outgoing connections) can take the port before the
    server listens on it. `setting` names the setting to change when the port is in use."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise port_in_use(setting, host, port) from e
    return sock


def port_in_use(setting: str, host: str, port: int) -> ConfigError:
    """The error for a configured port something else holds, naming the setting to change."""
    env = "PAYCELL_" + setting.upper().replace(".", "__")
    return ConfigError(f"{setting}: {host}:{port} is in use (set {env})")


# Ports that nothing else on the machine picks by itself: below the kernel's ephemeral range,
# from which bind(0), outgoing connections and Ray's own ports are drawn (its random ones are
# chosen at or above a bind(0) port; its workers bound 33,000-42,000 in bench.restart here), and
# above the ports of well-known services (Redis 6379, 8080, Ray's 10001 client port).
_QUIET_PORTS_FROM = 20000
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_handed_out: set[int] = set()  # a test picks several ports before binding any of them


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free now and that nothing on the machine will take by itself before the
    caller binds it (for tests and benchmarks that pick their ports before starting Ray)."""
    try:
        ephemeral_from = int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_from = 0
    if ephemeral_from - _QUIET_PORTS_FROM >= 1000:
        for _ in range(100):
            port = random.randrange(_QUIET_PORTS_FROM, ephemeral_from)
            if port not in _handed_out and port_is_free(host, port):
                _handed_out.add(port)
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Child:
    """One supervised child process."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         preexec_fn=die_with_parent, env=self.env)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if not self.alive():
            return
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT_S)

    def wait_until(self, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited while starting; see {self.log_path}")
            if ready():
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not become ready ({what}); see {self.log_path}")


def redis_pings(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def http_ok(url: str, timeout_s: float = 0.5) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:  # noqa: S310 (loopback only)
            return int(r.status) == 200
    except OSError:
        return False


def redis_child(settings: Settings, data_dir: Path) -> Child:
    r = settings.redis
    if not port_is_free(r.host, r.port):
        raise port_in_use("redis.port", r.host, r.port)
    rdir = data_dir / "redis"
    rdir.mkdir(parents=True, exist_ok=True)
    argv = [r.server_binary, "--bind", r.host, "--port", str(r.port), "--dir", str(rdir),
            "--appendonly", "yes", "--appendfsync", r.appendfsync, "--save", "",
            "--protected-mode", "yes", "--daemonize", "no", "--io-threads", "1"]
    return Child("redis-server", argv, data_dir / "logs" / "redis.log")


def start_redis(settings: Settings, data_dir: Path) -> Child:
    child = redis_child(settings, data_dir)
    child.start()
    child.wait_until(lambda: redis_pings(settings.redis.host, settings.redis.port), "PING")
    return child


def start_sandbox(settings: Settings, data_dir: Path, extra: Sequence[str] = ()) -> Child:
    sb = settings.sandbox
    if not port_is_free(sb.host, sb.port):
        raise port_in_use("sandbox.port", sb.host, sb.port)
    argv = [sys.executable, "-m", "channels.sandbox", "--host", sb.host, "--port", str(sb.port),
            *extra]
    child = Child("alipay-sandbox", argv, data_dir / "logs" / "sandbox.log")
    child.start()
    child.wait_until(lambda: http_ok(f"{sb.url()}/_sandbox/health"), "health")
    return child


def start_ray(settings: Settings) -> Any:
    """Start (or join) Ray; returns the ray.cluster_utils.Cluster it made for
    ``ray.local_nodes`` > 1 (the caller shuts it down after ray.shutdown()), else None.
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 must be in the environment before `ray` is first
    imported; the CLI and the test session set it, so every node is 127.0.0.1."""
    if os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") != "0" and settings.mode == "local":
        raise ConfigError("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 must be set before Ray starts")
    import ray
    ns = settings.ray.namespace
    cpus = settings.ray.num_cpus or os.cpu_count() or 1
    if settings.ray.address:
        ray.init(address=settings.ray.address, namespace=ns, log_to_driver=False)
        return None
    if settings.ray.local_nodes <= 1:
        ray.init(address="local", include_dashboard=False, namespace=ns, log_to_driver=False,
                 num_cpus=cpus)
        return None
    from ray.cluster_utils import Cluster
    per_node = max(1, cpus // settings.ray.local_nodes)
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": per_node, "include_dashboard": False})
    try:
        for _ in range(settings.ray.local_nodes - 1):
            cluster.add_node(num_cpus=per_node)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, namespace=ns, log_to_driver=False)
    except BaseException:
        cluster.shutdown()
        raise
    return cluster