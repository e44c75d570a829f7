"""`ps`: the rows of `rhl-ps --json` (server) or `rhl-ps --client --json`, in-process.

Args (protocol.schema OPS["ps"]): `side` ("server" | "client"), `no_status` (like
`--no-status`: no pid probes), `host` (client side only, like `--host`: keep rows whose
`ssh_host` equals it), `status`, and the key filters service/cluster/project/stage/
subproject/substage/mode/queue.

Returns `{"rows": [...], "token": str, "state": str, "watch": str}`. The token (agent/watch.py) is taken
*before* the files are read, so a client that follows with `wait(token)` never misses a
change that raced with this listing (at worst it gets one extra, harmless wake-up).
`state` names the launcher state read (AgentContext.state_id): a client that reached one
server under two names (two ssh aliases, two clusters) sees the same value twice and shows
its rows once. `watch` says how the state folders were looked at: "inotify" (only
files with an event re-read) or "stat" (every file stat-ed), agent/watch.py.

Rows are the helper's rows, field for field (statefiles.server_row / client_row), with
these deliberate differences:

* Corrected status derivation for server rows (statefiles: #15 unusable pids, #16 a
  `starting` row whose pid died is `failed`).
* #36: a malformed, non-object or unreadable file is an error row (`status: "error"`,
  `error: <the helper's message>`) instead of aborting the listing, and so is one that is
  not a regular file (a FIFO, a link to a device: rhl-ps blocks on it or reads it without
  end; agent/safe_read.py); the other rows are all
  returned. A row whose file stem is not a valid key (so it could not be inspected or
  stopped) carries `"valid_key": false`; valid rows carry no such field.
* A file that vanishes between listing and reading (removed by `rm`) is left out, as if
  the listing had happened a moment later. (rhl-ps would show it as a bare `failed` row.)
* Client rows get one extra field, `process`, and the `status` filter applies to it
  (fixing #6, where `--status` in the client view can only ever match "stale"):
    - the raw `status` of the client file when it has one (in practice "stale", written
      by `seamless-service-stop`; error rows: "error");
    - else, when this machine also holds the *server* file of the same key and that
      file's port is the one the client file points at (`tunneled-port`, else `port`),
      that server row's derived status — a local service that died shows "stale" rather
      than the stale-but-unmarked "client" of #40;
    - else "client": a connection file exists, but its service lives on another machine
      whose liveness this agent cannot see. Such rows match no `status` filter; ask the
      server side for that.
  Client rows keep no `status` field unless the file has one, exactly as rhl-ps.

Filters on service/cluster/... use protocol.keys.row_matches: the row's `meta` block when
it has one, else every reading of the key (no #30 mis-splits of SUBSTAGE or of clusters
containing `-rw-`). Rows whose key is not a Seamless key pass only when no such filter
is set. All filters combine with AND.
"""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path
from typing import Any, Callable

from ...protocol import ErrorCode, ProtocolError
from ...protocol.keys import META_FIELDS, is_valid_key, row_matches
from ...rhl import client_process
from .. import statefiles
from ..context import AgentContext
from ..watch import Snapshot, Watcher, watcher


def run(ctx: AgentContext, args: dict[str, Any]) -> dict[str, Any]:
    # protocol.schema fills in every argument of the op (dispatch validates each call)
    side, host = args["side"], args["host"]
    if host and side != "client":
        # Same refusal as `rhl-ps --host` without `--client`.
        raise ProtocolError(ErrorCode.BAD_ARGS, "ps: the 'host' filter needs side='client'")
    check_pid = not args["no_status"]
    files = watcher(ctx)
    snap = files.snapshot()  # before reading: see module docstring
    if side == "client":
        rows = client_rows(ctx, files, check_pid=check_pid)
        if host:
            rows = [row for row in rows if row.get("ssh_host") == host]
        status_field = "process"
    else:
        rows = _kept_server_rows(ctx, files, snap, check_pid)
        status_field = "status"
    wanted = args["status"]
    if wanted:
        rows = [row for row in rows if row.get(status_field) == wanted]
    filters = {name: args[name] for name in META_FIELDS if args[name] is not None}
    if filters:
        rows = [row for row in rows if row_matches(row, filters)]
    return {"rows": rows, "token": snap.token, "state": ctx.state_id(), "watch": files.mode}


