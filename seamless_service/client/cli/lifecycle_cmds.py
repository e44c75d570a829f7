"""`seamless-service start | restart | reset`: the service lifecycle (client/lifecycle.py).

Selection: `selected_services(args)` is the one place that turns the flags into resolved
services, so a shared selection helper (e.g. `--local`, `--key`) plugs in there.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ...protocol.keys import is_valid_key, parse_key
from ..errors import OpError, ServiceError, UsageError
from ..lifecycle import (
    START_TIMEOUT,
    LifecycleError,
    check_reset_selection,
    leftovers,
    reset,
    reset_plan,
    restart_service,
    start_service,
)
from ..sconfig import PERSISTENT_SERVICES, Resolved, Selection, cluster_hosts, resolve_service
from .common import add_selection_args, add_transport_args, open_for

PROG = "seamless-service"

START_HELP = """\
Start a service exactly as Seamless would (seamless-config's configuration, launched by
remote-http-launcher's rhl-launch-service on the service's host): the same key, command
line, state file, log and workdir, so a Seamless client started later finds it running
and uses it. Prints `KEY: running on HOST:PORT`. A service that runs already is left as
it is (same pid, same port). While it starts, a progress line goes to stderr; if it
fails, the end of its log is shown and the exit status is 1.

examples:
  seamless-service start --service hashserver
  seamless-service start --service database --cluster mycluster --project myproj --stage s1
"""

RESTART_HELP = """\
Stop, remove the state, start, in one command. The previous run's log is kept as
KEY.log.1. With --service: that service. With --cluster and no --service: every service of
the selection (--project/--stage/...) that was running.

examples:
  seamless-service restart --service hashserver
  seamless-service restart --cluster mycluster --project myproj --stage s1
"""

RESET_HELP = """\
The cold-cache reset of a project (or one stage of it): stop its services, remove their
state, delete its hashserver buffers and its database (markers kept), then check that
nothing is left. --dry-run lists what would be stopped, removed and cleared (with sizes)
and changes nothing; otherwise --yes is required.

examples:
  seamless-service reset --cluster mycluster --project myproj --stage s1 --dry-run
  seamless-service reset --cluster mycluster --project myproj --stage s1 --yes
