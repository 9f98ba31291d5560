"""bench.profile's categories of py-spy samples, and its options."""
import pytest

from bench.profile import OTHER, categorize, parse_args

FOLDED = "\n".join([
    "Thread.run (threading.py:982);OrderShard._charge (actors/shard.py:500);"
    "AlipayConnector._call (channels/alipay/connector.py:166);sign (channels/crypto.py:40) 7",
    "Thread.run (threading.py:982);AlipayConnector._post (channels/alipay/connector.py:175);"
    "ClientSession._request (aiohttp/client.py:819) 5",
    "Thread.run (threading.py:982);OrderStore._write (actors/store.py:398);"
    "Redis.execute_command (redis/asyncio/client.py:946) 3",
    "Thread.run (threading.py:982) 2",
    "Thread.run (threading.py:982);ClientSession._request (aiohttp/client.py:819);"
    "StreamWriter.write (aiohttp/http_writer.py:90) 4",
    "RequestHandler.start (aiohttp/web_protocol.py:500);"
    "StreamWriter.write (aiohttp/http_writer.py:90) 6",
    "ShardClient._call_host (actors/client.py:80);HostLink.call (actors/link.py:170) 1",
    "OrderStore._write (actors/store.py:398);LeanRedis.execute (core/resp.py:99) 8",
    "not a sample line",
])


def test_the_innermost_known_frame_decides():
    cats = categorize(FOLDED)
    assert cats == {"RSA2 (the part holding the GIL)": 7,
                    "HTTP client (aiohttp, to the channel)": 5 + 4,
                    "HTTP server (aiohttp web)": 6,
                    "actor calls (Ray; the host links)": 1,
                    "Redis client (redis-py, core/resp.py)": 3 + 8, OTHER: 2}


def test_profile_takes_a_closed_loop_or_an_open_loop_rate() -> None:
    assert parse_args(["--rate", "300"]).rate == 300 and parse_args(["--rate", "300"]).closed is None
    with pytest.raises(SystemExit):
        parse_args(["--rate", "300", "--closed", "64"])
    with pytest.raises(SystemExit):
        parse_args(["--rate", "0"])


def test_hottest_lines_are_the_innermost_frames_with_the_most_samples() -> None:
    from bench.profile import hottest
    folded = "a (x.py:1);b (y.py:2) 3\nc (z.py:3);b (y.py:2) 4\na (x.py:1) 5\nbad line\n"
    assert hottest(folded, 2) == [("b (y.py:2)", 7), ("a (x.py:1)", 5)]
