"""What the agent and the ssh transport both know about remote-http-launcher's `rhl-*` helpers.

The agent reads the launcher's state files itself and runs `rhl-stop`/`rhl-rm`/
`rhl-launch-service` in-process; the ssh transport (client/transport/ssh.py) runs the same
helpers on the host over per-call ssh. Both must give the same answers, so the rules they
share are written here once:

* the status words, and which of them mean a process may be running;
* which pids can name a process, and how a state object's status is derived from its
  fields and a liveness answer (README, Deliberate differences #15, #16);
* which keys are stopped without rhl-stop (#13, #14, #15, #17), and what rhl-stop's outcome
  lines mean;
* which keys `rm` refuses (#38), and what rhl-rm prints;
* when `clear` is refused because a service runs in the directory (#23);
* the path policy's always-on heuristics (rhl-guard's) and the words of its refusals;
* which client rows show the status of this machine's server row (#6, #40);
* rhl-launch-service's arguments and the launcher's handshake.

No I/O: liveness comes in as an argument (a callable or what rhl-ps measured), helper
output as text. Imports nothing but the standard library and protocol/.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Callable, Iterable, Mapping

from .protocol.keys import is_valid_key, parse_key

# --------------------------------------------------------------------------- statuses

RUNNING = "running"
STARTING = "starting"
FAILED = "failed"
STALE = "stale"
ERROR = "error"        # a row whose state file could not be used (the agent's, #36)
CLIENT = "client"      # `process` of a client row whose service's liveness is unknown here
LIVE_STATUSES = (RUNNING, STARTING)   # a process of the service may run


def is_live(row: Mapping[str, Any] | None) -> bool:
    """True for a server row whose status says running/starting and whose pid was found alive."""
    return row is not None and row.get("status") in LIVE_STATUSES and row.get("live") is True


# --------------------------------------------------------------------------- pids

# Linux pid_max can be at most 2**22; anything larger cannot be a process.
PID_LIMIT = 1 << 22


def usable_pid(value: object) -> int | None:
    """The pid as an int if it can name a real process, else None (#14, #15: 0, -1, 4.7
    and huge numbers name none)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        if not value.is_integer():
            return None
        value = int(value)
    elif isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            return None
    elif not isinstance(value, int):
        return None
    if value <= 0 or value >= PID_LIMIT:
        return None
    return value


def helper_pid(value: object) -> int | None:
    """The pid as rhl-stop/rhl-ps parse it (`int()` on anything but bool)."""
    if isinstance(value, bool):
        return None
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None


def derive_status(data: Mapping[str, Any], *, alive: Callable[[int], bool],
                  check_pid: bool = True) -> tuple[str, bool | None]:
    """(derived status, live) of a server state object, as rhl-ps derives it but with #15
    (an unusable pid is not alive: `alive` is never asked about it) and #16 (a `starting`
    object whose pid is dead is `failed`).

    `alive(pid)` answers for a usable pid; `check_pid` false (rhl-ps --no-status) asks
    nothing and keeps the file's status."""
    json_status = data.get("status")
    status = json_status if isinstance(json_status, str) else FAILED
    raw_pid = data.get("pid")
    if status == STARTING and helper_pid(raw_pid) is None:
        return status, None
    if status == FAILED or data.get("dry_run"):
        return status, None
    if helper_pid(raw_pid) is not None:
        if not check_pid:
            return status, None
        pid = usable_pid(raw_pid)
        live = alive(pid) if pid is not None else False
        if status == RUNNING and not live:
            return STALE, False
        if status == STARTING and not live:
            return FAILED, False
        return status, live
    if status == RUNNING:
        return (STALE if check_pid else RUNNING), None
    return status, None


# --------------------------------------------------------------------------- stop

STOP_HELPER = "rhl-stop"
ALREADY_GONE = "already gone"      # rhl-stop's word for a pid that no longer exists
MISSING_STATE = "missing state"
NOT_RUNNING = "not running"
INVALID_PID = "invalid pid"
# rhl-stop outcome -> (stopped, signalled). "kill required" is printed after SIGKILL was
# sent: the service is gone then too.
STOP_OUTCOMES = {
    "stopped": (True, True),
    "kill required": (True, True),
    ALREADY_GONE: (True, False),
    "permission denied": (False, False),
    MISSING_STATE: (False, False),
}
GONE = tuple(outcome for outcome, (stopped, _) in STOP_OUTCOMES.items() if stopped)


