"""`health`: is a running service really serving? pid, TCP port and HTTP handshake.

For each service: the status derived as `ps` derives it (agent.statefiles), then
* `pid_alive`: the pid is usable, alive, not a zombie, and plausibly the service
  (agent.procinfo: a reused pid is not the service's);
* `port_open`: the state's `port` accepts a TCP connection on the state's
  `network_interface` (a wildcard or `localhost` bind is reached at the loopback address);
* `http_ok`: the launcher's own handshake answers 2xx: `GET /healthcheck` on `port`, or,
  for daskserver / pure-daskserver (tools.yaml: `handshake: {path: health, port_name:
  dashboard_port}`), `GET /health` on `dashboard_port`.

Without `keys` every service whose derived status is `running` is checked. With `keys`
every key is reported, in argument order; a key that is not running (or has no state
file: status "missing") is not probed, so `port_open`/`http_ok` stay null, and `healthy`
is false. Services are probed concurrently, each within `timeout` seconds in all, so N
services cost about one timeout rather than N.
"""

from __future__ import annotations

import http.client
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ...rhl import connect_host, handshake_target, usable_pid, usable_port
from .. import procinfo
from ..context import AgentContext
from ..statefiles import list_state_files, server_row

MAX_WORKERS = 32


def _row_for(ctx: AgentContext, key: str) -> dict[str, Any]:
    path = ctx.server_dir / f"{key}.json"
    if not path.exists():
        return {"key": key, "status": "missing", "error": f"no state file for {key}"}
    return server_row(path)


def check(row: dict[str, Any], path: Path, timeout: float) -> dict[str, Any]:
    """Health of one service row; never raises for an unhealthy service."""
    deadline = time.monotonic() + timeout
    status = row.get("status")
    entry: dict[str, Any] = {
        "key": row["key"], "status": status, "pid": None, "host": None, "port": None,
        "pid_alive": False, "port_open": None, "http_ok": None, "http_status": None, "healthy": False,
    }
    errors: list[str] = []
    if status in ("error", "missing"):
        entry["error"] = row.get("error")
        return entry
    pid = entry["pid"] = usable_pid(row.get("pid"))
    if pid is not None:
        try:
            mtime: float | None = os.stat(path).st_mtime
        except OSError:
            mtime = None
        proc = procinfo.check_service(pid, row, mtime)
        entry["pid_alive"] = proc.alive and proc.is_service
        if proc.alive and not proc.is_service:
            errors.append(f"pid belongs to another process ({proc.problem})")
    if status != "running":  # not probed: a stale row's port may belong to someone else now
        entry["error"] = "; ".join([f"service is {status}", *errors])
        return entry

    host = entry["host"] = connect_host(row.get("network_interface"))
    port = entry["port"] = usable_port(row.get("port"))
    if port is None:
        entry["port_open"] = False
        errors.append(f"no usable port in the state file: {row.get('port')!r}")
    else:
        try:
            with socket.create_connection((host, port), timeout=max(deadline - time.monotonic(), 0.01)):
                entry["port_open"] = True
        except (OSError, ValueError) as exc:  # ValueError: a host name idna cannot encode, a NUL
            entry["port_open"] = False
            errors.append(f"connect to {host}:{port}: {exc}")

    hpath, hport = handshake_target(row)
    if hport is None or (hport == port and not entry["port_open"]):
        entry["http_ok"] = False  # nothing to ask (the refused connect is already reported)
    else:
        shown = f"[{host}]" if ":" in host else host
        entry["handshake"] = f"http://{shown}:{hport}{hpath}"
        ok, http_status, error = _http_get(host, hport, hpath, deadline)
        entry["http_ok"], entry["http_status"] = ok, http_status
        if error:
            errors.append(error)

    entry["healthy"] = bool(entry["pid_alive"] and entry["port_open"] and entry["http_ok"])
    if errors:
        entry["error"] = "; ".join(errors)
    return entry


def _http_get(host: str, port: int, path: str, deadline: float) -> tuple[bool, int | None, str | None]:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return False, None, f"no time left for GET {path} within the timeout"
    conn = http.client.HTTPConnection(host, port, timeout=remaining)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        response.read(65536)  # drain a little so the server is not reset mid-write
        status = response.status
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return False, None, f"GET {path} on {host}:{port}: {type(exc).__name__}: {exc}"
    finally:
        conn.close()
    if 200 <= status < 300:
        return True, status, None
    return False, status, f"GET {path} on {host}:{port} answered HTTP {status}"


def run(ctx: AgentContext, args: dict[str, Any]) -> dict[str, Any]:
    timeout: float = args["timeout"]
    keys: list[str] | None = args["keys"]
    if keys is None:
        rows = [server_row(p) for p in list_state_files(ctx.server_dir)]
        rows = [row for row in rows if row.get("status") == "running"]
    else:
        rows = [_row_for(ctx, key) for key in keys]
    if not rows:
        return {"services": []}
    paths = [ctx.server_dir / f"{row['key']}.json" for row in rows]
    with ThreadPoolExecutor(max_workers=min(len(rows), MAX_WORKERS), thread_name_prefix="health") as pool:
        services = list(pool.map(lambda rp: check(rp[0], rp[1], timeout), zip(rows, paths)))
    return {"services": services}
