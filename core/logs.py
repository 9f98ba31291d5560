"""Structured logs: one orjson object per line, with paycell's context fields when given.

Log with ``log.info("...", extra={"order_id": ..., "shard": ...})``; never pass keys, signatures
or payer data (auth codes) to a log call.
"""
from __future__ import annotations

import logging
import sys
import time

import orjson

CONTEXT_FIELDS = ("request_id", "order_id", "shard", "channel", "app_id")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name, "msg": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out).decode()


def configure(level: str = "INFO") -> None:
    """Route the `paycell` loggers to stderr as JSON lines (idempotent)."""
    root = logging.getLogger("paycell")
    root.setLevel(level.upper())
    if not any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
        root.propagate = False
