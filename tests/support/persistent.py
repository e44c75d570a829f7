"""The `persistent` op in-process, and rhl-ps-persistent's own rows to compare it with."""

from __future__ import annotations

from seamless_service.agent.context import AgentContext
from seamless_service.agent.ops import handler
from seamless_service.protocol import validate_args

EXTRA = ("bytes", "bytes_measured", "bytes_state", "bytes_error")  # fields only our rows have


def persistent(ctx: AgentContext, **args) -> list[dict]:
    """The rows of the agent's `persistent` op on `ctx`."""
    return handler("persistent")(ctx, validate_args("persistent", args))["rows"]


def helper_rows(sandbox, paths, level=0, file=None, marker=None) -> list[dict]:
    """The rows of the installed `rhl-ps-persistent --json` on the same paths."""
    argv = ["rhl-ps-persistent", "--json", *map(str, paths), "--level", str(level)]
    if file:
        argv += ["--file", file]
    if marker:
        argv += ["--marker", marker]
    return sandbox.helper_ndjson(*argv)


def strip(rows: list[dict]) -> list[dict]:
    """Our rows without the fields rhl-ps-persistent does not have."""
    return [{k: v for k, v in row.items() if k not in EXTRA} for row in rows]