class _KeptRows:
    """The server rows of the last `ps`, reused while the state folders' versions (no file
    event, watch._Folder.version), `no_status` and every pid's liveness answer are those
    they were made with: rows are a function of the files and those answers only. A poll
    of 1,000 unchanged services then costs the scan, not 1,000 rows built again."""

    def __init__(self, ctx: object = None) -> None:
        self.key: tuple | None = None
        self.rows: list[dict[str, Any]] = []
        self.lock = threading.Lock()


def _kept_server_rows(ctx: AgentContext, files: Watcher, snap: Snapshot,
                      check_pid: bool) -> list[dict[str, Any]]:
    kept: _KeptRows = ctx.shared("ps_rows", _KeptRows)
    key = (snap.versions["server"], check_pid, snap.answers if check_pid else b"")
    with kept.lock:
        if kept.key == key:
            return list(kept.rows)   # the row dicts are never changed after this
    missed: list[int] = []
    probe = files.liveness.alive

    def answer(pid: int) -> bool:
        # the answer the token (and the key) was made with, so the rows match the key
        found = snap.alive.get(pid)
        if found is None:
            missed.append(pid)
            return probe(pid)
        return found

    rows = server_rows(snap.seen["server"], files.states, check_pid=check_pid, probe=answer)
    if not missed:
        with kept.lock:
            kept.key, kept.rows = key, rows
        return list(rows)
    return rows


def server_rows(entries: list[tuple[str, os.stat_result]], cache: statefiles.StateCache, *,
                check_pid: bool, probe: Callable[[int], bool]) -> list[dict[str, Any]]:
    """Every server row, sorted by file name, as `rhl-ps --json` (with the corrections).
    `entries`: the (path, stat) pairs of a scan just taken (watch.Watcher.snapshot), so an
    unchanged file is neither stat-ed nor read again; `probe`: the liveness answers."""
    rows = []
    for path, st in entries:
        row = statefiles.server_row(path, check_pid=check_pid, cache=cache, probe=probe, st=st)
        if _vanished(row, path):
            continue
        rows.append(_mark_key(row))
    return rows


def client_rows(ctx: AgentContext, files: Watcher, *, check_pid: bool) -> list[dict[str, Any]]:
    """Every client row, sorted by file name, as `rhl-ps --client --json` plus `process`."""
    rows = []
    for path in statefiles.list_state_files(ctx.client_dir):
        row = statefiles.client_row(path, cache=files.states)
        if _vanished(row, path):
            continue
        row["process"] = _client_process(ctx, files, row, check_pid=check_pid)
        rows.append(_mark_key(row))
    return rows


def _client_process(ctx: AgentContext, files: Watcher, row: dict[str, Any], *, check_pid: bool) -> str:
    def server_row(key: str) -> dict[str, Any] | None:
        server_path = ctx.server_dir / f"{key}.json"
        if not server_path.is_file():
            return None
        # the watcher's caches: the file parsed once, its pid probed once per poll
        return statefiles.server_row(server_path, check_pid=check_pid, cache=files.states,
                                     probe=files.liveness.alive)

    return client_process(row, server_row)


def _vanished(row: dict[str, Any], path: str | Path) -> bool:
    # statefiles turns a file that disappeared mid-listing into an error row; os.replace
    # never makes a name disappear, so only an unlink (rm) does: the service is gone.
    return row.get("status") == "error" and not os.path.lexists(path)


def _mark_key(row: dict[str, Any]) -> dict[str, Any]:
    key = row.get("key")
    if not (isinstance(key, str) and _valid_key_cached(key)):
        row["valid_key"] = False
    return row


@functools.lru_cache(maxsize=1 << 16)
def _valid_key_cached(key: str) -> bool:
    # the same few hundred file names on every poll: the regex runs once per name
    return is_valid_key(key)
