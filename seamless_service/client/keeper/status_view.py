"""`seamless-service tunnel status`: the keeper's status reply, readable or as JSON.

One line per kept connection: host, transport kind, age, idle time, state, calls, and a
few details (the agent's pid and version, how the tunnel carries it, the last error). The
JSON form (`--json`) has the same summary per connection plus the transport's own details.

Times come from the keeper: `idle_for` is the time since its last command ended (not
counting this status request), a connection's `last_used` the time its last call ended.
Imported only by `tunnel status` (the thin client stays light): stdlib only.
"""

from __future__ import annotations

import time
from typing import Any

SUMMARY_FIELDS = ("host", "transport", "age", "idle", "state", "calls")


def ago(seconds: float) -> str:
    """3s, 2m05s, 1h10m: a duration as a person reads it."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s" if seconds % 60 else f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds % 3600 // 60 else f"{seconds // 3600}h"


def _name_parts(name: str) -> tuple[str | None, str | None, str | None]:
    """(kind, host, environment tag) of a pool name `transport:KIND[:HOST[|CONFIG]]#TAG`."""
    base, _, tag = name.partition("#")
    parts = base.split(":", 2)
    if parts[0] != "transport" or len(parts) < 2:
        return None, None, tag or None
    host = parts[2].split("|", 1)[0] if len(parts) > 2 else None
    return parts[1], host, tag or None


def _state(kind: str | None, details: dict[str, Any]) -> str:
    if "error" in details and len(details) == 1:
        return "unknown"           # describe() itself failed
    if kind == "agent":
        tunnel = details.get("tunnel") or {}
        if details.get("connected") and tunnel.get("alive", True):
            return "connected"
        return "disconnected"      # reconnects (and repairs) on its next call
    if kind == "ssh":
        return "per-call"          # one ssh process per call: nothing is kept open
    if kind == "local":
        return "in-process"
    return "-"


def _detail(kind: str | None, details: dict[str, Any]) -> str:
    if kind == "agent":
        words = []
        if details.get("agent_pid") is not None:
            words.append(f"agent pid {details['agent_pid']}")
        version = details.get("agent_version") or details.get("version")
        if version:
            words.append(f"version {version}")
        if details.get("via"):
            words.append(f"via {details['via']}")
        if details.get("repairs"):
            words.append(f"{details['repairs']} repair(s)")
    elif kind == "ssh":
        words = ["rhl-guard"] if details.get("guarded") else []
        if details.get("ssh_sessions") is not None:
            words.append(f"{details['ssh_sessions']} ssh session(s)")
    elif kind == "local":
        words = [str(details["base"])] if details.get("base") else []
    else:   # an object this view does not know: its own words
        words = [f"{k}={v}" for k, v in details.items() if not isinstance(v, (dict, list))]
    if details.get("last_error"):
        words.append(f"last error: {details['last_error']}")
    return ", ".join(words)


def summary(entry: dict[str, Any], now: float) -> dict[str, Any]:
    """What `tunnel status` says about one pool entry (SUMMARY_FIELDS + detail, env)."""
    details = entry.get("details") if isinstance(entry.get("details"), dict) else {}
    kind, host, tag = _name_parts(str(entry.get("name", "")))
    kind = details.get("transport") or kind
    if kind == "local":
        host = "this machine"
    host = details.get("host") or host or str(entry.get("name"))
    created = float(entry.get("created", now))
    last_used = float(entry.get("last_used", created))
    return {
        "host": host, "transport": kind, "age": max(0.0, now - created), "idle": max(0.0, now - last_used),
        "state": _state(kind, details), "calls": details.get("calls"), "env": tag,
        "detail": _detail(kind, details),
    }


def connection_lines(entries: list[dict[str, Any]], now: float) -> list[str]:
    """An aligned header and one line per connection (no trailing spaces)."""
    rows = [summary(entry, now) for entry in entries]
    hosts = [(r["host"], r["transport"]) for r in rows]
    table = [["HOST", "TRANSPORT", "AGE", "IDLE", "STATE", "CALLS", "DETAIL"]]
    for row in rows:
        detail = row["detail"]
        if hosts.count((row["host"], row["transport"])) > 1 and row["env"]:
            # one connection per caller environment: the tag tells them apart
            detail = ", ".join(filter(None, [f"env {row['env']}", detail]))
        table.append([row["host"], row["transport"] or "-", ago(row["age"]), ago(row["idle"]), row["state"],
                      "-" if row["calls"] is None else str(row["calls"]), detail or "-"])
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in table]


def format_status(info: dict[str, Any], now: float | None = None) -> str:
    """The readable form of the keeper's status reply."""
    now = time.time() if now is None else now
    lines = [
        f"tunnel keeper: running, pid {info.get('pid')}, version {info.get('version')}",
        f"  socket:  {info.get('socket')}",
        f"  up {ago(now - float(info.get('started', now)))}, idle {ago(float(info.get('idle_for', 0)))} "
        f"since its last command, exits after {ago(float(info.get('idle_timeout', 0)))} idle",
    ]
    if info.get("current"):
        lines.append("  running: seamless-service " + " ".join(info["current"]))
    entries = info.get("pool") or []
    if not entries:
        lines.append("  connections: none")
    else:
        lines.append(f"  connections: {len(entries)}")
        lines += ["    " + line for line in connection_lines(entries, now)]
    return "\n".join(lines)


def status_json(info: dict[str, Any] | None, now: float | None = None) -> dict[str, Any]:
    """The `--json` form: the keeper's reply, each pool entry with its summary added."""
    now = time.time() if now is None else now
    out: dict[str, Any] = {"running": info is not None, **(info or {})}
    if info is not None:
        out["pool"] = [{**entry, **summary(entry, now)} for entry in info.get("pool") or []]
    return out
