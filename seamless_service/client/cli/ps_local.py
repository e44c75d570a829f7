"""Rows for `ps --local`: this machine's server-side launcher state, through the agent ops.

With no configuration there are no cluster roots to walk, so persistent information comes
from the workdirs recorded in the hashserver and database state files themselves.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..local import unwrap
from ..rows import merge_rows, persistent_row, process_row

PERSISTENT_SPEC = {
    # service -> (file, marker) as seamless-config asks rhl-ps-persistent
    "hashserver": (None, ".HASHSERVER_PREFIX"),
    "database": ("seamless.db", "seamless.db"),
}


def ps_args(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"side": "server"}
    for name in ("service", "cluster", "project", "subproject", "stage", "substage", "mode", "queue", "status"):
        value = getattr(args, name, None)
        if value is not None:
            out[name] = value
    return out


def local_rows(transport: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    (result,) = transport.batch([("ps", ps_args(args))])
    agent_rows = unwrap(result, host=transport.host)["rows"]
    rows = [process_row(r) for r in agent_rows]
    if args.persistent:
        rows = merge_rows(rows, _persistent_rows(transport, agent_rows, rows))
    if getattr(args, "health", False):
        _attach_health(transport, rows)
    return rows


def _persistent_rows(transport: Any, agent_rows: list[dict], rows: list[dict]) -> list[dict]:
    ops, owners = [], []
    for agent_row, row in zip(agent_rows, rows):
        spec = PERSISTENT_SPEC.get(row.get("service"))
        workdir = agent_row.get("workdir")
        if spec is None or not isinstance(workdir, str) or not workdir:
            continue
        file, marker = spec
        args: dict[str, Any] = {"paths": [workdir], "level": 0}
        if file:
            args["file"] = file
        ops.append(("persistent", args))
        owners.append(row)
    if not ops:
        return []
    out = []
    # One batch: every directory is one op, so a path the policy refuses fails alone.
    for owner, result in zip(owners, transport.batch(ops)):
        if result.get("ok"):
            for prow in result["value"]["rows"]:
                out.append(persistent_row(prow, owner["service"], owner["cluster"],
                                          project=owner.get("project"), subproject=owner.get("subproject"),
                                          stage=owner.get("stage")))
        else:
            err = result.get("error", {})
            owner["persistent_error"] = err.get("message")
    return out


def _attach_health(transport: Any, rows: list[dict]) -> None:
    keys = [r["key"] for r in rows if r.get("process") == "running" and r.get("key")]
    if not keys:
        return
    (result,) = transport.batch([("health", {"keys": keys})])
    services = {s["key"]: s for s in unwrap(result, host=transport.host)["services"]}
    for row in rows:
        if row.get("key") in services:
            row["health"] = services[row["key"]]