"""


def add_parsers(sub: argparse._SubParsersAction) -> None:
    def parser(name: str, help_: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, description=text,
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    for name, help_, text, func in (("start", "start a service as Seamless would", START_HELP, run_start),
                                    ("restart", "stop, remove the state, start", RESTART_HELP, run_restart)):
        p = parser(name, help_, text)
        add_selection_args(p)
        p.add_argument("--key", help="the service's key (instead of the selection flags)")
        p.add_argument("--json", action="store_true", help="one JSON object per service")
        p.add_argument("--start-timeout", dest="start_timeout", type=float, default=START_TIMEOUT,
                       metavar="SECONDS", help=f"how long to wait for `running` (default {START_TIMEOUT:g})")
        add_transport_args(p)
        p.set_defaults(func=func)

    p = parser("reset", "cold cache: stop, remove state, clear buffers and database", RESET_HELP)
    add_selection_args(p, services=PERSISTENT_SERVICES)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", dest="dry_run", action="store_true", help="show what would be done; change nothing")
    mode.add_argument("-y", "--yes", action="store_true", help="confirm: stop, remove and delete (required)")
    add_transport_args(p)
    p.set_defaults(func=run_reset)


def _err(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- selection


def _selection_of_key(key: str) -> Selection:
    if not is_valid_key(key):
        raise UsageError(f"invalid key {key!r} (only letters, digits, . _ - allowed; no leading . or -)")
    meta = parse_key(key)
    if not meta:
        raise UsageError(f"{key!r} is not a Seamless service key")
    fields = {name: meta.get(name) for name in ("service", "cluster", "project", "subproject",
                                                "stage", "substage", "queue")}
    return Selection(mode=meta.get("mode") or "rw", **fields)


def _resolve_key(key: str) -> Resolved:
    resolved = resolve_service(_selection_of_key(key), from_cwd=True)
    if resolved.key != key:
        raise UsageError(f"key {key!r} resolves to {resolved.key!r} with this configuration; pass the selection flags")
    return resolved


def selected_services(args: argparse.Namespace, *, running_only: bool = False) -> list[Resolved]:
    """The services a start/restart command acts on. --key or --service: that one; else
    (restart) --cluster with the filters: every service of the selection that runs."""
    if getattr(args, "key", None):
        return [_resolve_key(args.key)]
    if args.service:
        return [resolve_service(Selection.from_args(args), from_cwd=True)]
    if not running_only:
        raise UsageError("--service (or --key) is required")
    if not args.cluster:
        raise UsageError("--service, --key or --cluster is required")
    from .service_cmds import _cluster_rows

    found: list[Resolved] = []
    for host in cluster_hosts(args.cluster, args.frontend_name):
        transport = open_for(host, args)
        try:
            rows = _cluster_rows(transport, args, "server")
        finally:
            transport.close()
        found += [_resolve_key(r["key"]) for r in rows if r.get("status") == "running"]
    if not found:
        _err(f"no running service matched in cluster {args.cluster}; nothing restarted")
    return found


# ---------------------------------------------------------------- start, restart


def _where(resolved: Resolved, value: dict[str, Any]) -> str:
    hostname = resolved.config.get("hostname") if resolved.ssh_host else None
    return f"{hostname or value.get('host')}:{value.get('port')}"


def _report(resolved: Resolved, value: dict[str, Any], as_json: bool) -> int:
    key = value["key"]
    if value["outcome"] == "failed":
        tail = (value.get("log_tail") or "").rstrip("\n")
        _err(f"{key}: failed to start ({value.get('detail') or 'see its log'}); log {value.get('log')}"
             + (":" if tail else ""))
        if tail:
            print(tail, file=sys.stderr, flush=True)
    if as_json:
        print(json.dumps({**value, "ssh_host": resolved.ssh_host, "address": _where(resolved, value)},
                         sort_keys=True), flush=True)
    elif value["outcome"] != "failed":
        if value["launched"]:
            print(f"{key}: running on {_where(resolved, value)}", flush=True)
        else:
            print(f"{key}: already running on {_where(resolved, value)} (pid {value['pid']}); nothing changed",
                  flush=True)
    return 1 if value["outcome"] == "failed" else 0


def _each(args: argparse.Namespace, services: list[Resolved], act) -> int:
    rc = 0
    for resolved in services:
        transport = open_for(resolved.ssh_host, args)
        try:
            value = act(transport, resolved)
        except (LifecycleError, OpError) as exc:
            if len(services) == 1:
                raise
            _err(str(exc))
            rc = 1
            continue
        finally:
            transport.close()
        rc = max(rc, _report(resolved, value, args.json))
    return rc


def run_start(args: argparse.Namespace) -> int:
    services = selected_services(args)
    return _each(args, services, lambda t, r: start_service(t, r.config, timeout=args.start_timeout,
                                                            progress=_progress))


def run_restart(args: argparse.Namespace) -> int:
    services = selected_services(args, running_only=True)

    def act(transport: Any, resolved: Resolved) -> dict[str, Any]:
        value = restart_service(transport, resolved.config, timeout=args.start_timeout, progress=_progress)
        if value.get("rotated_log") and not args.json:
            _progress(f"{value['key']}: previous log kept as {value['rotated_log']}")
        value["launched"] = True  # a restart always says `running on`
        return value

    return _each(args, services, act)


# ---------------------------------------------------------------- reset


def _reset_selection(args: argparse.Namespace) -> tuple[dict[str, Any], list[tuple[str, str, str]], str | None]:
    """(ps filters, data dirs [(service, key, path)], host) of the project/stage."""
    dirs: list[tuple[str, str, str]] = []
    meta: dict[str, Any] = {}
    host: str | None = None
    for service in PERSISTENT_SERVICES:
        sel = Selection.from_args(argparse.Namespace(**{**vars(args), "service": service}))
        try:
            resolved = resolve_service(sel, from_cwd=True)
        except UsageError as exc:
            if "no frontend" in str(exc).lower() or "support" in str(exc).lower():
                continue  # the cluster has no such service
            raise
        meta, host = resolved.meta, resolved.ssh_host
        if resolved.workdir and resolved.workdir != "/tmp":
            dirs.append((service, resolved.key, resolved.local_workdir() or resolved.workdir))
    if not meta:
        raise UsageError("the selected cluster has no hashserver or database")
    filters = {"cluster": meta.get("cluster"), "project": meta.get("project")}
    for name in ("subproject", "stage"):
        if meta.get(name) is not None:
            filters[name] = meta[name]
    check_reset_selection(filters)
    return filters, dirs, host


def _size(n: int | None) -> str:
    if n is None:
        return "size unknown"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def run_reset(args: argparse.Namespace) -> int:
    if not args.dry_run and not args.yes:
        raise UsageError("reset stops services and deletes their data: pass --dry-run to see what, or --yes to do it")
    filters, dirs, host = _reset_selection(args)
    what = " ".join(f"{k}={v}" for k, v in filters.items())
    transport = open_for(host, args)
    try:
        plan = reset_plan(transport, host, filters, dirs)
        if args.dry_run:
            print(f"reset {what} on {host or 'this machine'} would:")
            for row in plan.services:
                print(f"  stop {row['key']} ({row.get('status')}, pid {row.get('pid')})")
            for row in plan.services:
                print(f"  remove the state of {row['key']}")
            for d in plan.dirs:
                if d.state == "absent":
                    print(f"  leave {d.path} ({d.service} data): absent")
                else:
                    print(f"  clear {d.path} ({d.service} data, {d.state}, {_size(d.bytes)})")
            if not plan.services and not any(d.state != "absent" for d in plan.dirs):
                print("  nothing: no service, no data")
            return 0
        rc = reset(transport, plan, lambda line: print(line, flush=True))
        left = leftovers(transport, plan, filters)
    finally:
        transport.close()
    if left:
        for item in left:
            _err(f"still there after reset: {item}")
        return 1
    print(f"reset {what}: no service, no state, no data left")
    return rc
