import socket

import pytest

from tests.conftest import NetworkBlocked


def test_outside_connection_is_blocked():
    with pytest.raises(NetworkBlocked):
        socket.create_connection(("management.azure.com", 443), timeout=1)
    with socket.socket() as s, pytest.raises(NetworkBlocked):
        s.connect(("20.50.2.1", 443))


def test_loopback_is_allowed():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=1):
            pass
