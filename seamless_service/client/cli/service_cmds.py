"""`seamless-service resolve | inspect | logs | stop | rm | clear`.

Same flags and the same output as seamless-config's `seamless-service-*` commands, with
one op (or one batch) per host instead of one `ssh HOST rhl-*` per query. Deliberate
differences (numbered as in the README's table), besides those of resolution (client/config/):

* #1   per-service commands reach a remote cluster's frontend (ssh_hostname or hostname),
       never run locally by accident.
* #12  `stop/rm --cluster` honour --project/--subproject/--stage/--substage/--mode/--queue.
* #13  `stop --cluster` passes every row of the cluster, as seamless-service-stop does, but
       a row without a usable pid is reported (`invalid pid` / `not running`) instead of
       aborting the whole batch, and only live pids that are still the service are
       signalled (#17); a dead pid is `already gone` and its state marked stale, as
       rhl-stop says and does.
* #19  a client file marked stale keeps mode 0600 and is replaced atomically (unique temp).
* #20  only keys known not to run any more are marked stale; `missing state` is said so.
* #23  `clear` refuses while the service (or any service inside the directory) runs
       unless --force, and needs --yes.
* #38  `rm` refuses to remove the state of a running service unless --force; the refused
       key keeps both its files.
* `--local` and `--key KEY` name one service without resolving it (cli/targets.py); a
  `--local` selection that matches several services lists them and exits 2.
* `stop` exit status: 1 if any key could not be stopped (permission denied, invalid pid,
  pid belongs to another process, error), not only for permission denied.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterator

from ...protocol.errors import ErrorCode
from ...protocol.schema import MAX_KEYS  # keys in one stop/rm op
from ..errors import OpError, ServiceError, UsageError
from ..config.selection import PERSISTENT_SERVICES
from ..transport.base import Transport
from .common import (TransportOptions, add_selection_args, add_transport_args, call_one, open_for, open_local,
                     selection_of)
from .targets import Target, add_target_args, pick_target, uses_target

PROG = "seamless-service"
LOG_PAGE = 4 << 20           # bytes per `logs` read when printing a whole log
FOLLOW_INTERVAL = 0.5        # seconds between polls of `logs --follow`
CLUSTER_FILTERS = ("project", "subproject", "stage", "substage", "mode", "queue")
NOT_STOPPED_OK = ("missing state",)  # not stopped, but nothing failed either (rhl-stop: exit 0)

RESOLVE_HELP = """\
Print the key, host, workdir, log path and meta of one service as one JSON line (sorted
keys), exactly as seamless-service-resolve does. Like it, the current directory's
seamless.yaml is NOT read unless --workdir is given (so pass --cluster and --project, or
--workdir .). `ssh_hostname` is the host the service runs on (null: this machine).

examples:
  seamless-service resolve --service hashserver --workdir .
  seamless-service resolve --service database --cluster mycluster --project myproj --stage s1
"""

INSPECT_HELP = """\
Print the launcher state file of one service (pid, port, status, workdir, command, ...)
as indented JSON with sorted keys, like seamless-service-inspect.

examples:
  seamless-service inspect --service hashserver
  seamless-service inspect --service jobserver --cluster mycluster --project myproj
  seamless-service inspect --local --service database      (a service of this machine)
  seamless-service inspect --key hashserver-mycluster-rw-myproj --cluster mycluster
"""

LOGS_HELP = """\
Print the log (stdout and stderr) of one service, like seamless-service-logs. The log
stays readable after the service stopped or its state was removed.

examples:
  seamless-service logs --service database --tail 20
  seamless-service logs --service hashserver --follow      (Ctrl-C to stop)
  seamless-service logs --local --service hashserver --tail 5
"""

STOP_HELP = """\
Stop services and mark their local client files stale. With --service, --local or --key: that
one service.
With --cluster and no --service: every service of the cluster that matches
--project/--subproject/--stage/--substage/--mode/--queue. Prints `<key>: <outcome>` per
service, with rhl-stop's words (stopped, already gone, kill required, permission denied,
missing state; `not running` for a row that names no process); exit status 1 if any could
not be stopped.

examples:
  seamless-service stop --service hashserver
  seamless-service stop --cluster mycluster --project myproj
  seamless-service stop --local --service jobserver --stage try
