"""seamless-service: see and manage Seamless services on remote servers through a per-server agent.

Public Python API (loaded on first use):

    from seamless_service import Host, Fleet, ServiceError

    with Host("cluster-frontend") as host:
        rows = host.ps(status="running")

`Host`, `Fleet`, `FleetResult`, `Rows` (client/api.py), `open_transport`
(client/transport/open.py), `Transport` (client/transport/base.py: what every transport
offers), `MockTransport` (client/transport/mock.py: answers from a function, for tests:
`Host("h", transport=MockTransport(handler))`) and the exceptions `ServiceError`, `ConnectionFailed`, `AuthFailed`,
`ProtocolMismatch`, `OpError`, `UsageError` (client/errors.py).

Kept import-light on purpose: the CLI imports this package on every call, so nothing
heavy (rpyc, paramiko, sshtunnel) is imported here; the names above are resolved by the
module `__getattr__` only when asked for.
"""

__version__ = "0.1.0"

_LAZY = {
    "Host": "client.api",
    "Fleet": "client.api",
    "FleetResult": "client.api",
    "Rows": "client.api",
    "open_transport": "client.transport.open",
    "Transport": "client.transport.base",
    "MockTransport": "client.transport.mock",
    "ServiceError": "client.errors",
    "ConnectionFailed": "client.errors",
    "AuthFailed": "client.errors",
    "ProtocolMismatch": "client.errors",
    "OpError": "client.errors",
    "UsageError": "client.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> object:  # no `typing` import: this module must stay cheap
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
