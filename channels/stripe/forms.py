"""Stripe's form encoding: parameters as ``application/x-www-form-urlencoded`` with bracketed
nesting (``metadata[paycell_order_id]=…``, ``expand[0]=data.source``, ``created[gte]=…``), both
ways (the connector encodes, the sandbox decodes). Pure functions.
"""
from __future__ import annotations

import urllib.parse
from typing import Any, Iterable, Mapping

MAJOR_KEYS_MAX = 64                  # top-level names one decoded request may carry


def encode_params(params: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Stripe's bracketed form encoding: nested mappings as a[b], sequences as a[0], a[1];
    booleans as true/false; None is left out."""
    pairs: list[tuple[str, str]] = []
    for key, value in params.items():
        name = f"{prefix}[{key}]" if prefix else str(key)
        if value is None:
            continue
        if isinstance(value, Mapping):
            pairs.extend(encode_params(value, name))
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                if isinstance(item, Mapping):
                    pairs.extend(encode_params(item, f"{name}[{i}]"))
                else:
                    pairs.append((f"{name}[{i}]", _scalar(item)))
        else:
            pairs.append((name, _scalar(value)))
    return pairs


def _scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    assert isinstance(value, (str, int)), type(value)
    return str(value)


def decode_params(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """The inverse of encode_params for the shapes Stripe uses: a=1, a[b]=1, a[b][c]=1, a[]=1 and
    a[0]=1 (lists). ValueError for a malformed or repeated name."""
    out: dict[str, Any] = {}
    for name, value in pairs:
        head, _, rest = name.partition("[")
        if not head or len(out) > MAJOR_KEYS_MAX:
            raise ValueError(f"bad parameter name {name!r}")
        path = [head] + (rest[:-1].split("][") if rest else [])
        if rest and not rest.endswith("]"):
            raise ValueError(f"bad parameter name {name!r}")
        node: Any = out
        for i, part in enumerate(path):
            last = i == len(path) - 1
            is_list = i + 1 < len(path) and (path[i + 1] == "" or path[i + 1].isdigit())
            if isinstance(node, list):
                if last:
                    node.append(value)
                    break
                raise ValueError(f"unsupported nesting in {name!r}")
            if last:
                if part in node:
                    raise ValueError(f"repeated parameter {name!r}")
                node[part] = value
            else:
                node = node.setdefault(part, [] if is_list else {})
                if not isinstance(node, (list, dict)) or isinstance(node, list) != is_list:
                    raise ValueError(f"conflicting parameter {name!r}")
    return out


def form_body(params: Mapping[str, Any]) -> str:
    return urllib.parse.urlencode(encode_params(params))
