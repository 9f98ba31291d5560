"""The sandbox process's application: every channel's sandbox, each under its own path prefix.

Alipay answers at the root as well (``/gateway.do``, ``/_sandbox/...``: the first sandbox's paths,
kept), and every channel at ``/<name>/`` with its own ledger, knobs and controls
(``/<name>/_sandbox/ledger``...). A channel's connector is pointed at ``<sandbox url>/<name>``.
"""
from __future__ import annotations

from typing import Iterable

from aiohttp import web

from channels.sandbox.alipay import AlipaySandbox
from channels.sandbox.paypal import PayPalSandbox
from channels.sandbox.qpay import QPaySandbox
from channels.sandbox.stripe import StripeSandbox
from channels.sandbox.wechatpay import WechatPaySandbox
from channels.sandbox.unionpay import UnionPaySandbox
from channels.sandbox.engine import SANDBOX, ChannelSandbox, SandboxConfig, add_control_routes, channel_app

# One line per channel: name -> its sandbox class.
SANDBOXES: dict[str, type[ChannelSandbox]] = {
    "alipay": AlipaySandbox,
    "paypal": PayPalSandbox,
    "qpay": QPaySandbox,
    "stripe": StripeSandbox,
    "wechatpay": WechatPaySandbox,
    "unionpay": UnionPaySandbox,
}


def create_sandbox_app(config: SandboxConfig | None = None,
                       channels: Iterable[str] | None = None) -> web.Application:
    config = config or SandboxConfig()
    names = list(SANDBOXES) if channels is None else list(channels)
    unknown = sorted(set(names) - set(SANDBOXES))
    if unknown:
        raise ValueError(f"no sandbox for {unknown}; known: {sorted(SANDBOXES)}")
    root = web.Application(client_max_size=1_048_576)
    for name in names:
        sandbox = SANDBOXES[name](config)
        root.add_subapp(f"/{name}/", channel_app(sandbox))
        if name == "alipay":                # its historical root paths, same sandbox
            root[SANDBOX] = sandbox
            sandbox.add_routes(root)
            add_control_routes(root)
    return root


def sandbox_of(app: web.Application, name: str) -> ChannelSandbox:
    """The ChannelSandbox object mounted under /<name>/ (for in-process tests)."""
    for resource in app.router.resources():
        sub = getattr(resource, "_app", None)
        if sub is not None and SANDBOX in sub and sub[SANDBOX].name == name:
            return sub[SANDBOX]
    raise KeyError(name)
