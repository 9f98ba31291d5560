"""What reading a channel's callback (notification) shares across channels: the bounded, strict
urlencoded form body and a case-insensitive header lookup. Pure functions.

Whether the callback can be trusted (its signature) and what it says are each channel's own
rules, in its signing and transformers modules.
"""
from __future__ import annotations

import urllib.parse
from typing import Mapping

from channels.base import ProtocolError

CHARSET = "utf-8"


def parse_form(body: bytes, max_bytes: int, channel: str) -> dict[str, str]:
    """An x-www-form-urlencoded utf-8 body as a dict; ProtocolError when it is over `max_bytes`,
    not strict utf-8 / form syntax, or repeats a field."""
    if len(body) > max_bytes:
        raise ProtocolError(f"{channel} notification body too large")
    try:
        pairs = urllib.parse.parse_qsl(body.decode(CHARSET), keep_blank_values=True,
                                       strict_parsing=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError(f"{channel} notification is not a utf-8 form") from None
    form = dict(pairs)
    if len(form) != len(pairs):
        raise ProtocolError(f"{channel} notification repeats a field")
    return form


def header(headers: Mapping[str, str], name: str) -> str:
    """A header by case-insensitive name ("" when absent): works on plain dicts too."""
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), "")
    return value
