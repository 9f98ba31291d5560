"""Which network addresses paycell may call on a merchant's behalf (SSRF guard).

A merchant names the URL paycell POSTs its events to (`notify_url`). Left unchecked, that makes
paycell a proxy into its own network: Redis, the Ray dashboard, a cloud metadata endpoint at
169.254.169.254. Outside local mode every address a target resolves to must be a public unicast
one; `blocked_reason` says why one is not. IPv4-mapped and IPv4-translated IPv6 addresses are
judged by the IPv4 address they carry, so `::ffff:127.0.0.1` is loopback.
"""
from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Ranges `ipaddress` does not flag (or flags only on some Python versions), named here so that
# the answer does not depend on the interpreter.
_EXTRA_BLOCKED: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...] = (
    (ipaddress.ip_network("100.64.0.0/10"), "shared address space (carrier-grade NAT)"),
    (ipaddress.ip_network("192.0.0.0/24"), "IETF protocol assignments"),
    (ipaddress.ip_network("198.18.0.0/15"), "benchmarking"),
    (ipaddress.ip_network("64:ff9b:1::/48"), "local-use IPv4/IPv6 translation"),
    (ipaddress.ip_network("2001:db8::/32"), "documentation"),
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def blocked_reason(ip: IPAddress | str) -> str:
    """Empty when `ip` is a public unicast address; otherwise what it is (loopback, private...)."""
    addr = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    if isinstance(addr, ipaddress.IPv6Address):
        carried = addr.ipv4_mapped or addr.sixtofour or (
            ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF) if addr in _NAT64 else None)
        if carried is not None:
            inner = blocked_reason(carried)
            return f"{inner} (in {addr})" if inner else ""
        if addr.teredo is not None:
            return "Teredo tunnel"
    checks = (("unspecified", addr.is_unspecified), ("loopback", addr.is_loopback),
              ("link-local", addr.is_link_local), ("multicast", addr.is_multicast),
              ("private", addr.is_private), ("reserved", addr.is_reserved),
              ("not globally routable", not addr.is_global))
    for name, hit in checks:
        if hit:
            return name
    for net, name in _EXTRA_BLOCKED:
        if addr.version == net.version and addr in net:
            return name
    return ""


def literal_ip(host: str) -> IPAddress | None:
    """The address when `host` (a URL's hostname, brackets removed) is an IP literal."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
