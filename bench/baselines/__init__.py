"""Baselines for the benchmark suite (bench.suite): the same paid-order work through simpler
designs. Each module runs as its own process: ``python -m bench.baselines.<name> --port P ...``.

* ``bare``: aiohttp + uvloop answering a fixed JSON (the ceiling of one HTTP hop);
* ``naive_ray``: aiohttp + uvloop gateway (auth), then one Ray actor call per request to an async
  actor doing the writes and the charge;
* ``serve_app``: the same work as one Ray Serve deployment behind Serve's HTTP proxy.

``work`` holds the order work they share.
"""
