"""`seamless-service start | restart | reset`: the service lifecycle (client/lifecycle/).

Selection (`selected_services`): start and restart take the per-service commands' target
flags (cli/targets.py: same --local/--key flags, validation and refusals), but a start
needs seamless-config's launch configuration of the service (Resolved.config: tools.yaml
command line, workdir, key), so the service is always resolved through the configuration:

* `--service S` (+ --cluster/--project/--stage/..., or seamless.yaml): as Seamless resolves it;
* `--key K` with `--cluster C` or `--local`: resolved from the key's own fields
  (config/resolve.py resolve_key); the resolution must give back K;
* `--local` chooses this machine (the local transport, no ssh). Seamless launches a
  service on this machine only when its cluster is the configuration's `local_cluster` (or
  its frontend is localhost, #35), so a service the configuration puts on another host is
  refused in one line instead of being launched where no Seamless client would look;
* restart with no --service/--key: every *running* service of the selection, several at
  once: `--cluster C` asks C's hosts, `--local` this machine's launcher state, filtered by
  --project/--stage/... as `ps --local` filters (the same rows `stop --local` selects, but
  several are allowed, as for `restart --cluster`). Each is resolved from its key before
  anything is stopped.

A key the configuration cannot resolve (e.g. the demo's cluster `demo`, which has no
clusters.yaml entry) is one line saying so and what to do, exit 2, nothing touched.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable

from ..errors import OpError, UsageError
from ..lifecycle.control import (
    START_TIMEOUT,
    LifecycleError,
    check_reset_selection,
    leftovers,
    reset,
    reset_plan,
    restart_service,
    start_service,
)
from ..config.resolve import KeyNotResolvable
from ..config.selection import PERSISTENT_SERVICES, Resolved
from ..transport.base import Transport
from .common import TransportOptions, add_selection_args, add_transport_args, open_for, selection_of
from .targets import add_target_args, check_target_args, local_rows

PROG = "seamless-service"

START_HELP = """\
Start a service exactly as Seamless would (seamless-config's configuration, launched by
remote-http-launcher's rhl-launch-service on the service's host): the same key, command
line, state file, log and workdir, so a Seamless client started later finds it running
and uses it. Prints `KEY: running on HOST:PORT`. A service that runs already is left as
it is (same pid, same port). While it starts, a progress line goes to stderr; if it
fails, the end of its log is shown and the exit status is 1.

--local starts it on this machine (refused if the configuration puts it on another
host); --key KEY names it by its key, resolved through the configuration, on the host
--cluster or --local chooses.

examples:
  seamless-service start --service hashserver
  seamless-service start --service database --cluster mycluster --project myproj --stage s1
  seamless-service start --local --service hashserver --project myproj
  seamless-service start --key hashserver-mycluster-rw-myproj --cluster mycluster
"""

RESTART_HELP = """\
Stop, remove the state, start, in one command. The previous run's log is kept as
KEY.log.1. With --service or --key: that service (resolved through the configuration, as
start does). With --cluster or --local and no --service/--key: every service of the
selection (--project/--stage/...) that was running, on that cluster or on this machine.

examples:
  seamless-service restart --service hashserver
  seamless-service restart --cluster mycluster --project myproj --stage s1
  seamless-service restart --local --project myproj
  seamless-service restart --local --key hashserver-mycluster-rw-myproj
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


