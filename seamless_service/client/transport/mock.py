"""`MockTransport(handler)`: a transport that answers every op from a function, for tests.

    def handler(op: str, args: dict) -> dict:
        if op == "ps":
            return {"rows": [{"key": "hashserver-x", "status": "running", "port": 5000}],
                    "token": "t1", "state": "s1"}
        raise ProtocolError(ErrorCode.NOT_FOUND, f"no {op} here")

    with Host("frontend", transport=MockTransport(handler)) as host:   # the Python API
        host.ps()
    cli.main.main(["ps", "--cluster", "c"],                          # the CLI, in-process
                  transport_factory=lambda host: MockTransport(handler, host=host or "localhost"))

A batch goes the way a real one goes (local.py): encoded by protocol/, checked against the
op schemas, each op answered in order, the reply decoded, so the handler gets the
arguments an agent's op would get (defaults filled in) and the caller the same raw
results. What the handler raises becomes that op's error result, as on the agent
(agent/dispatch.py): a ProtocolError keeps its code, an OpError its code and message,
anything else is an `internal` error. Only ConnectionFailed (AuthFailed) and
ProtocolMismatch leave batch() as they are: the host could not answer at all.

`batches` records every batch sent, as [(op, args), ...].
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from ...protocol import ErrorCode, ProtocolError, decode_request, encode_reply, error_result, ok_result
from ...protocol.codec import parse_op_entry
from ...protocol.schema import validate_args
from ..errors import ConnectionFailed, OpError, ProtocolMismatch
from .base import Op, Result, Transport
from .local import batch_over

Handler = Callable[[str, dict[str, Any]], dict[str, Any]]  # (op, args) -> the op's value


class MockTransport(Transport):
    """Answers each op with `handler(op, args)` (see the module docstring)."""

    name = "mock"

    def __init__(self, handler: Handler, *, host: str = "mock"):
        self.handler = handler
        self.host = host
        self.batches: list[list[Op]] = []
        self.closed = False

    def batch(self, ops: Sequence[Op]) -> list[Result]:
        if self.closed:
            raise ConnectionFailed(self.host, "the transport is closed")
        self.batches.append([(str(name), dict(args or {})) for name, args in ops])
        return batch_over(self._call, ops, host=self.host)

    def close(self) -> None:
        self.closed = True

    def describe(self) -> dict[str, Any]:
        return {"transport": self.name, "host": self.host, "batches": len(self.batches)}

    def _call(self, request: bytes) -> bytes:
        try:
            ops = decode_request(request).ops
        except ProtocolError as exc:  # too many ops, too large: refused as a whole, as the agent does
            return encode_reply(error=exc)
        return encode_reply([self._answer(entry) for entry in ops])

    def _answer(self, entry: Any) -> Result:
        try:
            call = parse_op_entry(entry)
            return ok_result(self.handler(call.op, validate_args(call.op, call.args)))
        except (ConnectionFailed, ProtocolMismatch):
            raise  # the host could not answer: the whole batch fails, as on a real transport
        except ProtocolError as exc:
            return error_result(exc)
        except OpError as exc:
            return error_result(ProtocolError(exc.code, exc.message))
        except Exception as exc:  # noqa: BLE001 - one op's failure never fails its neighbours
            return error_result(ProtocolError(ErrorCode.INTERNAL, f"agent error: {type(exc).__name__}: {exc}"))
