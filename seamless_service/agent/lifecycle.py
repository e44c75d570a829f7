"""One agent per user per server: its files, finding it, starting it detached, stopping it.

Files in <base>/agent/ (folder 0700, files 0600, written atomically):

    agent.json   pid, port, host, protocol, version, started, python, idle_timeout, path_policy
    secret       the random secret clients must prove (hex); made fresh by each agent
    agent.lock   flock()ed by the serving agent for its whole life (never deleted)
    start.lock   serialises concurrent `start`s so they cannot spawn two agents
    agent.log    the detached agent's stdout/stderr
    config.yaml  optional server-side config: path_policy, idle_timeout

An agent "runs" when agent.json names a live pid AND agent.lock is held (by that pid, where
/proc/locks can tell). A SIGKILLed agent leaves agent.json behind, but its lock dies with
it, so the next start sees a stale file and replaces it.

agent.json is not trusted beyond that. An agent whose agent.json is missing, corrupt or
names another pid still holds agent.lock: /proc/locks names it (an "orphan": `status`
says what is wrong, `stop` stops it, `start` replaces it). And a port read from the file
must answer the handshake with the agent's secret before `status` or `start` reports it.

Import-light on purpose (no rpyc): `agent status`/`stop` and the client use this module.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from .. import __version__
from ..protocol.auth import secret_key
from ..protocol.version import PROTOCOL_VERSION
from ..rhl import usable_pid
from . import paths, procinfo
from .defaults import HOST, START_TIMEOUT, STOP_TIMEOUT  # noqa: F401 - HOST re-exported (server.py)
from .statefiles import pid_alive

STATE_NAME = "agent.json"
SECRET_NAME = "secret"
LOCK_NAME = "agent.lock"
START_LOCK_NAME = "start.lock"
LOG_NAME = "agent.log"
CONFIG_NAME = "config.yaml"

DEFAULT_IDLE_TIMEOUT = 3600.0
DEFAULT_POLICY_SPEC = "seamless"
CONFIG_KEYS = ("path_policy", "idle_timeout")
LOG_ROTATE_BYTES = 4 << 20
LOCK_RETRY = 0.5   # a status probe holds agent.lock for microseconds; a starting agent retries
# A lock holder younger than this may still be starting: it writes agent.json right after
# it listens. Older, with no usable agent.json, it is an orphan.
ORPHAN_GRACE = 3.0
PROBE_TIMEOUT = 3.0  # the handshake that proves a port is our agent's


class LifecycleError(Exception):
    """The agent could not be started, found or stopped; the message is one readable line."""

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(LifecycleError):
    """Bad server-side configuration (config.yaml or flags)."""

    exit_code = 2


# ---------------------------------------------------------------- files


def agent_dir(base: Path | None = None) -> Path:
    return paths.agent_dir(Path(base) if base is not None else None)


def state_path(base: Path | None = None) -> Path:
    return agent_dir(base) / STATE_NAME


def secret_path(base: Path | None = None) -> Path:
    return agent_dir(base) / SECRET_NAME


def log_path(base: Path | None = None) -> Path:
    return agent_dir(base) / LOG_NAME


def ensure_agent_dir(base: Path | None = None) -> Path:
    """The agent folder, created 0700 (tightened to 0700 if it exists looser)."""
    folder = agent_dir(base)
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = folder.stat()
        if st.st_uid != os.getuid():
            raise LifecycleError(f"refusing to use {folder}: it belongs to uid {st.st_uid}, not to you")
        if st.st_mode & 0o777 != 0o700:
            folder.chmod(0o700)
    except OSError as exc:
        raise LifecycleError(f"cannot prepare the agent folder {folder}: {exc.strerror or exc}") from None
    return folder


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` with mode 0600 so that readers see the old or the new file, never half."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    # Makes the rename durable; best effort (some file systems refuse fsync on a folder).
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_secret(base: Path | None, secret: str) -> Path:
    secret_key(secret)  # never write something clients could not use
    path = secret_path(base)
    atomic_write(path, (secret + "\n").encode("ascii"))
    return path


def read_secret(base: Path | None = None) -> str:
    """The running agent's secret; LifecycleError (without its content) if missing or malformed."""
    path = secret_path(base)
    try:
        text = path.read_text(encoding="ascii").strip()
        secret_key(text)
    except FileNotFoundError:
        raise LifecycleError(f"no agent secret at {path}: is the agent running?") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise LifecycleError(f"unusable agent secret file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return text


def write_state(base: Path | None, info: dict[str, Any]) -> Path:
    path = state_path(base)
    atomic_write(path, (json.dumps(info, sort_keys=True) + "\n").encode("utf-8"))
    return path


def read_state(base: Path | None = None) -> dict[str, Any] | None:
    """agent.json as a dict; None if missing or unusable (an unusable file counts as stale)."""
    try:
        data = json.loads(state_path(base).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def remove_files(base: Path | None = None) -> None:
    """Remove agent.json and secret (call only while holding agent.lock or after the agent died)."""
    for path in (state_path(base), secret_path(base)):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


# ---------------------------------------------------------------- locks and processes


def acquire_agent_lock(base: Path | None = None, wait: float = LOCK_RETRY) -> int | None:
    """An fd holding agent.lock exclusively, or None if another process holds it."""
    path = agent_dir(base) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                return None
            time.sleep(0.02)


def release_agent_lock(fd: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)
    with contextlib.suppress(OSError):
        os.close(fd)


def lock_held(base: Path | None = None) -> bool:
    """True if some process holds agent.lock (probed with a shared lock, released at once)."""
    try:
        fd = os.open(agent_dir(base) / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops our probe lock, if we got it
    return False


def lock_holders(base: Path | None = None) -> set[int] | None:
    """Pids holding a flock on agent.lock per /proc/locks; None where that cannot be read."""
    try:
        inode = (agent_dir(base) / LOCK_NAME).stat().st_ino
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    holders = set()
    for line in lines:
        # "1: FLOCK  ADVISORY  WRITE 1234 00:2d:5678 0 EOF"; waiters carry "->" and are skipped
        fields = line.split()
        if len(fields) < 6 or "->" in fields or fields[1] != "FLOCK":
            continue
        try:
            pid = int(fields[4])
            ino = int(fields[5].rsplit(":", 1)[1])
        except (ValueError, IndexError):
            continue
        if ino == inode:
            holders.add(pid)
    return holders


def process_alive(pid: int) -> bool:
    """kill(pid, 0), but a zombie (exited, not yet reaped) counts as dead and is reaped if ours."""
    if not pid_alive(pid):
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    fields = stat.rpartition(")")[2].split()
    if fields and fields[0] in ("Z", "X"):
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        return False
    return True


# ---------------------------------------------------------------- finding, stopping


def _with_paths(base: Path | None, state: dict[str, Any]) -> dict[str, Any]:
    info = dict(state)
    info["state_path"] = str(state_path(base))
    info["secret_path"] = str(secret_path(base))
    info["log_path"] = str(log_path(base))
    return info


def find_running(base: Path | None = None) -> dict[str, Any] | None:
    """The running agent's state (plus file paths), or None if there is none or only a stale file."""
    state = read_state(base)
    if state is None:
        return None
    pid = usable_pid(state.get("pid"))
    if pid is None or not isinstance(state.get("port"), int) or not process_alive(pid):
        return None
    if not lock_held(base):
        return None
    holders = lock_holders(base)
    if holders and pid not in holders:
        return None  # the pid was reused by another process; the lock belongs to someone else
    return _with_paths(base, state)


def _state_problem(base: Path | None, holder: int) -> str:
    """Why agent.json does not lead to the agent `holder` (which holds agent.lock)."""
    path = state_path(base)
    if not path.exists():
        return f"its state file {path} is missing"
    state = read_state(base)
    if state is None:
        return f"its state file {path} is unreadable (not a JSON object)"
    if usable_pid(state.get("pid")) != holder:
        return f"its state file {path} names pid {state.get('pid')!r}, not {holder}"
    return f"its state file {path} has no usable port ({state.get('port')!r})"


def _looks_like_agent(argv: tuple[str, ...]) -> bool:
    # `python -m seamless_service agent serve ...` or `seamless-service agent serve ...`
    return "agent" in argv and "serve" in argv[argv.index("agent"):]


def find_orphan(base: Path | None = None, grace: float = ORPHAN_GRACE) -> dict[str, Any] | None:
    """An agent of ours that holds agent.lock but cannot be found through agent.json:
    {"pid", "problem"} (plus file paths); None if there is none, or if the holder started
    less than `grace` seconds ago (it may not have written agent.json yet)."""
    if find_running(base) is not None or not lock_held(base):
        return None
    for pid in sorted(lock_holders(base) or ()):
        proc = procinfo.read_proc(pid)
        if pid == os.getpid() or proc is None or proc.zombie or proc.uids[:1] != (os.getuid(),):
            continue
        if not _looks_like_agent(proc.argv):
            continue
        if proc.start_time is not None and time.time() - proc.start_time < grace:
            return None
        return _with_paths(base, {"pid": pid, "problem": _state_problem(base, pid)})
    return None


def probe(info: dict[str, Any], base: Path | None = None, timeout: float = PROBE_TIMEOUT) -> str | None:
    """None if the port in `info` answers the handshake as our agent (proving it knows the
    secret), else why not. An agent at its connection limit says so: that counts as ours."""
    from ..client.transport.agent_conn import AgentBusyError, AgentConnectionError, client_handshake

    port = info.get("port")
    where = f"port {port}"
    try:
        secret = read_secret(base)
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            client_handshake(sock, secret, timeout=timeout, where=where)
    except AgentBusyError:
        return None
    except (LifecycleError, AgentConnectionError) as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot connect to {where}: {exc.strerror or exc}"
    return None


def status(base: Path | None = None) -> dict[str, Any] | None:
    """The running agent (with "uptime"), None if none runs. An agent that runs but cannot be
    used (an orphan, or its port does not answer as it) comes back with a "problem"."""
    info = find_running(base)
    if info is None:
        return find_orphan(base)
    if isinstance(info.get("started"), (int, float)):
        info["uptime"] = max(0.0, time.time() - info["started"])
    problem = probe(info, base)
    if problem is not None:
        info["problem"] = f"port {info['port']} in its state file does not answer as the agent: {problem}"
    return info


def clean_stale(base: Path | None = None) -> bool:
    """Remove agent.json/secret if no agent holds the lock; True if nothing is serving."""
    if not agent_dir(base).is_dir():
        return True
    fd = acquire_agent_lock(base, wait=0)
    if fd is None:
        return False
    try:
        remove_files(base)
    finally:
        release_agent_lock(fd)
    return True


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while process_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def stop(base: Path | None = None, timeout: float = STOP_TIMEOUT) -> bool:
    """SIGTERM the running agent (or an orphan, however young), SIGKILL it if it lingers;
    True if an agent was stopped."""
    info = find_running(base) or find_orphan(base, grace=0)
    if info is None:
        clean_stale(base)
        return False
    pid = int(info["pid"])
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not _wait_gone(pid, timeout):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if not _wait_gone(pid, 5.0):
            raise LifecycleError(f"agent pid {pid} did not exit after SIGKILL")
    clean_stale(base)  # after a SIGKILL the files are still there
    return True


# ---------------------------------------------------------------- configuration


def check_idle_timeout(value: Any, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value < 0:
        raise ConfigError(f"{source}: idle_timeout must be a number of seconds >= 0 (0 = never), not {value!r}")
    return float(value)


def load_config(base: Path | None = None) -> dict[str, Any]:
    """<agent_dir>/config.yaml as a dict ({} if absent); ConfigError on any problem."""
    path = agent_dir(base) / CONFIG_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    import yaml  # only when there is a config file

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must be a mapping with keys {', '.join(CONFIG_KEYS)}")
    unknown = sorted(str(k) for k in data if k not in CONFIG_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(CONFIG_KEYS)}")
    if "idle_timeout" in data:
        data["idle_timeout"] = check_idle_timeout(data["idle_timeout"], str(path))
    if "path_policy" in data and not isinstance(data["path_policy"], str):
        raise ConfigError(f"{path}: path_policy must be a string such as 'seamless' or 'marker:NAME'")
    return data


def load_policy(spec: str) -> Any:
    """The PathPolicy for `spec`; ConfigError if the spec is bad."""
    try:
        from . import policy as policy_mod
    except ImportError:
        if spec == DEFAULT_POLICY_SPEC:
            return None  # context.py: None means the default (seamless) policy
        raise ConfigError(f"path policy {spec!r} needs seamless_service.agent.policy, which is missing") from None
    try:
        return policy_mod.parse_policy(spec)
    except ValueError as exc:
        raise ConfigError(f"bad path policy: {exc}") from None


def resolve_options(base: Path | None = None, *, idle_timeout: float | None = None,
                    policy_spec: str | None = None) -> tuple[float, str]:
    """(idle timeout, policy spec): flags override config.yaml, which overrides the defaults."""
    config = load_config(base)
    if idle_timeout is None:
        idle = config.get("idle_timeout", DEFAULT_IDLE_TIMEOUT)
    else:
        idle = check_idle_timeout(idle_timeout, "--idle-timeout")
    spec = policy_spec if policy_spec is not None else config.get("path_policy", DEFAULT_POLICY_SPEC)
    load_policy(spec)  # validate now: a bad policy must stop the start, not the first op
    return idle, spec


# ---------------------------------------------------------------- starting


@contextlib.contextmanager
def _start_lock(base: Path | None, timeout: float) -> Iterator[None]:
    path = agent_dir(base) / START_LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LifecycleError(f"another start of the agent is still in progress (lock {path})") from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)


def _settled(base: Path | None, grace: float = ORPHAN_GRACE) -> dict[str, Any] | None:
    """find_running(), after waiting (up to `grace`) for an agent that holds the lock but
    has not written agent.json yet."""
    deadline = time.monotonic() + grace
    while True:
        running = find_running(base)
        if running is not None or not lock_held(base) or time.monotonic() >= deadline:
            return running
        if find_orphan(base, grace=grace) is not None:
            return None
        time.sleep(0.05)


def _same_version(info: dict[str, Any]) -> bool:
    return info.get("version") == __version__ and info.get("protocol") == PROTOCOL_VERSION


def _secret_readable(base: Path | None) -> bool:
    try:
        read_secret(base)
    except LifecycleError:
        return False
    return True


def _result(info: dict[str, Any], reused: bool) -> dict[str, Any]:
    keys = ("pid", "port", "host", "version", "protocol", "started", "idle_timeout", "path_policy",
            "state_path", "secret_path", "log_path")
    out = {k: info.get(k) for k in keys}
    out["reused"] = reused
    return out


def _open_log(base: Path | None) -> int:
    path = log_path(base)
    with contextlib.suppress(OSError):
        if path.stat().st_size > LOG_ROTATE_BYTES:
            os.replace(path, path.with_name(LOG_NAME + ".1"))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    with contextlib.suppress(OSError):
        os.fchmod(fd, 0o600)
    return fd


def _last_log_line(base: Path | None) -> str:
    try:
        with open(log_path(base), "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 4096))
            lines = [ln for ln in handle.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


def _child_env(base: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    if base is not None and Path(base).expanduser().absolute() != paths.base_dir().absolute():
        # The child must look at the same base as we do; the default needs no variable.
        env[paths.BASE_ENV] = str(Path(base).expanduser().absolute())
    return env


def serve_command(python: str, *, idle_timeout: float | None, policy_spec: str | None) -> list[str]:
    """argv of a foreground agent; holds no secret (the agent makes its own)."""
    argv = [python, "-m", "seamless_service", "agent", "serve"]
    if idle_timeout is not None:
        argv += ["--idle-timeout", repr(float(idle_timeout))]
    if policy_spec is not None:
        argv += ["--path-policy", policy_spec]
    return argv


def start_detached(base: Path | None = None, *, idle_timeout: float | None = None,
                   policy_spec: str | None = None, python: str = sys.executable,
                   timeout: float = START_TIMEOUT) -> dict[str, Any]:
    """Find the running agent of this version, or start one in the background and wait for it.

    An agent of another version (or protocol) is stopped and replaced. Returns pid, port,
    version, protocol, started, state_path, secret_path, log_path and `reused`.
    """
    ensure_agent_dir(base)
    resolve_options(base, idle_timeout=idle_timeout, policy_spec=policy_spec)  # fail fast: ConfigError
    with _start_lock(base, timeout + STOP_TIMEOUT + 5.0):
        running = _settled(base)
        if running is not None:
            if _same_version(running) and _secret_readable(base) and probe(running, base) is None:
                return _result(running, reused=True)
            # another release, its secret is gone, or its port is not it: clients could not use it
            stop(base)
        elif find_orphan(base) is not None:
            stop(base)  # clients cannot find it: replace it
        clean_stale(base)
        log_fd = _open_log(base)
        try:
            proc = subprocess.Popen(
                serve_command(python, idle_timeout=idle_timeout, policy_spec=policy_spec),
                stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd, close_fds=True,
                start_new_session=True, cwd="/", env=_child_env(base),
            )
        except OSError as exc:
            raise LifecycleError(f"cannot run {python}: {exc.strerror or exc}") from None
        finally:
            os.close(log_fd)
        return _wait_ready(base, proc, timeout)


def _disk_full_hint(base: Path | None) -> str | None:
    """A readable cause when the agent could not even write its log: a full disk."""
    try:
        stats = os.statvfs(agent_dir(base))
    except OSError:
        return None
    if stats.f_bavail == 0 or (stats.f_favail == 0 and stats.f_files > 0):
        return f"no space left on the device holding {agent_dir(base)}; free some space and retry"
    return None


def _wait_ready(base: Path | None, proc: subprocess.Popen, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        code = proc.poll()
        info = find_running(base)
        if info is not None and info.get("pid") == proc.pid:
            return _result(info, reused=False)
        if code is not None:
            if info is not None:  # another agent won the lock: use it
                return _result(info, reused=True)
            detail = _disk_full_hint(base) or _last_log_line(base) or "no output"
            raise LifecycleError(f"the agent exited with code {code} before serving: {detail}",
                                 exit_code=2 if code == 2 else 1)
        if time.monotonic() >= deadline:
            proc.kill()
            proc.wait()
            raise LifecycleError(
                f"the agent did not start serving within {timeout:g} s; see {log_path(base)}")
        time.sleep(0.02)
