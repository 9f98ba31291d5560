"""Test session set-up shared by every suite.

Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER at import: set it before anything imports ray, so
every node of every test cluster is 127.0.0.1.
"""
import os

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
