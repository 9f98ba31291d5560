"""bench.profile's categories of py-spy samples."""
from bench.profile import OTHER, categorize

FOLDED = "\n".join([
    "Thread.run (threading.py:982);OrderShard._charge (actors/shard.py:500);"
    "AlipayConnector._call (channels/alipay/connector.py:166);sign (channels/crypto.py:40) 7",
    "Thread.run (threading.py:982);AlipayConnector._post (channels/alipay/connector.py:175);"
    "ClientSession._request (aiohttp/client.py:819) 5",
    "Thread.run (threading.py:982);OrderStore._write (actors/store.py:398);"
    "Redis.execute_command (redis/asyncio/client.py:946) 3",
    "Thread.run (threading.py:982) 2",
    "not a sample line",
])


def test_the_innermost_known_frame_decides():
    cats = categorize(FOLDED)
    assert cats == {"RSA2 (the part holding the GIL)": 7,
                    "HTTP client (aiohttp, to the channel)": 5,
                    "Redis client (redis-py)": 3, OTHER: 2}