def stop_flags(outcome: str) -> tuple[bool, bool]:
    """(stopped, signalled) for an outcome rhl-stop printed; an unknown one is neither."""
    return STOP_OUTCOMES.get(outcome, (False, False))


@dataclass(frozen=True)
class StopVerdict:
    """A key decided without rhl-stop: its outcome, whether it is known not to run."""

    outcome: str
    stopped: bool
    detail: str | None = None


def stop_without_helper(state: Mapping[str, Any], *, json_status: Any) -> StopVerdict | None:
    """The verdict for a key whose state alone says rhl-stop must not see it, else None
    (its liveness decides). `json_status` is the status the file holds (a server row's
    `json_status`, not its derived status).

    #13: a key without a usable pid aborts rhl-stop's whole batch: it never reaches it.
    A dry run, or a stale/failed/status-less object without a pid, runs nothing of ours:
    "not running". A running/starting one without a usable pid (#14, #15): "invalid pid"."""
    live_status = json_status in LIVE_STATUSES
    pid = usable_pid(state.get("pid"))
    if state.get("dry_run") or (pid is None and not live_status):
        return StopVerdict(NOT_RUNNING, True)
    if pid is None:
        return StopVerdict(INVALID_PID, False, f"pid {state.get('pid')!r} cannot name a process")
    return None


def outcome_lines(stdout: str, keys: Iterable[str]) -> dict[str, str]:
    """{key: outcome} from rhl-stop's `KEY: OUTCOME` lines, for the keys asked about.
    Keys cannot hold ':' or spaces, so the first ": " ends the key."""
    wanted = set(keys)
    found: dict[str, str] = {}
    for line in stdout.splitlines():
        key, sep, outcome = line.partition(": ")
        if sep and key in wanted:
            found[key] = outcome.strip()
    return found


# --------------------------------------------------------------------------- rm

RM_HELPER = "rhl-rm"
REFUSED_RUNNING = "refused: service is running (stop it first, or force)"
_COULD_NOT = re.compile(r"^rhl-rm: could not remove (.+?\.json): (.*)$")


def rm_sides(client: bool, server: bool) -> tuple[bool, list[str]]:
    """(whether the server file goes, rhl-rm's flags): neither flag means both sides, as
    with the helper."""
    flags = ["--client"] if client and not server else ["--server"] if server and not client else []
    return server or not client, flags


