"""The hot path's Redis client against redis-py, in one run: client CPU per command.

  python -m bench.redis_client [--commands 4000] [--rounds 2]

Starts its own redis-server (as `paycell up` does: append-only file, appendfsync always) on a
free loopback port, and in this process runs the same commands through redis-py (the
BlockingConnectionPool client paycell builds for everything else, actors.factory.redis_client)
and through core.resp.LeanRedis, alternating, `--rounds` times:
  * commit: the shape of a shard's group commit, one script call (EVALSHA) writing two keys of
    about 600 bytes;
  * nonce: SET key 1 NX EX 360, as the gateway claims a request's nonce;
each with 1 command in flight and with 16 (callers awaiting at once, as a host's shards and a
gateway's requests do). It prints, per client, the client process's CPU per command (user +
system, of this process only: redis-server's CPU is not in it), commands/s, and the lean client's
socket writes per command. The figure that carries over to paycell is the CPU ratio.
"""
from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import uvloop

from actors.factory import redis_client
from core.resp import LeanRedis, LuaScript
from core.settings import load_settings
from gateway.local import free_port, start_redis

COMMIT_LUA = "for i = 1, #KEYS do redis.call('SET', KEYS[i], ARGV[i]) end return {}"
RECORD = b"x" * 600


async def measure(call: Callable[[int], Awaitable[Any]], commands: int, inflight: int
                  ) -> tuple[float, float]:
    """(CPU us per command, commands/s) for `commands` calls, `inflight` at a time."""
    async def caller(first: int) -> None:
        for i in range(first, commands, inflight):
            await call(i)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(caller(c) for c in range(inflight)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return cpu * 1e6 / commands, commands / wall


async def run(port: int, commands: int, rounds: int) -> None:
    settings = load_settings(env={}, overrides={"redis": {"port": port}})
    py = redis_client(settings)
    lean = LeanRedis("127.0.0.1", port)
    py_script, lean_script = py.register_script(COMMIT_LUA), LuaScript(COMMIT_LUA)
    calls: dict[str, dict[str, Callable[[int], Awaitable[Any]]]] = {
        "commit": {
            "redis-py": lambda i: py_script(keys=[f"o:{i}", f"i:{i}"], args=[RECORD, RECORD]),
            "lean": lambda i: lean.evalsha(lean_script, [f"o:{i}", f"i:{i}"], [RECORD, RECORD])},
        "nonce": {
            "redis-py": lambda i: py.set(f"n:{time.time_ns()}:{i}", b"1", nx=True, ex=360),
            "lean": lambda i: lean.execute("SET", f"n:{time.time_ns()}:{i}", b"1", "NX",
                                           "EX", 360)},
    }
    await py.ping()
    await lean.execute("PING")
    print(f"{'command':7} {'in flight':>9} {'client':>9} {'CPU us/cmd':>11} {'cmds/s':>8} "
          f"{'writes/cmd':>10}")
    for what, clients in calls.items():
        for inflight in (1, 16):
            cpu: dict[str, list[float]] = {"redis-py": [], "lean": []}
            for _ in range(rounds):
                for name, call in clients.items():
                    writes = lean.writes
                    us, rate = await measure(call, commands, inflight)
                    cpu[name].append(us)
                    per = f"{(lean.writes - writes) / commands:.2f}" if name == "lean" else "-"
                    print(f"{what:7} {inflight:9} {name:>9} {us:11.1f} {rate:8.0f} {per:>10}")
            ratio = (sum(cpu["redis-py"]) / rounds) / (sum(cpu["lean"]) / rounds)
            print(f"{what:7} {inflight:9} redis-py / lean CPU per command: {ratio:.1f}x")
    await lean.close()
    await py.aclose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--commands", type=int, default=4000)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    assert 100 <= args.commands <= 1_000_000 and 1 <= args.rounds <= 10
    port = free_port()
    settings = load_settings(env={}, overrides={"redis": {"port": port}})
    with tempfile.TemporaryDirectory(prefix="paycell-bench-redis-") as tmp:
        child = start_redis(settings, Path(tmp))
        try:
            uvloop.run(run(port, args.commands, args.rounds))
        finally:
            child.stop()


if __name__ == "__main__":
    main()
