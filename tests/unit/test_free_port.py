"""free_port hands out ports that nothing on the machine takes by itself, and reserve_port holds
the gateway's port from the start."""
import socket

import pytest

from core.errors import ConfigError
from gateway.local import free_port, port_is_free, reserve_port


def test_free_ports_are_free_distinct_and_below_the_ephemeral_range():
    low, _ = (int(x) for x in open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert all(port_is_free("127.0.0.1", p) for p in ports)
    if low > 21000:
        assert all(20000 <= p < low for p in ports), ports


def test_reserve_port_holds_the_port_and_names_the_setting_when_it_is_taken():
    port = free_port()
    held = reserve_port("127.0.0.1", port, "gateway.port")
    try:
        assert held.getsockname() == ("127.0.0.1", port)
        held.listen()
        assert not port_is_free("127.0.0.1", port)
        with pytest.raises(ConfigError) as e:
            reserve_port("127.0.0.1", port, "gateway.port")
        assert f"gateway.port: 127.0.0.1:{port} is in use" in e.value.detail
        assert "PAYCELL_GATEWAY__PORT" in e.value.detail
    finally:
        held.close()
    with socket.socket() as again:  # closed, the port is free again
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))
