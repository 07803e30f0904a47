"""Suite-wide guards: no test may reach the network.

Sockets to anything but this machine (loopback, Unix sockets) raise, so a test that would talk to
Azure, a model hub or PyPI fails loudly instead of hanging or passing by luck. torchrun's gloo
rendezvous on 127.0.0.1 stays allowed. Hub libraries are told to stay offline as well, and the
subprocesses the tests start inherit that.
"""

import ipaddress
import os
import socket

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# The tests read the CLI's console as a user's piped output (`train run 2>log`): rich tables at the
# CLI's own width for output that is not a terminal. A terminal size inherited from whoever started
# pytest would wrap them differently; pytest-xdist starts its workers with COLUMNS=80 and LINES=24.
os.environ.pop("COLUMNS", None)
os.environ.pop("LINES", None)


class NetworkBlocked(RuntimeError):
    """A test tried to open a connection off this machine."""


def _is_local(address) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: resolving it would already be network traffic


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_getaddrinfo = socket.getaddrinfo


def _guarded_connect(self, address):
    if not _is_local(address):
        raise NetworkBlocked(f"test tried to connect to {address!r}")
    return _real_connect(self, address)


def _guarded_connect_ex(self, address):
    if not _is_local(address):
        raise NetworkBlocked(f"test tried to connect to {address!r}")
    return _real_connect_ex(self, address)


def _guarded_getaddrinfo(host, *args, **kwargs):
    if host is not None and not _is_local((host if isinstance(host, str) else host.decode(), 0)):
        raise NetworkBlocked(f"test tried to resolve {host!r}")
    return _real_getaddrinfo(host, *args, **kwargs)


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`make test`), the tests that train start first: the workers then end
    together on short tests instead of one waiting for the other's last minute-long test. Each
    worker collects the same order; a serial run keeps the file order."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable


# Modules whose module-scoped fixture is expensive: under pytest-xdist each runs whole on one
# worker, so the fixture is built once (test_compare's trains several pairs). pytest-xdist's own
# xdist_group mark does not take effect with pytest 9 (it renames item._nodeid, which pytest 9 no
# longer reads), hence this scheduler: these modules as one unit, every other test on its own.
KEEP_TOGETHER = {"tests/training/verdict/test_compare.py"}


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class KeepModulesTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if module in KEEP_TOGETHER else nodeid

    return KeepModulesTogether(config, log)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", _guarded_connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", _guarded_getaddrinfo)
    yield

