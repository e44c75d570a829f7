"""Reading launcher state files, deriving a service's status, and rewriting a file as
rhl-stop does, in-process.

Matches `rhl-ps --json` row for row (ssh_guard/_state.py server_row/client_row), with
deliberate corrections of the helpers' defects (README, Deliberate differences):

* #15: a pid <= 0, a float that is not a whole number, or a pid beyond the kernel's range
  is *unusable*, not "alive" (rhl-ps reports pid 0/-1 alive, truncates 4.7 to 4 and crashes
  on huge pids).
* #16: a `starting` row whose pid is dead derives to `failed` (rhl-ps keeps it
  `starting` forever); its `live` is false.
* #36: a malformed, non-object or unreadable file does not abort the listing: it becomes a
  row with `status: "error"` and an `error` message; every other row is still returned.
  So does anything that is not a regular file (a FIFO, a link to a device: `could not
  read PATH: not a regular file (a FIFO)`), which rhl-ps would block on or read without
  end (agent/safe_read.py).
  So does a file the agent could not send on (protocol.wiresafe: an integer beyond 64
  bits such as a pid of 99999999999999999999, a lone-surrogate string, nesting deeper
  than 32 levels), a file over MAX_STATE_BYTES, and JSON that Python cannot parse at all
  (an integer of more than 4300 digits, arrays nested ~1000 deep). A file name that is
  not UTF-8 is shown escaped (`\\xNN`) as the row's key.

Everything else, including the field set, `json_status`, `live` and `meta: {}`, is as the
helper gives it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import stat
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from .. import rhl
from ..protocol.wiresafe import display_text, unsendable
from .safe_read import FileTooLarge, read_regular

# The launcher writes a few kB; a larger file is not its state, and reading it whole on
# every poll (and sending it on in each ps row) would cost without limit.
MAX_STATE_BYTES = 1 << 20

Signature = tuple[int, int, int, int]  # inode, size, mtime_ns, ctime_ns


def stat_signature(st: os.stat_result) -> Signature:
    """What tells one version of a file from another without reading it: writers here go
    through os.replace (new inode) and any in-place write moves ctime, so an unchanged
    signature means unchanged content short of a rewrite that keeps all four to the ns."""
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def pid_alive(pid: int) -> bool:
    """kill(pid, 0): ESRCH means dead, EPERM means alive (another user's process).

    Unlike the helpers, a zombie counts as dead: an orphaned service that exited stays a
    zombie until its parent reaps it, and "stale" should show as soon as it stopped.
    """
    return kill0(pid) and not _is_zombie(pid)


def kill0(pid: int) -> bool:
    """The bare kill(pid, 0) probe, as the helpers do it (a zombie still counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True


def _is_zombie(pid: int) -> bool:
    # os.open/os.read: a fifth of the cost of io.open on this hot path (one call per row).
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
    except OSError:
        return False  # no /proc (not Linux) or a race: trust kill()
    try:
        stat = os.read(fd, 512)
    except OSError:
        return False
    finally:
        os.close(fd)
    # The state letter follows the command name, which is wrapped in parentheses.
    state = stat[stat.rfind(b")") + 2:stat.rfind(b")") + 3]
    return state == b"Z"


class LivenessCache:
    """pid -> alive, remembered for a fraction of a second.

    A poll probes each pid once (kill + a /proc read to rule out zombies, ~15 us); the
    change token and the rows of the same poll, and concurrent polls of several clients,
    share the answer. A death is seen at most TTL seconds late.
    """

    TTL = 0.25

    def __init__(self, ctx: object = None):
        self._seen: dict[int, tuple[float, bool]] = {}

    def alive(self, pid: int) -> bool:
        now = time.monotonic()
        hit = self._seen.get(pid)
        if hit is not None and now - hit[0] < self.TTL:
            return hit[1]
        alive = pid_alive(pid)
        if len(self._seen) > 65_536:
            self._seen.clear()
        self._seen[pid] = (now, alive)
        return alive


class StateFileError(Exception):
    """A state file that cannot be used; the message says why, as rhl-ps would."""


StatePath = str | Path  # hot paths pass plain strings: pathlib costs more than the stat


def read_state(path: StatePath) -> dict[str, Any] | None:
    """The JSON object in `path`, None if it does not exist; StateFileError if unusable."""
    try:
        # Only a regular file, bounded (safe_read): a FIFO would block forever, a link
        # to /dev/zero would never end.
        text = read_regular(path, MAX_STATE_BYTES).decode("utf-8")
        data = json.loads(text)
    except FileNotFoundError:
        return None
    except FileTooLarge as exc:
        raise StateFileError(f"state file of {exc.size} bytes is larger than the "
                             f"{MAX_STATE_BYTES} bytes a state file may hold: {_shown(path)}") from None
    except json.JSONDecodeError as exc:
        raise StateFileError(f"malformed JSON in {_shown(path)}: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StateFileError(f"could not read {_shown(path)}: {display_text(str(exc))}") from None
    except (ValueError, RecursionError) as exc:
        # json's own limits: an integer of more than 4300 digits; nesting that exhausts
        # the parser's recursion (RecursionError)
        why = "nested too deeply to parse" if isinstance(exc, RecursionError) else str(exc).split("; use ")[0]
        raise StateFileError(f"malformed JSON in {_shown(path)}: {why}") from None
    if not isinstance(data, dict):
        raise StateFileError(f"state file must contain a JSON object: {_shown(path)}")
    return data


def read_sendable(path: StatePath) -> dict[str, Any] | None:
    """As read_state, and StateFileError if the object holds a value the agent cannot send
    (protocol.wiresafe): for readers whose answer carries the file's fields (rows)."""
    data = read_state(path)
    if data is not None:
        why = unsendable(data)
        if why is not None:
            raise StateFileError(f"state file holds a value the agent cannot send ({why}): {_shown(path)}")
    return data


def _shown(path: StatePath) -> str:
    return display_text(os.fspath(path))


def derive_status(data: dict[str, Any], *, check_pid: bool = True,
                  probe: Callable[[int], bool] | None = None) -> tuple[str, bool | None]:
    """(derived status, live) for a server state object (rhl.derive_status), the pid
    probed with pid_alive, or `probe(pid) -> bool` (e.g. a LivenessCache's `alive`)."""
    return rhl.derive_status(data, alive=probe or pid_alive, check_pid=check_pid)


def write_state_json(path: Path, data: dict[str, Any]) -> None:
    """Replace `path` with `json.dumps(data)` as rhl-stop writes it (key order kept, no
    trailing newline), but through a unique temp file in the same directory and keeping
    the file's mode (#19: rhl-stop's fixed `<key>.tmp` races and takes the umask)."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mode = 0o600
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(json.dumps(data))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class StateCache:
    """Parsed state files, keyed by path and stat signature (inode, size, mtime_ns, ctime_ns).

    A poll re-reads only files that changed: an unchanged file costs one stat instead of an
    open and a JSON parse. The launcher and rhl-stop write through os.replace (new inode),
    and any in-place write moves ctime, so a stale hit would need a rewrite that keeps
    inode, size and both timestamps to the nanosecond.
    """

    MAX_ENTRIES = 100_000

    def __init__(self, ctx: object = None):
        self._entries: dict[str, tuple[Signature, Any]] = {}
        self.rows = ServerRows()

    def forget(self, path: str) -> None:
        """Read `path` again next time, whatever its signature (it had a file event)."""
        self._entries.pop(path, None)

    def read(self, path: StatePath, st: os.stat_result | None = None) -> dict[str, Any] | None:
        """As read_state(path), from the cache when the file is unchanged. `st`: a stat of
        the file the caller just took (saves one)."""
        name = os.fspath(path)
        if st is None:
            try:
                st = os.stat(name)
            except FileNotFoundError:
                self._entries.pop(name, None)
                return None
            except OSError as exc:
                raise StateFileError(f"could not read {_shown(path)}: {display_text(str(exc))}") from None
        sig = stat_signature(st)
        hit = self._entries.get(name)
        if hit is not None and hit[0] == sig:
            value = hit[1]
        else:
            try:
                value = read_sendable(path)
            except StateFileError as exc:
                value = exc
            if value is None:
                return None
            if len(self._entries) >= self.MAX_ENTRIES:
                self._entries.clear()
            self._entries[name] = (sig, value)
        if isinstance(value, StateFileError):
            raise value
        return value


@functools.lru_cache(maxsize=1 << 16)  # the same file names on every poll
def key_of(path: StatePath) -> str:
    """The key a state file stands for: its name without `.json` (Path.stem, without pathlib)."""
    name = display_text(os.path.basename(os.fspath(path)))  # a non-UTF-8 name: escaped
    return name[:-5] if name.endswith(".json") and len(name) > 5 else Path(name).stem


def server_row(path: StatePath, *, check_pid: bool = True, cache: StateCache | None = None,
               probe: Any = None, st: os.stat_result | None = None) -> dict[str, Any]:
    """One `rhl-ps --json` server row for `path` (an error row if the file is unusable).
    With `cache`, the row's parts that only the file decides are kept per file version
    (ServerRows): a poll then builds the row from them and one liveness answer."""
    key = key_of(path)
    try:
        data = cache.read(path, st) if cache is not None else read_sendable(path)
    except StateFileError as exc:
        return error_row(key, str(exc))
    if data is None:  # vanished between listing and reading: report it, do not guess
        return error_row(key, f"state file vanished while reading: {_shown(path)}")
    if cache is not None:
        return cache.rows.row(os.fspath(path), key, data, check_pid, probe or pid_alive)
    row = _base_row(key, data)
    row["status"], row["live"] = derive_status(data, check_pid=check_pid, probe=probe)
    return row


def _base_row(key: str, data: dict[str, Any]) -> dict[str, Any]:
    """A server row without its derived status and liveness (placeholders keep the
    helper's field order)."""
    row = dict(data)  # shallow copy: cached objects are never mutated
    row["key"] = key
    if "status" in data and data["status"] is not None:
        row["json_status"] = data["status"]
    row["status"] = row["live"] = None
    if "meta" not in row:
        row["meta"] = {}
    return row


class ServerRows:
    """Server rows per parsed file version (the object StateCache returned for it): the
    fields the file decides, its usable pid, and the derived (status, live) per liveness
    answer, so that a poll of an unchanged file costs one copy and one liveness lookup
    (no derivation). A file read again (changed, or forgotten on a file event) is a new
    object, hence a new entry. Liveness is asked on every call, as without the cache."""

    MAX_ENTRIES = 100_000

    def __init__(self) -> None:
        # path -> (data object, base row, usable pid, {(check_pid, alive): (status, live)})
        self._memo: dict[str, tuple[Any, dict[str, Any], int | None, dict[Any, tuple[str, bool | None]]]] = {}

    def row(self, path: str, key: str, data: dict[str, Any], check_pid: bool,
            probe: Callable[[int], bool]) -> dict[str, Any]:
        hit = self._memo.get(path)
        if hit is None or hit[0] is not data:
            if len(self._memo) >= self.MAX_ENTRIES:
                self._memo.clear()
            hit = self._memo[path] = (data, _base_row(key, data), rhl.usable_pid(data.get("pid")), {})
        _data, base, pid, derived = hit
        # derive_status asks about this pid at most, and only with check_pid
        answer = probe(pid) if check_pid and pid is not None else None
        status = derived.get((check_pid, answer))
        if status is None:
            status = derived[(check_pid, answer)] = derive_status(data, check_pid=check_pid,
                                                                   probe=lambda _pid: bool(answer))
        row = base.copy()
        row["status"], row["live"] = status
        return row


def client_row(path: StatePath, *, cache: StateCache | None = None) -> dict[str, Any]:
    """One `rhl-ps --client --json` row for `path`."""
    key = key_of(path)
    try:
        data = cache.read(path) if cache is not None else read_sendable(path)
    except StateFileError as exc:
        return error_row(key, str(exc))
    if data is None:
        return error_row(key, f"state file vanished while reading: {_shown(path)}")
    row = dict(data)
    row["key"] = key
    row["host"] = data.get("hostname")
    row["ssh_host"] = data.get("tunneled-host") or data.get("ssh_hostname") or data.get("hostname")
    row["port"] = data.get("port")
    if "meta" not in row:
        row["meta"] = {}
    return row


def error_row(key: str, message: str) -> dict[str, Any]:
    return {"key": key, "status": "error", "live": None, "error": message, "meta": {}}


def list_state_files(directory: Path) -> list[Path]:
    """`*.json` in `directory`, sorted by name, as the helpers list them."""
    return [directory / name for name in state_file_names(directory)]


def state_file_names(directory: StatePath) -> list[str]:
    """The names of the `*.json` files in `directory`, sorted; [] if it cannot be listed."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    # As the helpers' glob("*.json") on Python 3.11 (which does match dot files); temp files
    # end in .tmp and are never listed.
    return sorted(name for name in names if name.endswith(".json"))