"""

RM_HELP = """\
Remove launcher state files: the server side (on the service's host) and the client side
(on this machine); neither --client nor --server means both. The state of a running
service is not removed (its process would be orphaned) unless --force. Logs are kept.
With --cluster and no --service: every service of the cluster that matches the filters.

examples:
  seamless-service rm --service database --stage s1
  seamless-service rm --client --cluster mycluster --project myproj
  seamless-service rm --key database-mycluster-rw-myproj --cluster mycluster
"""

CLEAR_HELP = """\
Delete all data of a hashserver or database directory (the project directory also holds
every STAGE-* directory below it). The .HASHSERVER_PREFIX layout marker is kept. Needs
--yes, since the data is gone for good. Refused while a service using the directory runs:
stop it first (--force clears anyway, under the running service's feet).

examples:
  seamless-service clear --service hashserver --stage s1 --yes
  seamless-service clear --service database --project myproj --cluster mycluster --yes
  seamless-service clear --local --service hashserver --project tour --yes
"""


def add_parsers(sub: argparse._SubParsersAction) -> None:
    def parser(name: str, help_: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, description=text,
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    p = parser("resolve", "print a service's key, host and workdir (JSON)", RESOLVE_HELP)
    add_selection_args(p, service_required=True)
    p.add_argument("--workdir", metavar="DIR", help="read DIR/seamless.yaml (and its inherited parents)")
    p.set_defaults(func=run_resolve)

    p = parser("inspect", "print a service's launcher state", INSPECT_HELP)
    add_selection_args(p, service_required=True)
    add_target_args(p)
    add_transport_args(p)
    p.set_defaults(func=run_inspect)

    p = parser("logs", "print a service's log", LOGS_HELP)
    add_selection_args(p, service_required=True)
    p.add_argument("--tail", type=int, metavar="N", help="only the last N lines")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing what is appended (Ctrl-C ends)")
    add_target_args(p)
    add_transport_args(p)
    p.set_defaults(func=run_logs)

    p = parser("stop", "stop services", STOP_HELP)
    add_selection_args(p)
    add_target_args(p)
    add_dry_run_arg(p)
    add_transport_args(p)
    p.set_defaults(func=run_stop)

    p = parser("rm", "remove launcher state files", RM_HELP)
    add_selection_args(p)
    p.add_argument("--client", action="store_true", help="only the client file(s) on this machine")
    p.add_argument("--server", action="store_true", help="only the server state file(s)")
    p.add_argument("--force", action="store_true",
                   help="also remove the state of running services (orphans their processes)")
    add_target_args(p)
    add_dry_run_arg(p)
    add_transport_args(p)
    p.set_defaults(func=run_rm)

    p = parser("clear", "delete a hashserver's or database's data", CLEAR_HELP)
    add_selection_args(p)
    p.add_argument("-y", "--yes", action="store_true", help="confirm: delete the data (required)")
    p.add_argument("--force", action="store_true",
                   help="clear even while a service using the directory runs")
    add_target_args(p)
    add_dry_run_arg(p)
    add_transport_args(p)
    p.set_defaults(func=run_clear)


# ---------------------------------------------------------------- helpers


def add_dry_run_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", dest="dry_run", action="store_true",
                        help="say what would be done; change nothing")


def _dry_rows(rows: list[dict[str, Any]], verb: str) -> None:
    if not rows:
        print(f"would {verb} nothing: no service matched", flush=True)
    for row in rows:
        print(f"would {verb} {row['key']} ({row.get('status')}, pid {row.get('pid')})", flush=True)


def _err(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _transport(host: str | None, args: argparse.Namespace) -> Iterator[Transport]:
    transport = open_for(host, TransportOptions.from_args(args))
    try:
        yield transport
    finally:
        transport.close()


def _where(host: str | None) -> str:
    return host or "this machine"


def _chunks(keys: list[str]) -> Iterator[list[str]]:
    for i in range(0, len(keys), MAX_KEYS):
        yield keys[i:i + MAX_KEYS]


def _cluster_filters(args: argparse.Namespace) -> dict[str, Any]:
    """#12: the filters a cluster-wide command honours (only those given)."""
    filters = {"cluster": args.cluster}
    for name in CLUSTER_FILTERS:
        value = getattr(args, name, None)
        if value is not None:
            filters[name] = value
    return filters


def cluster_rows(transport: Transport, args: argparse.Namespace, side: str) -> list[dict[str, Any]]:
    """The `side` rows ("server" or "client") of this host that --cluster and the filters
    select (#12) and that can be acted on by key (cluster-wide stop/rm, restart --cluster)."""
    rows = call_one(transport, "ps", {"side": side, **_cluster_filters(args)})["rows"]
    # error rows (malformed files) and stems that are not keys cannot be acted on by key
    return [r for r in rows if r.get("status") != "error" and r.get("valid_key", True)]


def _write_bytes(data: bytes) -> None:
    if not data:
        return
    sys.stdout.flush()
    out = getattr(sys.stdout, "buffer", None)
    if out is None:
        sys.stdout.write(data.decode("utf-8", "replace"))
        sys.stdout.flush()
        return
    out.write(data)
    out.flush()


# ---------------------------------------------------------------- resolve, inspect, logs


def run_resolve(args: argparse.Namespace) -> int:
    # Defect #3 kept on purpose: like seamless-service-resolve, read seamless.yaml only from
    # --workdir; reading the cwd too would change the output for the same inputs.
    resolved = args.config.resolve(selection_of(args), from_cwd=False)
    print(json.dumps(resolved.resolve_json(), sort_keys=True))
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    target = pick_target(args)
    with _transport(target.host, args) as transport:
        value = call_one(transport, "inspect", {"key": target.key})
    print(json.dumps(value["data"], indent=2, sort_keys=True))
    for note in value.get("unsendable") or ():
        # the agent sent these values as text: the file holds what msgpack cannot carry
        _err(f"note: state file value {note}")
    return 0


def run_logs(args: argparse.Namespace) -> int:
    if args.tail is not None and args.tail < 0:
        raise UsageError("--tail must be >= 0")
    target = pick_target(args)
    key = target.key
    with _transport(target.host, args) as transport:
        if args.tail is not None:
            value = call_one(transport, "logs", {"key": key, "tail": args.tail, "max_bytes": 8 << 20})
            _write_bytes(value["data"])
            if value["truncated"]:
                _err(f"showed only the last {len(value['data'])} bytes of those {args.tail} lines")
            offset = value["next_offset"]
        else:
            offset = _print_whole_log(transport, key)
        if args.follow:
            return _follow(transport, key, offset)
    return 0


def _print_whole_log(transport: Transport, key: str) -> int:
    """Print the log as it is now, in pages; return the offset after it."""
    offset, end = 0, None
    while True:
        value = call_one(transport, "logs", {"key": key, "offset": offset, "max_bytes": LOG_PAGE})
        _write_bytes(value["data"])
        offset = value["next_offset"]
        end = value["size"] if end is None else end
        if not value["data"] or offset >= end or not value["truncated"]:
            return offset


def _sleep(seconds: float) -> bool:
    """Sleep; True if the command was cancelled meanwhile (the keeper's caller went away)."""
    from ..transport.pool import default_pool

    return default_pool.wait_cancelled(seconds)


def _follow(transport: Transport, key: str, offset: int) -> int:
    try:
        while True:
            if _sleep(FOLLOW_INTERVAL):
                return 0
            while True:
                try:
                    value = call_one(transport, "logs", {"key": key, "offset": offset, "max_bytes": LOG_PAGE})
                except OpError as exc:
                    if exc.code == ErrorCode.NOT_FOUND:  # between a removal and a relaunch: keep waiting
                        break
                    raise
                if value["reset"]:
                    _err(f"the log of {key} was truncated or replaced; following it from its start")
                _write_bytes(value["data"])
                offset = value["next_offset"]
                if not value["truncated"]:
                    break
    except KeyboardInterrupt:
        return 0


# ---------------------------------------------------------------- stop


def client_file(key: str) -> Path:
    from ...agent import paths

    return paths.client_dir() / f"{key}.json"


def mark_client_stale(key: str) -> None:
    """Set `"status": "stale"` in this machine's client file of `key`, if there is one.

    The launcher deletes such a file on its next run instead of reusing it. Written like
    seamless-config (json.dumps, key order kept) but #19: the temp file has a unique name
    and the file keeps its mode (0600, as the launcher made it). Problems are reported,
    never fatal.
    """
    path = client_file(key)
    if not path.is_file():
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        _err(f"malformed client state {path}: {exc}")
        return
    except OSError as exc:
        _err(f"could not mark {path} stale: {exc.strerror or exc}")
        return
    if not isinstance(data, dict) or data.get("status") == "stale":
        return
    data["status"] = "stale"
    from ...agent.statefiles import write_state_json

    try:
        write_state_json(path, data)
    except OSError as exc:
        _err(f"could not mark {path} stale: {exc.strerror or exc}")


def _stop_line(result: dict[str, Any]) -> str:
    line = f"{result['key']}: {result['outcome']}"
    extra = []
    if result.get("detail"):
        extra.append(str(result["detail"]))
    if result.get("group_killed"):
        extra.append(f"{result['group_killed']} leftover process(es) of its group killed")
    return line + (f" ({'; '.join(extra)})" if extra else "")


def _report_stop(results: list[dict[str, Any]], host: str | None) -> int:
    """Print `<key>: <outcome>` lines; mark stopped keys' client files stale; the exit status."""
    rc = 0
    for result in results:
        print(_stop_line(result), flush=True)
    for result in results:
        if result.get("stopped"):
            mark_client_stale(result["key"])
        elif result.get("outcome") in NOT_STOPPED_OK:
            _err(f"{result['key']}: no state file on {_where(host)}; its client file was left as it is")
        else:
            rc = 1
    return rc


def run_stop(args: argparse.Namespace) -> int:
    if getattr(args, "dry_run", False):
        return _dry_run_rows(args, "stop")
    if uses_target(args):
        target = pick_target(args)
        with _transport(target.host, args) as transport:
            value = call_one(transport, "stop", {"keys": [target.key]})
        return _report_stop(value["results"], target.host)
    if not args.cluster:
        raise UsageError("--service or --cluster is required (or --local, or --key KEY)")
    rc = 0
    for host in args.config.cluster_hosts(args.cluster, args.frontend_name):
        try:
            with _transport(host, args) as transport:
                # Every row, as seamless-service-stop: the stop op signals only live pids that
                # are still the service (#13/#17) and marks dead ones stale (`already gone`).
                keys = [r["key"] for r in cluster_rows(transport, args, "server")]
                if not keys:  # say so: silence would read as "stopped what you asked for"
                    _err(f"{_where(host)}: no service matched; nothing stopped")
                results: list[dict[str, Any]] = []
                for chunk in _chunks(keys):
                    results += call_one(transport, "stop", {"keys": chunk})["results"]
        except ServiceError as exc:
            _err(str(exc))
            rc = 1
            continue
        rc = max(rc, _report_stop(results, host))
    return rc


# ---------------------------------------------------------------- rm


def _report_rm(results: list[dict[str, Any]], side: str, where: str) -> tuple[int, set[str]]:
    """Print like rhl-rm, but a `not found` says which side on which machine (rm of both
    sides printed `KEY: not found` twice); return (exit status, keys refused because they run)."""
    rc, refused = 0, set()
    for result in results:
        key, outcome = result["key"], result.get("outcome", "")
        for path in result.get("removed") or []:
            print(f"removed {path}", flush=True)
        if outcome == "not found":
            missing = "server state file" if side == "server" else "client file"
            print(f"{key}: not found (no {missing} on {where})", flush=True)
        elif outcome.startswith("refused"):
            refused.add(key)
            rc = 1
            _err(f"{key}: {outcome.replace('or force)', 'or pass --force)')}; nothing removed")
        elif outcome != "removed":
            rc = 1
            _err(f"{key}: {side} state: {outcome}")
        if result.get("warning"):
            _err(f"{key}: warning: {result['warning']}")
    return rc, refused


def _rm_on(transport: Transport, keys: list[str], *, side: str, force: bool, where: str) -> tuple[int, set[str]]:
    rc, refused = 0, set()
    flags = {"server": True} if side == "server" else {"client": True}
    for chunk in _chunks(keys):
        value = call_one(transport, "rm", {"keys": chunk, "force": force, **flags})
        chunk_rc, chunk_refused = _report_rm(value["results"], side, where)
        rc, refused = max(rc, chunk_rc), refused | chunk_refused
    return rc, refused


def _dry_run_rows(args: argparse.Namespace, verb: str) -> int:
    """stop/rm --dry-run: the server rows the command would act on, per host; nothing changes."""
    if uses_target(args):
        target = pick_target(args)
        with _transport(target.host, args) as transport:
            rows = call_one(transport, "ps", {"side": "server"})["rows"]
        found = [r for r in rows if r.get("key") == target.key]
        _dry_rows(found or [{"key": target.key, "status": "absent", "pid": None}], verb)
        return 0
    if not args.cluster:
        raise UsageError("--service or --cluster is required (or --local, or --key KEY)")
    for host in args.config.cluster_hosts(args.cluster, args.frontend_name):
        with _transport(host, args) as transport:
            _dry_rows(cluster_rows(transport, args, "server"), verb)
    return 0


def run_rm(args: argparse.Namespace) -> int:
    if getattr(args, "dry_run", False):
        return _dry_run_rows(args, "remove the state of")
    both = not (args.client or args.server)
    do_client, do_server = args.client or both, args.server or both
    if uses_target(args):
        target = pick_target(args)
        keys = [target.key]
        hosts_keys = [(target.host, keys)] if do_server else []
    elif args.cluster:
        hosts_keys = [(host, None) for host in args.config.cluster_hosts(args.cluster, args.frontend_name)] if do_server else []
    else:
        raise UsageError("--service or --cluster is required (or --local, or --key KEY)")

    rc, refused, unchecked = 0, set(), []
    for host, host_keys in hosts_keys:
        try:
            with _transport(host, args) as transport:
                if host_keys is None:
                    host_keys = [r["key"] for r in cluster_rows(transport, args, "server")]
                if host_keys:
                    host_rc, host_refused = _rm_on(transport, host_keys, side="server", force=args.force,
                                                    where=_where(host))
                    rc, refused = max(rc, host_rc), refused | host_refused
        except ServiceError as exc:
            _err(str(exc))
            rc = 1
            unchecked.append(_where(host))
    if do_client and unchecked and not args.force:
        # #38 again: whether those services run is unknown, so their client files (the
        # only way back to a running service) stay.
        _err(f"client files kept: could not check the server side on {', '.join(unchecked)} "
             "(pass --force to remove them anyway)")
        do_client = False
    if do_client:
        # Client files live on this machine, whatever host the service runs on.
        with contextlib.closing(open_local()) as local:
            if uses_target(args):
                client_keys = keys
            else:
                client_keys = [r["key"] for r in cluster_rows(local, args, "client")]
            client_keys = [k for k in client_keys if k not in refused]  # #38: refused keys keep both files
            if client_keys:
                rc = max(rc, _rm_on(local, client_keys, side="client", force=False, where=_where(None))[0])
    return rc


# ---------------------------------------------------------------- clear


def run_clear(args: argparse.Namespace) -> int:
    if args.service not in PERSISTENT_SERVICES and (args.service or not (args.key or args.local)):
        raise UsageError("--service must be hashserver or database")
    target = pick_target(args)
    if target.service not in PERSISTENT_SERVICES:
        raise UsageError(f"{target.key} is not a hashserver or database: it has no data to clear")
    with _transport(target.host, args) as transport:
        # --key: the workdir is the one the service's state file records on its host
        workdir = target.workdir if target.workdir is not None else _state_workdir(transport, target)
        if not workdir or workdir == "/tmp":
            raise UsageError("service has no clearable persistent workdir")
        path = os.path.expanduser(workdir) if target.host is None else workdir
        where = f"{target.host}:{path}" if target.host else path
        if getattr(args, "dry_run", False):
            from ..lifecycle.control import dir_rows

            row = dir_rows(transport, [(target.service, path)], settle=5.0).get(path)
            state = row.get("state") if row else "no marker"
            size = row.get("bytes") if row else None
            print(f"would clear {where} ({state}, {'size unknown' if size is None else f'{size} bytes'})",
                  flush=True)
            return 0
        if not args.yes:
            # No interactive prompt: commands run inside the tunnel keeper, which has no
            # terminal, and a prompt that only sometimes appears is worse than a clear rule.
            raise UsageError(f"clear deletes all data in {where}: pass --yes to confirm")
        try:
            value = call_one(transport, "clear", {"path": path, "key": target.key, "force": args.force})
        except OpError as exc:
            if exc.code == ErrorCode.CONFLICT:  # a service runs there: say how to go ahead anyway
                # the same error with a hint; showing the first one too would be noise
                raise OpError(exc.code, f"{exc.message} (or pass --force)", exc.host) from None
            raise
    if value.get("stdout"):
        sys.stdout.write(value["stdout"])
        sys.stdout.flush()
    if value.get("stderr"):
        sys.stderr.write(value["stderr"])
        sys.stderr.flush()
    return 0 if value.get("ok") else 1


def _state_workdir(transport: Transport, target: Target) -> str | None:
    workdir = call_one(transport, "inspect", {"key": target.key})["data"].get("workdir")
    return workdir if isinstance(workdir, str) else None
