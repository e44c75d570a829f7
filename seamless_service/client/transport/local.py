"""The `local` transport: ops run in-process on this machine's launcher state, no SSH at all.

Requests still go through the same msgpack encoding and dispatch as on a remote agent,
so the local cluster gets exactly the rows and errors a remote one would.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

from ...agent.context import AgentContext
from ...agent.dispatch import handle
from ...protocol import ProtocolError, decode_reply, encode_request
from ..errors import OpError, ProtocolMismatch, UsageError
from .base import Op, Result, Transport
from .inputs import FileSnapshot


def local_context(read: FileSnapshot | None = None) -> AgentContext:
    """This machine's context, under the path policy configured for the agent here
    (`<launcher dir>/agent/config.yaml`): running an op in-process must not be a way
    around a stricter policy the operator set. UsageError if that config is bad.

    `read`, if given, gets the files the context is made from (config.yaml, a data-roots
    file), each stat-ed before it is read: an edit in between shows as a change later."""
    from ...agent import lifecycle, paths

    read = FileSnapshot() if read is None else read
    # Absolute: a relative REMOTE_HTTP_LAUNCHER_DIR means the cwd of the command that made
    # this context, not of a later one that reuses it (in the tunnel keeper's pool).
    base = Path(os.path.abspath(paths.base_dir()))
    read.add([paths.agent_dir(base) / lifecycle.CONFIG_NAME])
    try:
        spec = lifecycle.load_config(base).get("path_policy", lifecycle.DEFAULT_POLICY_SPEC)
        if spec.startswith("data-roots:"):
            read.add([os.path.expanduser(spec.split(":", 1)[1])])
        _, spec = lifecycle.resolve_options(base)
        policy = lifecycle.load_policy(spec)
    except lifecycle.ConfigError as exc:
        raise UsageError(str(exc)) from None
    return AgentContext(base=base, policy=policy)


class LocalTransport(Transport):
    """Ops run in this process, on this machine's launcher state (see the module docstring)."""

    name = "local"

    def __init__(self, ctx: AgentContext | None = None):
        self._inputs = FileSnapshot()
        self.ctx = ctx or local_context(self._inputs)
        self.host = "localhost"

    def stale(self) -> bool:
        """True once a file this transport's policy came from has changed (pool.py)."""
        return self._inputs.changed()

    def describe(self) -> dict[str, Any]:
        """For `tunnel status`: which launcher folder this transport reads."""
        return {"transport": self.name, "base": str(self.ctx.base)}

    def call(self, request: bytes) -> bytes:
        return handle(self.ctx, request)

    def batch(self, ops: Sequence[Op]) -> list[Result]:
        return batch_over(self.call, ops, host=self.host)

    def wait_sizes(self, timeout: float) -> bool | None:
        """The sizes are measured here, by the sizer the ops started in this context (none
        started: nothing to wait for, None as for a remote transport)."""
        sizer = self.ctx.extras.get("sizer")  # made by the persistent op (agent/ops/persistent.py)
        return None if sizer is None else bool(sizer.wait_idle(timeout))

    def close(self) -> None:
        self.ctx.close()


def batch_over(call: Callable[[bytes], bytes], ops: Sequence[Op], *, host: str) -> list[Result]:
    """Send one batch through `call(bytes) -> bytes`; return the raw results, in order."""
    try:
        reply = call(encode_request(list(ops)))
        return decode_reply(reply, expected=len(ops))
    except ProtocolError as exc:
        if exc.code == "version_mismatch":
            raise ProtocolMismatch(f"{host}: {exc.message}") from None
        raise OpError(exc.code, exc.message, host) from None


def unwrap(result: Result, *, host: str | None = None) -> Any:
    """The value of one result, or OpError with the agent's code and message."""
    if result.get("ok"):
        return result.get("value")
    error = result.get("error") or {}
    raise OpError(str(error.get("code", "internal")), str(error.get("message", "unknown error")), host)
