"""The `local` transport: ops run in-process on this machine's launcher state, no SSH at all.

Requests still go through the same msgpack encoding and dispatch as on a remote agent,
so the local cluster gets exactly the rows and errors a remote one would.
"""

from __future__ import annotations

from typing import Any

from ..agent.context import AgentContext
from ..agent.dispatch import handle
from ..protocol import ProtocolError, decode_reply, encode_request
from .errors import OpError, ProtocolMismatch, UsageError


def local_context() -> AgentContext:
    """This machine's context, under the path policy configured for the agent here
    (`<launcher dir>/agent/config.yaml`): running an op in-process must not be a way
    around a stricter policy the operator set. UsageError if that config is bad."""
    from ..agent import lifecycle, paths

    base = paths.base_dir()
    try:
        _, spec = lifecycle.resolve_options(base)
        policy = lifecycle.load_policy(spec)
    except lifecycle.ConfigError as exc:
        raise UsageError(str(exc)) from None
    return AgentContext(base=base, policy=policy)


class LocalTransport:
    name = "local"

    def __init__(self, ctx: AgentContext | None = None):
        self.ctx = ctx or local_context()
        self.host = "localhost"

    def call(self, request: bytes) -> bytes:
        return handle(self.ctx, request)

    def batch(self, ops: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        return batch_over(self.call, ops, host=self.host)

    def close(self) -> None:
        self.ctx.close()

    def __enter__(self) -> "LocalTransport":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def batch_over(call, ops: list[tuple[str, dict[str, Any]]], *, host: str) -> list[dict[str, Any]]:
    """Send one batch through `call(bytes) -> bytes`; return the raw results, in order."""
    try:
        reply = call(encode_request(ops))
        return decode_reply(reply, expected=len(ops))
    except ProtocolError as exc:
        if exc.code == "version_mismatch":
            raise ProtocolMismatch(f"{host}: {exc.message}") from None
        raise OpError(exc.code, exc.message, host) from None


def unwrap(result: dict[str, Any], *, host: str | None = None) -> Any:
    """The value of one result, or OpError with the agent's code and message."""
    if result.get("ok"):
        return result.get("value")
    error = result.get("error") or {}
    raise OpError(str(error.get("code", "internal")), str(error.get("message", "unknown error")), host)