LOCAL_HELP = {
    "start": "on this machine (local transport, no ssh); refused if the configuration puts the "
             "service on another host",
    "restart": "this machine: with --service/--key that service (refused if the configuration puts it "
               "elsewhere), else every running service of this machine that --project/--stage/... "
               "match, as `ps --local` selects rows",
}
KEY_HELP = ("the launcher's key (as `resolve` prints it, `ps --wide` shows it), resolved through the "
            "configuration from its own fields, on the host chosen by --cluster or --local; excludes "
            "--service/--project/...")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    def parser(name: str, help_: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, description=text,
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    for name, help_, text, func in (("start", "start a service as Seamless would", START_HELP, run_start),
                                    ("restart", "stop, remove the state, start", RESTART_HELP, run_restart)):
        p = parser(name, help_, text)
        add_selection_args(p)
        p.add_argument("--json", action="store_true", help="one JSON object per service")
        p.add_argument("--start-timeout", dest="start_timeout", type=float, default=START_TIMEOUT,
                       metavar="SECONDS", help=f"how long to wait for `running` (default {START_TIMEOUT:g})")
        add_target_args(p, title="where, or which service by key", local_help=LOCAL_HELP[name], key_help=KEY_HELP)
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


def _unresolvable(exc: KeyNotResolvable, verb: str, *, several: bool) -> UsageError:
    """One line: why the key does not resolve, and what to do instead."""
    from ...demo.launch import DEMO_KEYS

    if exc.key in DEMO_KEYS:
        todo = ("it is a demo service: `seamless-service demo start` starts it" if verb == "start" else
                f"it is a demo service: `seamless-service stop --local --key {exc.key}`, then "
                "`seamless-service demo start`")
    else:
        todo = (f"define cluster {exc.cluster!r} in ~/.seamless/clusters.yaml, or pass the selection flags "
                "(--service/--cluster/--project/...)")
    if several:  # one of the running services of a selection: the others wait for it
        todo += "; or narrow the selection with --project/--stage/...; nothing was restarted"
    return UsageError(f"cannot {verb} {exc.key}: {verb} needs the service's configuration, and its key does "
                      f"not resolve: {exc.reason}; {todo}")


def _by_key(key: str, args: argparse.Namespace, verb: str, *, several: bool = False) -> Resolved:
    try:
        return args.config.resolve_key(key, cluster=args.cluster, frontend_name=args.frontend_name)
    except KeyNotResolvable as exc:
        raise _unresolvable(exc, verb, several=several) from None


def _on_chosen_host(resolved: Resolved, args: argparse.Namespace) -> Resolved:
    """--local: the service must be one Seamless launches on this machine."""
    if args.local and resolved.ssh_host is not None:
        raise UsageError(f"--local: the configuration puts {resolved.key} on {resolved.ssh_host}, not on this "
                         f"machine (Seamless launches the {resolved.service} of cluster {resolved.cluster!r} "
                         "there): drop --local, or select the local cluster")
    return resolved


def selected_services(args: argparse.Namespace, *, running_only: bool = False) -> list[Resolved]:
    """The services a start/restart command acts on, all resolved before anything is done
    (see the module docstring). `running_only` (restart): without --service/--key, the
    running services of the --cluster or --local selection."""
    verb = "restart" if running_only else "start"
    check_target_args(args)
    if args.key is not None:
        return [_on_chosen_host(_by_key(args.key, args, verb), args)]
    if args.service:
        return [_on_chosen_host(args.config.resolve(selection_of(args), from_cwd=True), args)]
    if not running_only:
        raise UsageError("--service is required (or --key KEY with --cluster C or --local)")
    if args.local:
        rows, where = local_rows(args), "on this machine"
    elif args.cluster:
        rows, where = _cluster_server_rows(args), f"in cluster {args.cluster}"
    else:
        raise UsageError("--service, --key KEY, --cluster or --local is required")
    running = [row["key"] for row in rows if row.get("status") == "running"]
    found = [_on_chosen_host(_by_key(key, args, verb, several=True), args) for key in running]
    if not found:
        _err(f"no running service matched {where}; nothing restarted")
    return found


def _cluster_server_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    from .service_cmds import cluster_rows

    rows: list[dict[str, Any]] = []
    for host in args.config.cluster_hosts(args.cluster, args.frontend_name):
        transport = open_for(host, TransportOptions.from_args(args))
        try:
            rows += cluster_rows(transport, args, "server")
        finally:
            transport.close()
    return rows


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


def _each(args: argparse.Namespace, services: list[Resolved],
          act: Callable[[Transport, Resolved], dict[str, Any]]) -> int:
    rc = 0
    for resolved in services:
        transport = open_for(resolved.ssh_host, TransportOptions.from_args(args))
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

    def act(transport: Transport, resolved: Resolved) -> dict[str, Any]:
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
        sel = selection_of(args, service=service)
        try:
            resolved = args.config.resolve(sel, from_cwd=True)
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
    transport = open_for(host, TransportOptions.from_args(args))
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