def plan_rm(keys: Iterable[str], *, force: bool,
            live_pid: Callable[[str], int | None]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """(per-key outcomes decided so far, the keys to pass to rhl-rm), each key once.

    #38: `live_pid(key)` is the pid of the key's live service (None: nothing runs, or its
    server file is not removed); such a key is refused unless `force`, which removes it
    with a warning."""
    outcomes: dict[str, dict[str, Any]] = {}
    to_remove: list[str] = []
    for key in keys:
        if key in outcomes or key in to_remove:
            continue
        pid = live_pid(key)
        if pid is not None and not force:
            outcomes[key] = {"outcome": REFUSED_RUNNING, "pid": pid}
            continue
        if pid is not None:
            outcomes[key] = {"warning": f"service process {pid} is still running; its state is gone"}
        to_remove.append(key)
    return outcomes, to_remove


def key_of_path(path: str) -> str:
    """The key a state file path stands for (its name without `.json`)."""
    name = os.path.basename(path)
    return name[: -len(".json")] if name.endswith(".json") else name


def read_rm_output(to_remove: list[str], stdout: str, stderr: str, exit_status: int | None,
                   outcomes: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Parse what rhl-rm printed (`removed <path>`, `<key>: not found`, `could not remove`)
    into `outcomes`; return the removed paths per key. rhl-rm stops at the first file it
    cannot remove: a key it never reached is an error."""
    removed: dict[str, list[str]] = {key: [] for key in to_remove}
    wanted = set(to_remove)
    for line in stdout.splitlines():
        if line.startswith("removed "):
            path = line[len("removed "):]
            if key_of_path(path) in wanted:
                removed[key_of_path(path)].append(path)
        elif line.endswith(": not found") and line[: -len(": not found")] in wanted:
            outcomes.setdefault(line[: -len(": not found")], {})["outcome"] = "not found"
    for line in stderr.splitlines():
        match = _COULD_NOT.match(line.strip())
        if match and key_of_path(match.group(1)) in wanted:
            outcomes.setdefault(key_of_path(match.group(1)), {})["outcome"] = (
                f"error: could not remove {match.group(1)}: {match.group(2)}")
    for key in to_remove:
        entry = outcomes.setdefault(key, {})
        if "outcome" in entry:
            continue
        if removed[key]:
            entry["outcome"] = "removed"
        else:
            why = "an earlier error stopped it" if exit_status else "no output for this key"
            entry["outcome"] = f"error: {RM_HELPER} did not process this key ({why})"
    return removed


def rm_results(keys: list[str], outcomes: dict[str, dict[str, Any]],
               removed: dict[str, list[str]]) -> list[dict[str, Any]]:
    """The `rm` op's per-key results, in argument order."""
    results = []
    for key in keys:
        entry = outcomes[key]
        result: dict[str, Any] = {"key": key, "removed": list(removed.get(key, [])), "outcome": entry["outcome"]}
        if "pid" in entry:
            result["pid"] = entry["pid"]
        if "warning" in entry and entry["outcome"] == "removed":  # only if the state is really gone
            result["warning"] = entry["warning"]
        results.append(result)
    return results


# --------------------------------------------------------------------------- clear


def clear_conflict(key: str | None, key_row: Mapping[str, Any] | None, rows: Iterable[Mapping[str, Any]],
                   inside: Callable[[Any], bool]) -> str | None:
    """Why `clear` must not run (#23), or None: the service `key` (its row `key_row`) is
    live, or a live service's workdir is the directory or lies below it (`inside(workdir)`;
    a project-level clear wipes all its stages)."""
    if key is not None and is_live(key_row):
        return f"service {key} is running; stop it first"
    for row in rows:
        if is_live(row) and inside(row.get("workdir")):
            return f"service {row.get('key')} is running in {row.get('workdir')}; stop it first"
    return None


# --------------------------------------------------------------------------- path policy

# The path policy's always-on heuristics (rhl-guard's, every mode): the agent applies them
# to every path (agent/policy.py), the ssh fallback to `clear` when no rhl-guard is forced
# on the key (client/transport/ssh.py). The messages are the guard's.
SYSTEM_ROOTS = frozenset({
    "/", "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib64",
    "/boot", "/sys", "/proc", "/run", "/var", "/opt",
})
# The default ("seamless") policy's markers: `clear` needs one of them, a regular file
# directly in the resolved directory.
SEAMLESS_MARKERS = ("seamless.db", ".HASHSERVER_PREFIX")


def has_dot_segment(path: PurePosixPath) -> bool:
    return any(part != "/" and part.startswith(".") for part in path.parts)


def is_relative_to(path: PurePosixPath, parent: PurePosixPath) -> bool:
    """`path` is `parent` or lies below it (lexically: both already resolved)."""
    try:
        path.relative_to(parent)
        return True
    except ValueError:
        return False


def heuristic_refusal(path: str | PurePosixPath, resolved: str | PurePosixPath,
                      home: str | PurePosixPath) -> str | None:
    """Why the always-on heuristics refuse `path` (absolute, `~` expanded) whose symlinks
    resolve to `resolved`, on a host where the user's resolved HOME is `home`; None if
    they let it through. In the guard's order: $HOME or an ancestor of it, a dot-prefixed
    segment (so no `..`) in the path or its resolution, a system root."""
    path, resolved, home = PurePosixPath(path), PurePosixPath(resolved), PurePosixPath(home)
    if resolved == home or is_relative_to(home, resolved):
        return f"path must not be $HOME or an ancestor of $HOME: {path}"
    if has_dot_segment(path) or has_dot_segment(resolved):
        return f"path must not contain dot-prefixed segments: {path}"
    if resolved.as_posix() in SYSTEM_ROOTS:
        return system_root_refusal(path)
    return None


def system_root_refusal(path: str | PurePosixPath) -> str:
    return f"refusing system-root directory: {path}"


def unresolvable_refusal(path: str | PurePosixPath) -> str:
    """A path whose symlinks cannot be resolved (a loop): the guard dies on it, a refusal."""
    return f"could not resolve path (symlink loop?): {path}"


def marker_refusal(markers: Iterable[str], path: str | PurePosixPath) -> str:
    return f"path does not contain required marker file ({', '.join(markers)}): {path}"


# --------------------------------------------------------------------------- client rows


def client_process(row: Mapping[str, Any], server_row: Callable[[str], Mapping[str, Any] | None]) -> str:
    """The `process` of a client row (#6, #40): the client file's own status when it has
    one (in practice "stale"); else the status of this machine's server row of the same
    key (`server_row(key)`, None if there is none) when that row's port is the one the
    client file points at (`tunneled-port`, else `port`: a relaunch on another port leaves
    an outdated client file behind); else "client" (its liveness is not known here)."""
    raw = row.get("status")
    if isinstance(raw, str):
        return raw
    key = row.get("key")
    if not is_valid_key(key):
        return CLIENT
    server = server_row(key)
    if server is None or server.get("status") == ERROR:
        return CLIENT
    target = row.get("tunneled-port", row.get("port"))
    if target is None or server.get("port") != target:
        return CLIENT
    return str(server["status"])


# --------------------------------------------------------------------------- start

LAUNCH_HELPER = "rhl-launch-service"
# The server directory remote-http-launcher names in the command of a remote launch (and of
# a local one with REMOTE_HTTP_LAUNCHER_DIR unset): `_default_server_directory()`.
LAUNCHER_SERVER_DIR = "~/.remote-http-launcher/server"
STATUS_FILE_FLAG = "--status-file"
# The start op's outcome for the status the service reached.
START_OUTCOMES = {RUNNING: "started", STARTING: STARTING, FAILED: FAILED}


def status_file_arg(key: str) -> str:
    """The status file remote-http-launcher passes in a service's command line."""
    return f"{LAUNCHER_SERVER_DIR}/{key}.json"


def launch_args(args: Mapping[str, Any], argv: list[str]) -> list[str]:
    """rhl-launch-service's arguments for a start op's `args` and the service command
    `argv`, in remote_http_launcher.RemoteState.launch_process's order."""
    out = ["--key", args["key"], "--workdir", args["workdir"]]
    if args["conda_env"]:
        out += ["--conda-env", args["conda_env"]]
    if args["network_interface"]:
        out += ["--network-interface", args["network_interface"]]
    if args["parameters"] is not None:
        out += ["--parameters", args["parameters"]]
    if args["meta"] is not None:
        out += ["--meta", args["meta"]]
    return [*out, "--", *argv]


# --------------------------------------------------------------------------- handshake

# The launcher's handshake (its tools.yaml): GET /healthcheck on `port`, except
# daskserver / pure-daskserver: `handshake: {path: health, port_name: dashboard_port}`.
HANDSHAKE_PATH = "/healthcheck"
DASK_SERVICES = ("daskserver", "pure-daskserver")
DASK_HANDSHAKE = ("/health", "dashboard_port")
_LOOPBACK_V4 = {"", "0.0.0.0", "localhost", "*", "127.0.0.1"}
_LOOPBACK_V6 = {"::", "[::]", "::1", "[::1]"}


def connect_host(interface: Any) -> str:
    """Where to reach a service bound to `interface` from its own machine (a wildcard or
    `localhost` bind is reached at the loopback address)."""
    if not isinstance(interface, str) or interface.strip() in _LOOPBACK_V4:
        return "127.0.0.1"
    interface = interface.strip()
    if interface in _LOOPBACK_V6:
        return "::1"
    return interface.strip("[]")


def usable_port(value: Any) -> int | None:
    """The port as an int if a service can listen on it, else None."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536:
        return value
    return None


def handshake_target(row: Mapping[str, Any]) -> tuple[str, int | None]:
    """(path, port) of the launcher handshake for the service of `row`."""
    if parse_key(row.get("key")).get("service") in DASK_SERVICES:
        path, port_name = DASK_HANDSHAKE
        port = usable_port(row.get(port_name))
        if port is not None:
            return path, port
    return HANDSHAKE_PATH, usable_port(row.get("port"))
