"""The `ssh` transport: the fallback that runs the host's `rhl-*` helpers over plain `ssh`.

For hosts where the agent cannot run, typically because the key is forced through
`rhl-guard` (only `rhl-*` helpers, one per session). Every op becomes helper calls and
returns THE SAME value shapes as the agent's ops, so callers never care which transport
answered:

  ps          rhl-ps --json [--no-status] (+ rhl-ps --client --json for side="client");
              filters applied here with protocol.keys.row_matches; the agent's status
              corrections re-derived from the rows (#15 unusable pids such as 0, -1, 4.7 are
              not alive; #16 a `starting` row whose pid is dead is `failed`); `token` None;
              `state` names the account ssh logs in to (user, host name and port, from
              `ssh -G`), so two aliases of one server show their rows once
  persistent  rhl-ps-persistent --json PATHS --level N [--file F] [--marker M];
              behind a marker-policy rhl-guard, a root without a marker is replaced by
              the marked directories the services' workdirs name (#11, see _marked_rows);
              no sizes: bytes None, bytes_measured None, bytes_state "unavailable"
  inspect     rhl-inspect KEY --with-mtime
  logs        rhl-logs KEY [--tail N]; offset/whole-file reads are sliced here; a tail
              read cannot know the file size: offset, next_offset and size are None
  stop        rhl-ps --json first (#13/#14/#17: missing state, unusable pids and live
              pids of stale/failed rows are never passed to rhl-stop), then one rhl-stop
              for the rest (a pid rhl-ps found dead: rhl-stop's `already gone`, marked
              stale; a `failed` row's pid is not probed by rhl-ps: `not running`)
  rm          rhl-ps --json first (#38: the server state of a live service is kept unless
              force), then rhl-rm
  clear       without rhl-guard on the key, the agent's default path policy first (rhl-clear
              alone refuses only the system roots themselves): a small `sh -c` beside
              rhl-ps reports $HOME and what the path resolves to and whether a marker is
              there, and the heuristics and the marker rule are applied here
              (_policy_verdict); behind rhl-guard the guard decides. rhl-ps --json (#23:
              refused while a service runs in that directory, unless force), then
              rhl-clear on the resolved path; `removed` is the helper's own count (top-level
              entries removed entirely, `removed_counts: "top-level"`), said on stderr
  start       what remote-http-launcher does over ssh, with the same helpers: rhl-ps --json
              (is it running?), rhl-verify-port + rhl-handshake for a running one, else
              rhl-launch-service with the launcher's own arguments (status file in the
              server's default launcher folder, as the launcher passes it), then rhl-ps
              polls (one per second) until running and answering, or failed (rhl-logs
              --tail for its end); the previous log cannot be kept as KEY.log.1 (no
              helper renames a log)
  health      not available (OP_FAILED: needs the agent)
  wait        not available (OP_FAILED: needs the agent)
  hello       rhl-ps --help (proves the host and its helpers answer); value has
              "transport": "ssh"

Not reproducible without the agent (documented differences): no directory sizes; no
process identity check (uid, program, start time) before signalling, so a reused pid of
another of the user's programs could be signalled; no process-group clean-up after stop;
no marker preservation nor bottom-up clearing in clear; a zombie counts as alive (rhl-ps
probes with kill 0); a malformed state file fails the whole listing (rhl-ps aborts).

Each call is the real `ssh` binary: `ssh [-F CONFIG] -o BatchMode=yes -o ConnectTimeout=N
-T HOST 'PATH=$HOME/miniforge3/bin:$HOME/miniconda3/bin:$PATH' rhl-... args`, every argument
shell-quoted (shlex.join; defect #31), with the PATH prefix seamless-config uses (rhl-guard
drops leading VAR= words, which is harmless). Several helpers needed by one batch run in
ONE ssh session (a small `sh -s` script on stdin, outputs split by a random marker) —
except through rhl-guard, which allows exactly one helper per session: its refusal is
detected and the helpers then run one call each (remembered for this transport).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import secrets
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Generator, Iterable, Sequence

from ...protocol import PROTOCOL_VERSION, ErrorCode, ProtocolError, error_result, ok_result, validate_args
from ...protocol.keys import META_FIELDS, is_valid_key, row_matches
from ...rhl import (LAUNCH_HELPER, LIVE_STATUSES, MISSING_STATE, NOT_RUNNING, RM_HELPER, SEAMLESS_MARKERS,
                    STOP_HELPER, SYSTEM_ROOTS, clear_conflict, client_process, connect_host, derive_status,
                    handshake_target, heuristic_refusal, is_live, launch_args, marker_refusal, outcome_lines,
                    plan_rm, read_rm_output, rm_results, rm_sides, status_file_arg, stop_flags,
                    stop_without_helper, system_root_refusal, unresolvable_refusal, usable_pid)
from ..errors import ConnectionFailed, TimedOut
from .base import DEFAULT_TIMEOUT, Notice, Op, Result, Transport
from .ssh_errors import map_ssh_failure

SSH = "ssh"
PATH_PREFIX = "PATH=$HOME/miniforge3/bin:$HOME/miniconda3/bin:$PATH"
CONNECT_TIMEOUT = 10
GUARD_REJECTED = b"rhl-guard: rejected"
MUTATING = frozenset({"stop", "rm", "clear", "start"})
READ_ONLY_HELPERS = frozenset({"rhl-ps", "rhl-ps-persistent", "rhl-inspect", "rhl-logs"})
SUPPORTED = ("clear", "hello", "inspect", "logs", "persistent", "ps", "rm", "start", "stop")
_ALLOWANCE = {"rhl-stop": 20.0, "rhl-clear": 3600.0, "rhl-verify-port": 12.0, "rhl-handshake": 10.0}

Argv = tuple[str, ...]


@dataclass
class HelperResult:
    """What one helper printed on the host, and its exit status."""

    argv: Argv
    code: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", errors="replace")

    def error_line(self) -> str:
        lines = [line.strip() for line in self.stderr.decode("utf-8", errors="replace").splitlines() if line.strip()]
        if not lines:
            return f"{self.argv[0]} exited with status {self.code}"
        return lines[-1]


# --------------------------------------------------------------------------- errors

_NOT_FOUND = ("no state file for", "no log file for", "path does not exist")
_POLICY = ("rhl-guard: rejected", "path must be absolute", "refusing to operate on system directory",
           "path must not contain", "refusing system-root")


def _strip_prog(line: str) -> str:
    """`rhl-inspect: no state file for 'k'` -> `no state file for 'k'` (the agent's wording)."""
    match = re.match(r"^rhl(?:-[a-z-]+)?: (?!rejected)(.*)$", line)
    return match.group(1) if match else line


def helper_error(op: str, result: HelperResult, host: str) -> ProtocolError:
    """A failed helper as the agent's error code + one line."""
    line = result.error_line()
    if result.code == 127 or "command not found" in line or line.endswith(": not found"):
        return ProtocolError(ErrorCode.HELPER_FAILED,
                             f"{result.argv[0]} is not installed on {host} (not on PATH, nor in "
                             "~/miniforge3/bin or ~/miniconda3/bin); install remote-http-launcher there")
    if any(marker in line for marker in _POLICY):
        return ProtocolError(ErrorCode.POLICY_REFUSED, _strip_prog(line))
    if any(marker in line for marker in _NOT_FOUND):
        return ProtocolError(ErrorCode.NOT_FOUND, _strip_prog(line))
    if "not a directory" in line and op == "clear":
        return ProtocolError(ErrorCode.BAD_ARGS, _strip_prog(line))
    return ProtocolError(ErrorCode.HELPER_FAILED, f"{op}: {line}")


def _ssh_failure(host: str, stderr: bytes, code: int) -> ConnectionFailed:
    return map_ssh_failure(host, stderr.decode("utf-8", errors="replace"), code)


# --------------------------------------------------------------------------- rows


def _ndjson(result: HelperResult) -> list[dict[str, Any]]:
    rows = []
    for line in result.text.splitlines():
        if line.strip():
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise ProtocolError(ErrorCode.HELPER_FAILED,
                                    f"{result.argv[0]} printed something that is not JSON: {line[:120]!r}") from exc
            if isinstance(row, dict):
                rows.append(row)
    return rows


def correct_server_row(row: dict[str, Any], *, check_pid: bool) -> dict[str, Any]:
    """Re-derive status/live as the agent does (rhl.derive_status), using the
    liveness rhl-ps measured: only what the rows tell can be corrected."""
    raw = dict(row)
    raw.pop("key", None)
    if "json_status" in row:
        raw["status"] = row["json_status"]
    else:
        raw.pop("status", None)
    seen_live = row.get("live") is True
    status, live = derive_status(raw, check_pid=check_pid, alive=lambda pid: seen_live)
    row["status"], row["live"] = status, live
    if not is_valid_key(row.get("key")):
        row["valid_key"] = False
    return row


def _home_from_rows(rows: Iterable[dict[str, Any]]) -> str | None:
    """The host user's HOME, read off a state file's `log` path (no extra ssh call)."""
    for row in rows:
        log = row.get("log")
        if isinstance(log, str) and "/.remote-http-launcher/server/" in log:
            return log.split("/.remote-http-launcher/server/")[0] or None
    return None


def _expand(path: str, home: str | None) -> str:
    if home and (path == "~" or path.startswith("~/")):
        path = home + path[1:]
    return posixpath.normpath(path)


def _inside(workdir: Any, directory: str, home: str | None) -> bool:
    if not isinstance(workdir, str) or not workdir:
        return False
    work = _expand(workdir, home)
    return work == directory or work.startswith(directory.rstrip("/") + "/")


def _check_absolute(path: str) -> None:
    # Also keeps option-like words ("-x") away from the helpers.
    if not (path.startswith("/") or path == "~" or path.startswith("~/")):
        raise ProtocolError(ErrorCode.POLICY_REFUSED, f"path must be absolute after ~ expansion: {path}")


# --------------------------------------------------------------------------- ops
# Each op is a generator: it yields a list of helper argvs to run (all in one round when
# possible) and receives {argv: HelperResult}; it returns the op's value or raises
# ProtocolError.

OpGen = Generator[list[Argv], dict[Argv, HelperResult], Any]
PS_JSON: Argv = ("rhl-ps", "--json")


def _server_rows(result: HelperResult, host: str, *, check_pid: bool, op: str) -> list[dict[str, Any]]:
    if result.code != 0:
        raise helper_error(op, result, host)
    return [correct_server_row(row, check_pid=check_pid) for row in _ndjson(result)]


def op_ps(args: dict[str, Any], host: str, state: str | None = None) -> OpGen:
    side = args.get("side") or "server"
    if args.get("host") and side != "client":
        raise ProtocolError(ErrorCode.BAD_ARGS, "ps: the 'host' filter needs side='client'")
    check_pid = not args.get("no_status")
    server_argv: Argv = PS_JSON if check_pid else PS_JSON + ("--no-status",)
    if side == "client":
        client_argv: Argv = ("rhl-ps", "--client", "--json")
        got = yield [client_argv, server_argv]
        if got[client_argv].code != 0:
            raise helper_error("ps", got[client_argv], host)
        try:
            servers = {row.get("key"): row for row in
                       _server_rows(got[server_argv], host, check_pid=check_pid, op="ps")}
        except ProtocolError:
            servers = {}  # as the agent: an unreadable server side leaves process "client"
        rows = []
        for row in _ndjson(got[client_argv]):
            row["process"] = client_process(row, servers.get)
            if not is_valid_key(row.get("key")):
                row["valid_key"] = False
            rows.append(row)
        if args.get("host"):
            rows = [row for row in rows if row.get("ssh_host") == args["host"]]
        status_field = "process"
    else:
        got = yield [server_argv]
        rows = _server_rows(got[server_argv], host, check_pid=check_pid, op="ps")
        status_field = "status"
    wanted = args.get("status")
    if wanted:
        rows = [row for row in rows if row.get(status_field) == wanted]
    filters = {name: args.get(name) for name in META_FIELDS}
    return {"rows": [row for row in rows if row_matches(row, filters)], "token": None, "state": state}


def _persistent_argv(paths: Iterable[str], level: int, args: dict[str, Any]) -> Argv:
    argv: Argv = ("rhl-ps-persistent", "--json", *paths, "--level", str(level))
    if args.get("file"):
        argv += ("--file", args["file"])
    if args.get("marker"):
        argv += ("--marker", args["marker"])
    return argv


def op_persistent(args: dict[str, Any], host: str, transport: "SshTransport | None" = None) -> OpGen:
    for path in args["paths"]:
        _check_absolute(path)
    argv = _persistent_argv(args["paths"], args["level"], args)
    got = yield [argv]
    result = got[argv]
    if result.code == 0:
        rows = _ndjson(result)
    elif _marker_refusal(result) is not None:
        rows = yield from _marked_rows(args, host, transport, result)
    else:
        raise helper_error("persistent", result, host)
    for row in rows:
        row["bytes"] = row["bytes_measured"] = None
        row["bytes_state"] = "unavailable"
    return {"rows": rows}


# #11 behind `rhl-guard --clear-policy seamless|marker:NAME`. The guard accepts an
# rhl-ps-persistent path only if it holds a marker file, and a cluster's bufferdir or
# database root holds none: the root cannot be listed. The agent walks such a root and
# reports the directories at or below a marked one (agent/policy.py). Through the guard,
# the only directory names the helpers reveal are the services' workdirs in their state
# (seamless launches hashserver/database in ROOT/PROJECT[/SUBPROJECT]/STAGE-x, their data
# directory), so those are asked for instead, each walked down to the root's level: a
# marked one gives exactly the agent's rows for its subtree. A marked directory that no
# state file names (its service removed) cannot be found: a notice says so, once per root.

_MARKER_REFUSED = re.compile(r"path does not contain required marker file \(([^)]*)\): (.*)$")


def _marker_refusal(result: HelperResult) -> tuple[str, str] | None:
    """(markers, path) if rhl-guard refused a path for lacking a marker file."""
    line = result.error_line()
    if not line.startswith("rhl-guard: rejected: "):
        return None
    match = _MARKER_REFUSED.search(line)
    return (match.group(1), match.group(2)) if match else None


@dataclass(frozen=True)
class _Candidate:
    """A directory to ask rhl-ps-persistent about instead of a refused root."""

    root: int          # index of the requested path it stands for
    path: str          # as sent to the helper and shown in rows (`~` expanded when known)
    level: int         # the requested level minus its depth below the root
    requested: bool    # the requested path itself (its refusal fails the op, as on the agent)


def _below(path: str, directory: str) -> bool:
    return path.startswith(directory.rstrip("/") + "/")


def _candidates(paths: list[str], level: int, state_rows: list[dict[str, Any]]) -> list[_Candidate]:
    home = _home_from_rows(state_rows)
    workdirs = [_expand(row["workdir"], home) for row in state_rows if isinstance(row.get("workdir"), str)
                and row["workdir"].startswith(("/", "~"))]
    found: dict[tuple[int, str], _Candidate] = {}
    for index, raw in enumerate(paths):
        root = _expand(raw, home)
        found.setdefault((index, root), _Candidate(index, root, level, True))
        for workdir in workdirs:
            if _below(workdir, root):
                parts = workdir[len(root.rstrip("/")) + 1:].split("/")
                for depth in range(1, min(len(parts), level) + 1):
                    path = root.rstrip("/") + "/" + "/".join(parts[:depth])
                    found.setdefault((index, path), _Candidate(index, path, level - depth, False))
    return list(found.values())


def _front(pending: list[_Candidate]) -> list[_Candidate]:
    """The candidates with no pending ancestor (of the same root): asked first."""
    return [c for c in pending if not any(o.root == c.root and _below(c.path, o.path) for o in pending)]


def _marked_rows(args: dict[str, Any], host: str, transport: "SshTransport | None",
                 refused: HelperResult) -> OpGen:
    """The rows of `args` from marked candidate directories, `refused` being the guard's
    refusal of the request as it was."""
    got = yield [PS_JSON]
    state = got[PS_JSON]
    state_rows = _ndjson(state) if state.code == 0 else []  # no state: the roots alone
    pending = _candidates(args["paths"], args["level"], state_rows)
    found: dict[tuple[int, str], dict[str, Any]] = {}
    refused_roots: dict[int, str] = {}
    # the path the guard named is not asked again
    first = _refused_candidate(refused, [c for c in pending if c.requested], host)
    refused_roots[first.root] = (_marker_refusal(refused) or ("", ""))[0]
    pending.remove(first)
    while pending:
        front = _front(pending)
        accepted: list[_Candidate] = []
        for level in sorted({c.level for c in front}, reverse=True):
            group = [c for c in front if c.level == level]
            while group:
                argv = _persistent_argv([c.path for c in group], level, args)
                got = yield [argv]
                result = got[argv]
                if result.code == 0:
                    accepted += group
                    _collect(found, group, _ndjson(result))
                    break
                dropped = _refused_candidate(result, group, host)
                if dropped.requested:
                    refused_roots[dropped.root] = (_marker_refusal(result) or ("", ""))[0]
                group.remove(dropped)
        pending = [c for c in pending if c not in front
                   and not any(a.root == c.root and _below(c.path, a.path) for a in accepted)]
    for index, markers in refused_roots.items():
        _note_unlisted(transport, host, args["paths"][index], markers)
    ordered = sorted(found.items(), key=lambda item: (item[0][0], tuple(item[0][1].split("/"))))
    return [row for _, row in ordered]


def _refused_candidate(result: HelperResult, group: list[_Candidate], host: str) -> _Candidate:
    """The candidate rhl-guard refused (its message names it); a refused requested path
    for another reason than a missing marker fails the op, as on the agent."""
    line = result.error_line()
    refusal = _marker_refusal(result)
    named = posixpath.normpath(refusal[1]) if refusal else next(
        (c.path for c in group if line.endswith(": " + c.path)), None)
    match = next((c for c in group if c.path == named), None)
    if match is None and len(group) == 1:
        match = group[0]
    if match is None or (refusal is None and (match.requested or not line.startswith("rhl-guard: rejected"))):
        raise helper_error("persistent", result, host)
    return match


def _collect(found: dict[tuple[int, str], dict[str, Any]], group: list[_Candidate], rows: list[dict[str, Any]]) -> None:
    """Rows of one helper call, under the requested path each belongs to (first one wins)."""
    for row in rows:
        path = row.get("path")
        if not isinstance(path, str):
            continue
        for candidate in group:
            if path == candidate.path or _below(path, candidate.path):
                found.setdefault((candidate.root, path), row)


def _note_unlisted(transport: "SshTransport | None", host: str, root: str, markers: str) -> None:
    if transport is None or transport.notice is None or root in transport.noted_roots:
        return
    transport.noted_roots.add(root)
    transport.notice(f"seamless-service: {host}: rhl-guard forbids listing {root} (it holds no marker file: "
                     f"{markers}); shown are the marked directories the services' state names, not others there")


def op_inspect(args: dict[str, Any], host: str) -> OpGen:
    key = args["key"]
    argv: Argv = ("rhl-inspect", key, "--with-mtime")
    got = yield [argv]
    if got[argv].code != 0:
        raise helper_error("inspect", got[argv], host)
    try:
        payload = json.loads(got[argv].text)
        return {"key": key, "data": payload["data"], "mtime": payload["mtime"]}
    except (ValueError, KeyError, TypeError) as exc:
        raise ProtocolError(ErrorCode.HELPER_FAILED, "inspect: rhl-inspect printed something unexpected") from exc


def op_logs(args: dict[str, Any], host: str) -> OpGen:
    key, tail, offset = args["key"], args.get("tail"), args.get("offset")
    max_bytes = int(args.get("max_bytes") or 1 << 20)
    if tail is not None and offset is not None:
        raise ProtocolError(ErrorCode.BAD_ARGS, "logs: give 'tail' or 'offset', not both")
    argv: Argv = ("rhl-logs", key) + (("--tail", str(tail)) if tail is not None else ())
    got = yield [argv]
    if got[argv].code != 0:
        raise helper_error("logs", got[argv], host)
    data = got[argv].stdout
    value = {"key": key, "reset": False}
    if tail is not None:
        truncated = len(data) > max_bytes
        data = data[-max_bytes:] if truncated else data
        value.update(data=data, offset=None, next_offset=None, size=None, truncated=truncated)
        return value
    size = len(data)
    if offset is not None:
        if offset > size:
            offset, value["reset"] = 0, True
        chunk = data[offset:offset + max_bytes]
        value.update(data=chunk, offset=offset, next_offset=offset + len(chunk), size=size,
                     truncated=offset + len(chunk) < size)
        return value
    start = max(0, size - max_bytes)
    value.update(data=data[start:], offset=start, next_offset=size, size=size, truncated=start > 0)
    return value


def op_stop(args: dict[str, Any], host: str) -> OpGen:
    keys: list[str] = args["keys"]
    got = yield [PS_JSON]
    if got[PS_JSON].code != 0:
        error = helper_error("stop", got[PS_JSON], host)
        raise ProtocolError(error.code, f"stop: cannot check the services first: {error.message}")
    rows = {row.get("key"): row for row in _server_rows(got[PS_JSON], host, check_pid=True, op="stop")}
    plans: dict[str, dict[str, Any]] = {}
    for key in keys:
        if key in plans:
            continue
        row = rows.get(key)
        plan: dict[str, Any] = {"key": key, "outcome": None, "stopped": False, "signalled": False,
                                "status": row.get("status") if row else None, "pid": None}
        plans[key] = plan
        if row is None:
            plan["outcome"] = MISSING_STATE
            continue
        plan["pid"] = usable_pid(row.get("pid"))
        verdict = stop_without_helper(row, json_status=row.get("json_status"))
        if verdict is not None:
            plan["outcome"], plan["stopped"], plan["detail"] = verdict.outcome, verdict.stopped, verdict.detail
        elif row.get("live") is False:
            # dead when rhl-ps looked: rhl-stop says `already gone` and marks the file
            # stale, the only way to write it from here
            pass
        elif row.get("json_status") not in LIVE_STATUSES or row.get("live") is not True:
            # stale/failed with a live (or, for failed, unprobed) pid: maybe reused (#17)
            plan["outcome"], plan["stopped"] = NOT_RUNNING, True
    to_stop = [key for key, plan in plans.items() if plan["outcome"] is None]
    exit_status: int | None = None
    stderr = ""
    if to_stop:
        argv: Argv = (STOP_HELPER, *to_stop)
        done = yield [argv]
        result = done[argv]
        exit_status, stderr = result.code, result.stderr.decode("utf-8", errors="replace")
        outcomes = outcome_lines(result.text, to_stop)
        for key in to_stop:
            plan = plans[key]
            outcome = outcomes.get(key)
            if outcome is None:
                plan["outcome"] = f"error: {STOP_HELPER} gave no outcome ({result.error_line()})"
                continue
            plan["outcome"] = outcome
            plan["stopped"], plan["signalled"] = stop_flags(outcome)
    results = []
    for key in keys:
        plan = dict(plans[key])
        if plan.get("detail") is None:
            plan.pop("detail", None)
        results.append(plan)
    return {"results": results, "exit_status": exit_status, "stderr": stderr}


def op_rm(args: dict[str, Any], host: str) -> OpGen:
    keys: list[str] = args["keys"]
    force = args["force"]
    do_server, flags = rm_sides(args["client"], args["server"])
    rows: dict[Any, dict[str, Any]] = {}
    if do_server:
        got = yield [PS_JSON]
        if got[PS_JSON].code != 0 and not force:
            error = helper_error("rm", got[PS_JSON], host)
            raise ProtocolError(error.code, f"rm: cannot check whether the services run ({error.message}); "
                                "use force to remove anyway")
        if got[PS_JSON].code == 0:
            rows = {row.get("key"): row for row in _server_rows(got[PS_JSON], host, check_pid=True, op="rm")}
    outcomes, to_remove = plan_rm(keys, force=force, live_pid=lambda key: _live_pid(rows.get(key)))
    exit_status: int | None = None
    stderr = ""
    removed: dict[str, list[str]] = {key: [] for key in to_remove}
    if to_remove:
        argv: Argv = (RM_HELPER, *flags, *to_remove)
        done = yield [argv]
        result = done[argv]
        exit_status, stderr = result.code, result.stderr.decode("utf-8", errors="replace")
        removed = read_rm_output(to_remove, result.text, stderr, exit_status, outcomes)
    return {"results": rm_results(keys, outcomes, removed), "exit_status": exit_status, "stderr": stderr}


def _live_pid(row: dict[str, Any] | None) -> int | None:
    """The pid of the service of `row` if rhl-ps found it alive while running/starting."""
    return usable_pid(row.get("pid")) if row is not None and is_live(row) else None


_REMOVED = re.compile(r"^removed (\d+) item\(s\) from (.*)$", re.MULTILINE)


# clear's path policy through plain ssh. Without rhl-guard on the key only rhl-clear's own
# check would run (the system roots themselves: `/usr/share/x` or a folder of the user's
# would be emptied), so the agent's default policy ("seamless", agent/policy.py) is applied
# here, on what the host reports in one command beside rhl-ps: $HOME, its resolution, the
# path (`~` expanded as rhl-clear expands it) resolved as the agent resolves it
# (non-strict: `realpath -m`, else `readlink -f`; each output kept exact with a sentinel),
# and whether a marker is a regular file in the resolved directory (`test -f` follows a
# symlinked marker, as the guard does). NUL-separated: a path may hold a newline.
_POLICY_SCRIPT = (
    'res() { o=$(realpath -m "$1" 2>/dev/null && printf x) || o=$(readlink -f "$1" 2>/dev/null && printf x) '
    '|| o=; case $o in ?*x) o=${o%x}; o=${o%?};; *) o=;; esac; }; '
    'p=$1; shift; case $p in "~") p=$HOME;; "~/"*) p=$HOME/${p#"~/"};; esac; '
    'res "$HOME"; h=$o; res "$p"; d=$o; m=0; '
    'if [ -n "$d" ]; then for n in "$@"; do if [ -f "$d/$n" ]; then m=1; fi; done; fi; '
    "printf '%s\\0' \"$HOME\" \"$h\" \"$d\" \"$m\""
)


def _policy_argv(path: str) -> Argv:
    """The policy check of `path`: no helper, so it runs only where no rhl-guard is forced."""
    return ("sh", "-c", _POLICY_SCRIPT, "sh", path, *SEAMLESS_MARKERS)


@dataclass(frozen=True)
class _Checked:
    """What the policy check found: the host user's HOME and the directory to clear."""

    home: str
    directory: str   # the path, `~` expanded and symlinks resolved


def _refused(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.POLICY_REFUSED, message)


def _policy_verdict(result: HelperResult, path: str, host: str) -> _Checked | None:
    """The directory `clear` may empty by the agent's default policy, POLICY_REFUSED (its
    words) if the policy refuses `path`, or None when rhl-guard refused the check: the
    key is forced through the guard, whose own policy decides."""
    if GUARD_REJECTED in result.stderr:
        return None
    fields = result.stdout.split(b"\0")
    if result.code != 0 or len(fields) != 5 or fields[4]:
        raise _refused(f"clear: cannot check the path policy on {host} ({result.error_line()}); "
                       "nothing was cleared")
    try:
        home, real_home, real, marker = (field.decode("utf-8") for field in fields[:4])
    except UnicodeDecodeError:
        raise _refused(f"clear: {path} resolves to a path that is not UTF-8 on {host}; nothing was cleared") from None
    if not real_home:
        raise _refused(f"clear: cannot resolve $HOME on {host}; nothing was cleared")
    why = _default_policy_refusal(_expand_home(path, home), real, real_home, marked=marker == "1")
    if why is not None:
        raise _refused(why)
    return _Checked(home, real)


def _expand_home(path: str, home: str) -> PurePosixPath:
    """`path` with a leading `~` expanded as `Path.expanduser` does (no normalisation of
    `..`: the heuristics look for it)."""
    if path == "~" or path.startswith("~/"):
        return PurePosixPath(home, path[2:])
    return PurePosixPath(path)


def _default_policy_refusal(expanded: PurePosixPath, real: str, real_home: str, *, marked: bool) -> str | None:
    """agent/policy.py `check_path(default_policy(), path, "clear")`, in its order, on what the
    host reported: the heuristics, the marker rule, then rhl-clear's own system-root check."""
    if not real:
        return unresolvable_refusal(expanded)
    why = heuristic_refusal(expanded, real, real_home)
    if why is None and not marked:
        why = marker_refusal(SEAMLESS_MARKERS, expanded)
    if why is None and expanded.as_posix() in SYSTEM_ROOTS:
        why = system_root_refusal(expanded)
    return why


def op_clear(args: dict[str, Any], host: str, transport: "SshTransport | None" = None) -> OpGen:
    path, key = args["path"], args.get("key")
    _check_absolute(path)
    check = None if transport is not None and transport.guarded else _policy_argv(path)
    asks = ([] if args["force"] else [PS_JSON]) + ([check] if check is not None else [])
    got = (yield asks) if asks else {}
    checked = _policy_verdict(got[check], path, host) if check is not None else None
    if check is not None and checked is None and transport is not None:
        transport.guarded = True   # the guard refused the check: not asked again
    # rhl-clear gets the directory that was checked (resolved), as the agent clears it.
    target = shown = checked.directory if checked is not None else path
    if not args["force"]:
        if got[PS_JSON].code != 0:
            error = helper_error("clear", got[PS_JSON], host)
            raise ProtocolError(error.code, f"clear: cannot check whether a service runs there "
                                f"({error.message}); use force to clear anyway")
        rows = _server_rows(got[PS_JSON], host, check_pid=True, op="clear")
        home = checked.home if checked is not None else _home_from_rows(rows)
        directory = _expand(path, home)
        if checked is None:
            shown = directory
        key_row = next((row for row in rows if row.get("key") == key), None) if key is not None else None
        conflict = clear_conflict(key, key_row, rows, lambda workdir: _inside(workdir, directory, home) or (
            checked is not None and _inside(workdir, checked.directory, home)))
        if conflict is not None:
            raise ProtocolError(ErrorCode.CONFLICT, conflict)
    argv: Argv = ("rhl-clear", target)
    done = yield [argv]
    result = done[argv]
    stdout = result.text
    match = _REMOVED.search(stdout)
    if result.code != 0 and match is None:
        raise helper_error("clear", result, host)
    stderr = result.stderr.decode("utf-8", errors="replace")
    if match:
        # The agent counts every entry removed, at any depth; through plain ssh (rhl-guard
        # allows nothing but rhl-clear) only the helper's own count exists: top-level
        # entries it removed entirely. Its line is passed on as seamless-service-clear
        # shows it, with a note, so "removed 0" is not read as "nothing was deleted".
        stderr += (f"seamless-service: {host}: through the ssh fallback this count is rhl-clear's own: "
                   "top-level entries removed entirely, not the files removed below them\n")
    return {
        "path": match.group(2).strip() if match else shown,
        "removed": int(match.group(1)) if match else 0,
        "removed_counts": "top-level",
        "exit_status": result.code,
        "helper_exit_status": result.code,
        "ok": result.code == 0,
        "stdout": stdout,
        "stderr": stderr,
        "preserved": [],
    }


START_POLL = 1.0   # seconds between rhl-ps polls while a service starts (one ssh session each)


def _row_of(key: str, host: str) -> Generator[list[Argv], dict[Argv, HelperResult], dict[str, Any] | None]:
    got = yield [PS_JSON]
    if got[PS_JSON].code != 0:
        error = helper_error("start", got[PS_JSON], host)
        raise ProtocolError(error.code, f"start: cannot check the service first: {error.message}")
    return next((r for r in _server_rows(got[PS_JSON], host, check_pid=True, op="start")
                 if r.get("key") == key), None)


def _answers(row: dict[str, Any], host: str) -> Generator[list[Argv], dict[Argv, HelperResult], str | None]:
    """None if the running service's port and handshake answer (rhl-verify-port,
    rhl-handshake: the launcher's own checks), else why not."""
    address = connect_host(row.get("network_interface"))
    path, port = handshake_target(row)
    if port is None:
        return f"no usable port in the state file: {row.get('port')!r}"
    shown = f"[{address}]" if ":" in address else address
    checks: list[Argv] = [("rhl-verify-port", address, str(row.get("port"))), ("rhl-handshake", f"http://{shown}:{port}{path}")]
    got = yield checks
    for argv in checks:
        if got[argv].code != 0:
            return f"{argv[0]}: {got[argv].error_line()}"
    return None


def op_start(args: dict[str, Any], host: str) -> OpGen:
    import time

    key = args["key"]
    if status_file_arg(key) not in args["argv"]:
        raise ProtocolError(ErrorCode.BAD_ARGS, f"start: the command must pass the status file {status_file_arg(key)}")
    deadline = time.monotonic() + args["wait"]
    value: dict[str, Any] = {"key": key, "outcome": None, "launched": False, "status": None, "pid": None,
                             "host": None, "port": None, "log": None, "rotated_log": None, "log_tail": None,
                             "detail": None}
    row = yield from _row_of(key, host)
    if row is not None and row.get("status") == "running" and row.get("live") is True:
        problem = yield from _answers(row, host)
        if problem:
            raise ProtocolError(ErrorCode.CONFLICT, f"{key} runs (pid {row.get('pid')}) but does not answer: "
                                f"{problem}; restart it")
        return {**value, "outcome": "already running", "status": "running", "pid": row.get("pid"),
                "host": row.get("network_interface"), "port": row.get("port"), "log": row.get("log")}
    starting = row is not None and row.get("status") == "starting" and row.get("live") is True
    if not starting and args["launch"]:
        argv: Argv = (LAUNCH_HELPER, *launch_args(args, args["argv"]))
        got = yield [argv]
        if got[argv].code != 0:
            raise helper_error("start", got[argv], host)
        value["launched"] = True
    while True:
        row = yield from _row_of(key, host)
        status = row.get("status") if row is not None else None
        if row is not None and status == "running" and row.get("live") is True:
            problem = yield from _answers(row, host)
            if problem is None:
                return {**value, "outcome": "started", "status": "running", "pid": row.get("pid"),
                        "host": row.get("network_interface"), "port": row.get("port"), "log": row.get("log")}
            value["detail"] = problem
        elif status != "starting" or row.get("live") is False:
            tail: Argv = ("rhl-logs", key, "--tail", "20")
            got = yield [tail]
            return {**value, "outcome": "failed", "status": "failed", "log": (row or {}).get("log"),
                    "pid": usable_pid((row or {}).get("pid")),
                    "detail": "there is no state file" if row is None else f"the service is {status}",
                    "log_tail": got[tail].text if got[tail].code == 0 else None}
        if time.monotonic() >= deadline:
            return {**value, "outcome": "starting", "status": "starting", "pid": usable_pid(row.get("pid"))}
        time.sleep(START_POLL)


def op_hello(args: dict[str, Any], host: str, transport: "SshTransport") -> OpGen:
    argv: Argv = ("rhl-ps", "--help")
    got = yield [argv]
    if got[argv].code != 0:
        raise helper_error("hello", got[argv], host)
    return {"transport": "ssh", "host": host, "version": None, "protocol": PROTOCOL_VERSION,
            "ops": list(SUPPORTED), "guarded": transport.guarded}


def op_unavailable(name: str, host: str) -> OpGen:
    raise ProtocolError(ErrorCode.OP_FAILED,
                        f"{name} needs the agent; {host} is reached through the ssh fallback (rhl-* helpers only)")
    yield []  # pragma: no cover - makes this a generator


# --------------------------------------------------------------------------- transport


class SshTransport(Transport):
    """Raw batches answered by `rhl-*` helpers over the real `ssh` client. Stateless between
    calls except for `guarded` (whether rhl-guard forces one helper per session)."""

    name = "ssh"

    def __init__(self, host: str, *, ssh_config: str | os.PathLike | None = None,
                 timeout: float = DEFAULT_TIMEOUT, connect_timeout: int = CONNECT_TIMEOUT,
                 guarded: bool | None = None, notice: Notice | None = None,
                 ssh_binary: str = SSH):
        if not host or host.startswith("-"):
            raise ValueError(f"not a host name: {host!r}")
        self.host = host
        self.ssh_config = ssh_config
        self.timeout = float(timeout)
        self.connect_timeout = int(connect_timeout)
        self.guarded = guarded
        self.notice = notice
        self.ssh_binary = ssh_binary
        self.calls = 0
        self.ssh_sessions = 0
        self.last_error: str | None = None
        self.noted_roots: set[str] = set()  # roots whose #11 notice was given (op_persistent)

    # ------------------------------------------------------------------ public

    def batch(self, ops: Sequence[Op]) -> list[Result]:
        """One raw result per op, as the agent would give. Raises ConnectionFailed/AuthFailed
        when ssh itself fails (host down, key refused)."""
        self.calls += 1
        results: list[dict[str, Any] | None] = [None] * len(ops)
        segment: list[tuple[int, OpGen]] = []
        for index, (name, args) in enumerate(ops):
            try:
                gen = self._op(str(name), args)
            except ProtocolError as exc:
                results[index] = error_result(exc)
                continue
            segment.append((index, gen))
            if name in MUTATING:
                # A mutation ends a segment: later ops must see its effect, as on the agent.
                self._drive(segment, results)
                segment = []
        self._drive(segment, results)
        return [r if r is not None else error_result(ProtocolError(ErrorCode.INTERNAL, "no result"))
                for r in results]

    def configure(self, *, notice: Notice | None = None, timeout: float | None = None,
                  accept_new_host_key: bool | None = None) -> None:
        """As Transport.configure; host keys are the ssh client's business (no such setting)."""
        super().configure(notice=notice)
        if timeout is not None:
            self.timeout = float(timeout)

    def close(self) -> None:
        """Nothing to close: every call is its own ssh process."""

    def describe(self) -> dict[str, Any]:
        return {"transport": self.name, "host": self.host, "guarded": self.guarded, "calls": self.calls,
                "ssh_sessions": self.ssh_sessions, "last_error": self.last_error}

    def __repr__(self) -> str:
        return f"SshTransport({self.host!r})"

    # ------------------------------------------------------------------ ops

    def _op(self, name: str, args: Any) -> OpGen:
        checked = validate_args(name, args if args is not None else {})
        if name == "ps":
            return op_ps(checked, self.host, self.server_id())
        if name == "persistent":
            return op_persistent(checked, self.host, self)
        if name == "inspect":
            return op_inspect(checked, self.host)
        if name == "logs":
            return op_logs(checked, self.host)
        if name == "stop":
            return op_stop(checked, self.host)
        if name == "rm":
            return op_rm(checked, self.host)
        if name == "clear":
            return op_clear(checked, self.host, self)
        if name == "start":
            return op_start(checked, self.host)
        if name == "hello":
            return op_hello(checked, self.host, self)
        return op_unavailable(name, self.host)

    def _drive(self, segment: list[tuple[int, OpGen]], results: list[Any]) -> None:
        """Run the generators of one segment, batching each round's helper calls."""
        pending: dict[int, tuple[OpGen, list[Argv]]] = {}
        # What a read-only helper said earlier in the segment answers a later round too (no
        # mutation lies between: a mutation ends the segment): e.g. the `rhl-ps --json` that
        # a persistent op asks for after a refused root, when a ps op asked it already. An op
        # asking the same helper again (start polling rhl-ps while a service starts) wants a
        # new answer: it never gets one it has had.
        seen: dict[Argv, HelperResult] = {}
        had: dict[int, set[Argv]] = {}
        for index, gen in segment:
            self._advance(index, gen, None, pending, results)
        while pending:
            wanted: list[Argv] = list(dict.fromkeys(argv for _, asks in pending.values() for argv in asks))
            stale = {argv for index, (_, asks) in pending.items() for argv in asks if argv in had.get(index, ())}
            missing = [argv for argv in wanted if argv not in seen or argv in stale]
            got = {argv: seen[argv] for argv in wanted if argv in seen and argv not in stale}
            if missing:
                got.update(self.run_helpers(missing))
            seen.update({argv: result for argv, result in got.items() if argv[0] in READ_ONLY_HELPERS})
            for index, (gen, asks) in list(pending.items()):
                del pending[index]
                had.setdefault(index, set()).update(asks)
                self._advance(index, gen, {argv: got[argv] for argv in asks}, pending, results)

    @staticmethod
    def _advance(index: int, gen: OpGen, reply: dict[Argv, HelperResult] | None,
                 pending: dict[int, tuple[OpGen, list[Argv]]], results: list[Any]) -> None:
        try:
            asks = gen.send(reply) if reply is not None else next(gen)
        except StopIteration as done:
            results[index] = ok_result(done.value)
        except ProtocolError as exc:
            results[index] = error_result(exc)
        else:
            pending[index] = (gen, asks)

    # ------------------------------------------------------------------ ssh

    def server_id(self) -> str | None:
        """Which account on which server this alias reaches: the user, host name and port
        `ssh -G` resolves it to (local, no network; asked anew each time, since the ssh
        config may change under a pooled transport). The agent path names the launcher
        state itself (AgentContext.state_id); here this is the best ssh can tell, and it
        errs towards "different": two names of one server that resolve to different host
        names still show their rows twice, never one server's rows hidden as another's.
        None when ssh cannot tell."""
        argv = [self.ssh_binary] + (["-F", os.fspath(self.ssh_config)] if self.ssh_config is not None else [])
        try:
            proc = subprocess.run([*argv, "-G", self.host], stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=self.connect_timeout)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if proc.returncode != 0:
            return None
        found = dict(line.split(" ", 1) for line in proc.stdout.decode("utf-8", "replace").splitlines()
                     if " " in line)
        parts = [found.get(name, "").strip().lower() for name in ("user", "hostname", "port")]
        if not all(parts):
            return None
        return "ssh:" + hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]

    def ssh_argv(self, remote_command: str) -> list[str]:
        """The local argv of one ssh call running `remote_command` on the host."""
        argv = [self.ssh_binary]
        if self.ssh_config is not None:
            argv += ["-F", os.fspath(self.ssh_config)]
        argv += ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout}", "-T",
                 self.host, remote_command]
        return argv

    def _limit(self, argvs: Iterable[Argv]) -> float:
        return self.timeout + self.connect_timeout + sum(_ALLOWANCE.get(argv[0], 0.0) for argv in argvs)

    def _ssh(self, remote_command: str, *, stdin: bytes | None, timeout: float) -> tuple[int, bytes, bytes]:
        try:
            proc = subprocess.run(self.ssh_argv(remote_command), input=stdin if stdin is not None else None,
                                  stdin=subprocess.DEVNULL if stdin is None else None,
                                  capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            self.last_error = f"ssh did not finish within {timeout:g} s"
            raise TimedOut(self.host, f"ssh did not finish within {timeout:g} s") from exc
        except OSError as exc:
            raise ConnectionFailed(self.host, f"cannot run {self.ssh_binary}: {exc.strerror or exc}") from exc
        finally:
            self.ssh_sessions += 1
        if proc.returncode == 255:
            failure = _ssh_failure(self.host, proc.stderr, proc.returncode)
            self.last_error = str(failure)
            raise failure
        return proc.returncode, proc.stdout, proc.stderr

    def run_helper(self, argv: Argv) -> HelperResult:
        """One helper, one ssh session."""
        command = f"{PATH_PREFIX} {shlex.join(argv)}"
        code, out, err = self._ssh(command, stdin=None, timeout=self._limit([argv]))
        return HelperResult(argv, code, out, err)

    def run_helpers(self, argvs: list[Argv]) -> dict[Argv, HelperResult]:
        """Run every helper of `argvs`: in one ssh session unless rhl-guard forbids it."""
        if len(argvs) == 1 or self.guarded:
            return {argv: self.run_helper(argv) for argv in argvs}
        marker = "@@seamless-service-" + secrets.token_hex(8)
        script = ['PATH="$HOME/miniforge3/bin:$HOME/miniconda3/bin:$PATH"; export PATH']
        for argv in argvs:
            script.append(f"{shlex.join(argv)} </dev/null; "
                          f"printf '\\n%s %d\\n' '{marker}' \"$?\"; printf '\\n%s\\n' '{marker}' >&2")
        code, out, err = self._ssh("sh -s", stdin=("\n".join(script) + "\n").encode(), timeout=self._limit(argvs))
        if code != 0 and GUARD_REJECTED in err:
            # rhl-guard allows one rhl-* helper per session and refused `sh`: one call each.
            self.guarded = True
            if self.notice is not None:
                self.notice(f"seamless-service: {self.host} allows only rhl-* helpers (rhl-guard): "
                            "one ssh session per helper")
            return {argv: self.run_helper(argv) for argv in argvs}
        return self._split(argvs, marker, code, out, err)

    def _split(self, argvs: list[Argv], marker: str, code: int, out: bytes, err: bytes) -> dict[Argv, HelperResult]:
        mark = marker.encode()
        outs = re.split(b"\n" + re.escape(mark) + rb" (\d+)\n", out)
        errs = re.split(b"\n" + re.escape(mark) + b"\n", err)
        # re.split with one group: [seg0, code0, seg1, code1, ..., tail]
        if len(outs) != 2 * len(argvs) + 1 or len(errs) != len(argvs) + 1:
            reason = err.decode("utf-8", errors="replace").strip().splitlines()[-1:] or [f"exit status {code}"]
            raise ConnectionFailed(self.host, f"the helpers' output could not be read ({reason[0]})")
        results = {}
        for i, argv in enumerate(argvs):
            results[argv] = HelperResult(argv, int(outs[2 * i + 1]), outs[2 * i], errs[i])
        return results
