"""The agent reached through the user's own OpenSSH client (`via="openssh"`).

    tunnel = OpenSshTunnel("cluster-frontend").open()
    conn = tunnel.connect_agent(endpoint.remote_port, endpoint.secret)   # an AgentConnection
    conn.batch([("ps", {})])
    tunnel.close()                                  # kills and reaps every ssh it started

Tunnel-shaped (tunnel.py's interface), so AgentTransport keeps its repair, time limits and
errors and only swaps what carries the bytes:

* one **master connection** per tunnel with a session on it: the user's own ControlMaster
  if `ssh -O check HOST` finds one running (a `cat` session is opened through it), else
  ours (`ssh -M` on a private ControlPath in a 0700 folder, running `cat`). The session
  matters: sshd turns TCP_NODELAY on for a connection only once a session starts, and
  without it a ps of 200 services stalled ~40 ms per reply (the trap tunnel.py describes
  for paramiko; a lone `ssh -W` opens no session);
* each agent connection is one `ssh -W 127.0.0.1:PORT HOST` mux client whose stdin and
  stdout are one end of a socketpair. OpenSSH passes that socket to the master, which
  reads and writes it itself; rpyc's SocketStream and our handshake use the other end as
  the plain socket they expect. No thread and no copy in Python (bench_tunnel.py measures
  the alternative: ssh on pipes bridged by two threads), no local listener (`-L` would be
  a port every local process can try, and one more hop), and a new stream needs no login.

Everything the user's `ssh HOST` does applies as it does for `ssh`: ~/.ssh/config with
Include and Match exec, ProxyJump/ProxyCommand, GSSAPI, host-key rules, ControlMaster.
Options added: `-F` (ssh_config), `BatchMode=yes` (never a prompt from a background
process: a login that needs one is reused through a ControlMaster, or fails in one line),
`ConnectTimeout`, and `StrictHostKeyChecking=accept-new` only when asked. Each ssh runs in
its own session (setsid): Ctrl-C in the caller's terminal does not cut the connection.

The agent's port and secret come as for paramiko: the client cache, else `start_agent()`,
which runs the installed agent's `agent start --json` over `ssh HOST` (through the master:
no new login) and reads the secret file in that same session (the secret travels
only inside the encrypted session, on ssh's stdout pipe, never in argv or a log). An agent
that is not installed, or of another version, is installed by deploy (paramiko, SFTP).

Errors: ssh's exit status 255 and its last stderr line become the client error tree
(ssh_errors.map_ssh_failure); a refused stream ("Stdio forwarding request failed", or
"open failed: connect failed" without a master) is AgentUnreachable (nothing on the port:
the agent restarted), unless the master logged "administratively prohibited":
ForwardingRefused. A key forced through rhl-guard is AgentUnavailable(guarded=True).
"""

from __future__ import annotations

import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from typing import Any

from ... import __version__
from ..errors import AgentUnreachable, ConnectionFailed, ForwardingRefused, TimedOut
from .agent_conn import DEFAULT_CALL_TIMEOUT, AgentConnection, AgentError
from .ssh_errors import map_ssh_failure

SSH = "ssh"
SESSION_COMMAND = "cat"         # the master's session: exits as soon as its stdin (ours) closes
CONNECT_TIMEOUT = 10            # seconds: ssh's ConnectTimeout, and a connection's first bytes
START_TIMEOUT = 60.0            # `agent start` waits up to 10 s for the agent; a login may be slow
# Where deploy installs the agent (deploy/install.py Layout), relative to the login's cwd:
# sshd starts a session command in the user's HOME.
VENV_PYTHON = ".local/share/seamless-service/agent-venv/bin/python"
# Run by the agent venv's Python on the host: start (or find) the agent, then print one
# JSON line with its endpoint and secret (read from its 0600 file; refused if readable by others).
_START_SCRIPT = r"""
import json, os, subprocess, sys
def out(d):
    sys.stdout.write(json.dumps(d) + "\n"); sys.exit(0)
r = subprocess.run([sys.executable, "-m", "seamless_service", "agent", "start", "--json"],
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
lines = [l for l in r.stdout.splitlines() if l.strip()]
try:
    info = json.loads(lines[-1]) if r.returncode == 0 and lines else None
except ValueError:
    info = None
if not isinstance(info, dict) or "secret_path" not in info:
    err = [l.strip() for l in r.stderr.splitlines() if l.strip()]
    out({"error": "starting the agent failed (%d): %s" % (r.returncode, err[-1] if err else "no output")})
path = info["secret_path"]
try:
    if os.stat(path).st_mode & 0o077:
        out({"error": "the agent secret %s is accessible to other users; refusing to use it" % path})
    with open(path) as fh:
        info["secret"] = fh.read(4096).strip()
except OSError as exc:
    out({"error": "cannot read the agent secret %s: %s" % (path, exc.strerror or exc)})
out(info)
"""


def find_ssh(binary: str = SSH) -> str | None:
    """The path of the `ssh` client, or None on a machine without one."""
    return shutil.which(binary)


class SshSocket(socket.socket):
    """Our end of the socketpair whose other end is one `ssh -W` process's stdin/stdout.

    A real socket (recv/send stay C calls for rpyc's SocketStream); `closed` says whether
    the ssh process has exited (agent.py's `_usable` looks at it), and close() also ends
    and reaps that process, so no ssh outlives its connection and none is left a zombie.
    """

    proc: subprocess.Popen | None = None
    stderr_file: Any = None

    @property
    def closed(self) -> bool:
        proc = self.proc
        return self.fileno() < 0 or proc is None or proc.poll() is not None

    def close(self) -> None:
        try:
            super().close()
        finally:
            end_process(self.proc)
            self.proc = None
            if self.stderr_file is not None:
                self.stderr_file.close()
                self.stderr_file = None


def end_process(proc: subprocess.Popen | None, grace: float = 1.0) -> None:
    """SIGTERM `proc` (ssh cleans up and exits at once), SIGKILL after `grace`, and reap it."""
    if proc is None:
        return
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        except OSError:
            pass
    else:
        proc.wait()


class OpenSshTunnel:
    """Agent connections through `ssh -W` processes of the user's OpenSSH client, with the
    interface of tunnel.Tunnel that agent.py uses. Thread-safe."""

    keep_session = False  # agent.py need not wait for a forced command's output: open() says it

    def __init__(self, host: str, *, ssh_config: str | os.PathLike | None = None,
                 accept_new_host_key: bool = False, connect_timeout: float | None = None,
                 ssh_binary: str = SSH):
        self.host = host
        self.ssh_config = ssh_config
        self.accept_new_host_key = accept_new_host_key
        self.connect_timeout = connect_timeout
        self.ssh_binary = ssh_binary
        self.opened_at: float | None = None
        self._path: str | None = None
        self._socks: list[SshSocket] = []
        self._read: Any = None  # inputs.FileSnapshot of the ssh config files
        self._master: subprocess.Popen | None = None   # ssh running `cat` (ours: -M; else a mux client)
        self._master_stderr: Any = None
        self._control_dir: str | None = None           # our private ControlPath's folder (0700)
        self._control: str | None = None               # None: the user's own ControlMaster serves
        self._lock = threading.RLock()
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> "OpenSshTunnel":
        """Find the ssh client and start the connection the agent's streams share (see
        `_start_master`). Raises ConnectionFailed without an ssh client, and the mapped
        error (AuthFailed, ConnectionFailed, TimedOut) when ssh cannot log in."""
        with self._lock:
            if self.alive:
                return self
            self._close_locked()
            path = find_ssh(self.ssh_binary)
            if path is None:
                raise ConnectionFailed(self.host, f"no `{self.ssh_binary}` client on this machine's PATH; "
                                       "use the paramiko tunnel (via='paramiko')")
            from .inputs import FileSnapshot

            self._read = FileSnapshot(self._config_files())
            self._path = path
            self._closed = False
            self._start_master()
            self.opened_at = time.time()
            return self

    def _user_master_running(self) -> bool:
        """True if the user's own ssh config names a ControlMaster that runs for this host
        (`ssh -O check`): a login made there (2FA, Kerberos) then serves us too."""
        argv = self.ssh_argv("-O", "check", "--", self.host)
        try:
            return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=self._timeout(), start_new_session=True).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    def _start_master(self) -> None:
        """One SSH connection per tunnel, with a session on it, that every `ssh -W` rides.

        Why not a plain `ssh -W` per stream: sshd turns TCP_NODELAY on for a connection only
        once a session starts on it (the trap tunnel.py describes for paramiko); a lone
        `ssh -W` opens none, and a ps of 200 services then stalls ~40 ms per reply
        (benchmarks/bench_tunnel.py). So: the user's ControlMaster if one runs (a `cat`
        session through it), else our own master (`-M`, private ControlPath, running `cat`,
        which ends with our end of its stdin: nothing is left on the host). The `ssh -W`
        processes are mux clients: OpenSSH hands our socket to the master, which does the
        I/O, and a new stream needs no new login."""
        own = not self._user_master_running()
        if own:
            self._control_dir = tempfile.mkdtemp(prefix="ss-ssh-")
            self._control = os.path.join(self._control_dir, "cm")
        extra = ["-o", "ControlMaster=yes", "-o", "ControlPersist=no"] if own else []
        stderr = tempfile.TemporaryFile()
        argv = self.ssh_argv("-T", "-o", "ClearAllForwardings=yes", *extra, "--", self.host, SESSION_COMMAND,
                             master=own)
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=stderr,
                                    close_fds=True, start_new_session=True)
        except OSError as exc:
            stderr.close()
            raise ConnectionFailed(self.host, f"cannot run {self.ssh_binary}: {exc.strerror or exc}") from exc
        self._master, self._master_stderr = proc, stderr
        if not own:
            return
        deadline = time.monotonic() + self._timeout() + 5.0  # ConnectTimeout, then the login itself
        while not os.path.exists(self._control):
            if proc.poll() is not None:
                text = _read(stderr)
                self._close_locked()
                raise self._login_failed(text, proc.returncode)
            if time.monotonic() > deadline:
                self._close_locked()
                raise TimedOut(self.host, f"ssh did not log in within {self._timeout() + 5.0:g} s")
            time.sleep(0.005)

    def _login_failed(self, text: str, code: int) -> ConnectionFailed:
        if "rhl-guard" in text:  # a key forced through rhl-guard ran it instead of `cat`
            from ..errors import AgentUnavailable

            return AgentUnavailable(self.host, "the SSH key allows only rhl-* helpers (rhl-guard)", guarded=True)
        return map_ssh_failure(self.host, text, code)

    def _config_files(self) -> list[str]:
        if self.ssh_config is not None:
            return [os.fspath(self.ssh_config)]
        # ssh reads ~/.ssh/config from the passwd entry's home, not from $HOME
        return [os.path.join(pwd.getpwuid(os.getuid()).pw_dir, ".ssh", "config"), "/etc/ssh/ssh_config"]

    @property
    def alive(self) -> bool:
        """True while the connection's master (ours, or the `cat` session through the user's)
        runs; its end ends every stream, and the next call opens a new tunnel."""
        master = self._master
        return self._path is not None and not self._closed and master is not None and master.poll() is None

    def stale(self) -> bool:
        """True once the ssh config this tunnel's processes read has changed (Include'd
        files are not followed): the pool then makes a new transport, new processes."""
        read = self._read
        return read is not None and read.changed()

    def forced_command_output(self) -> str | None:
        """If the kept `cat` session ended on its own (a forced command ran instead), what
        ssh said; else None (agent.py asks after a failed deploy)."""
        master = self._master
        if master is None or master.poll() is None or self._master_stderr is None:
            return None
        return _read(self._master_stderr).strip()

    def close(self) -> None:
        """End every ssh process this tunnel started, streams first, then the master, and
        reap them all. Never raises, never hangs."""
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        self._closed = True
        socks, self._socks = self._socks, []
        for sock in socks:
            try:
                sock.close()
            except Exception:  # noqa: BLE001 - closing must not raise
                pass
        master, self._master = self._master, None
        if master is not None:
            try:
                master.stdin.close()  # `cat` ends, and with it our master's session
            except OSError:
                pass
            end_process(master)
        if self._master_stderr is not None:
            self._master_stderr.close()
            self._master_stderr = None
        if self._control_dir is not None:
            shutil.rmtree(self._control_dir, ignore_errors=True)
            self._control_dir = self._control = None

    def __enter__(self) -> "OpenSshTunnel":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ ssh

    def _timeout(self) -> float:
        return float(self.connect_timeout) if self.connect_timeout is not None else float(CONNECT_TIMEOUT)

    def ssh_argv(self, *args: str, master: bool = False) -> list[str]:
        """`ssh [-F CONFIG] -o ... ARGS`: the user's ssh with our few options; through our
        master's ControlPath when we run one (`master`: for the master itself)."""
        argv = [self._path or self.ssh_binary]
        if self.ssh_config is not None:
            argv += ["-F", os.fspath(self.ssh_config)]
        if self._control is not None:
            argv += ["-o", f"ControlPath={self._control}"] + ([] if master else ["-o", "ControlMaster=no"])
        argv += ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={max(1, int(round(self._timeout())))}"]
        if self.accept_new_host_key:
            argv += ["-o", "StrictHostKeyChecking=accept-new"]
        return argv + list(args)

    def open_stream(self, remote_port: int) -> SshSocket:
        """A socket whose bytes go to 127.0.0.1:`remote_port` on the host, through `ssh -W`."""
        with self._lock:
            if not self.alive:
                raise ConnectionFailed(self.host, "the transport is closed")
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            stderr = tempfile.TemporaryFile()
            try:
                proc = subprocess.Popen(
                    self.ssh_argv("-W", f"127.0.0.1:{int(remote_port)}", "--", self.host),
                    stdin=theirs, stdout=theirs, stderr=stderr, close_fds=True, start_new_session=True)
            except OSError as exc:
                ours.close()
                stderr.close()
                raise ConnectionFailed(self.host, f"cannot run {self.ssh_binary}: {exc.strerror or exc}") from exc
            finally:
                theirs.close()
            sock = SshSocket(fileno=ours.detach())
            sock.proc, sock.stderr_file = proc, stderr
            self._socks = [s for s in self._socks if s.proc is not None] + [sock]
            return sock

    def connect_agent(self, remote_port: int, secret: str, *, timeout: float | None = None,
                      call_timeout: float = DEFAULT_CALL_TIMEOUT, via: str = "openssh") -> AgentConnection:
        """An authenticated AgentConnection over a new `ssh -W` process.

        Raises AgentUnreachable (nothing on the port), ForwardingRefused, AuthFailed /
        ConnectionFailed / TimedOut (ssh could not log in), or agent_conn's AgentError for
        the agent's own handshake (wrong secret: the agent restarted)."""
        limit = timeout if timeout is not None else self._timeout()
        where = f"the agent on {self.host} (port {remote_port})"
        sock = self.open_stream(remote_port)
        # AgentConnection.over() closes the socket on failure, which ends and reaps ssh:
        # keep what ssh said (its stderr file) to tell why.
        proc, said = sock.proc, sock.stderr_file
        sock.stderr_file = None
        try:
            conn = AgentConnection.over(sock, secret, where=where, timeout=limit, call_timeout=call_timeout)
        except AgentError as exc:
            failure = self._ssh_failed(proc, _read(said), remote_port)
            said.close()
            if failure is not None:
                raise failure from exc
            raise
        sock.stderr_file = said
        return conn

    def _ssh_failed(self, proc: subprocess.Popen | None, text: str, remote_port: int) -> ConnectionFailed | None:
        """If the handshake failed because ssh did (it said why on stderr), that error;
        None when ssh was fine and the agent itself refused or stalled."""
        if "Stdio forwarding request failed" in text:
            # A mux client hears only "refused by peer"; the master logged the reason.
            text += "\n" + _read(self._master_stderr) if self._master_stderr is not None else ""
            if "administratively prohibited" not in text:
                return AgentUnreachable(self.host, f"nothing listens on the agent's port {remote_port} "
                                        "(the SSH server could not connect to it)")
        if "administratively prohibited" in text:
            return ForwardingRefused(self.host, "the SSH server refuses port forwarding; the agent cannot "
                                     "be reached through SSH")
        if "open failed" in text or "stdio forwarding failed" in text:
            return AgentUnreachable(self.host, f"nothing listens on the agent's port {remote_port} "
                                    f"({_last_line(text) or 'connect failed'})")
        code = proc.returncode if proc is not None else None
        if code == 255 or (text.strip() and code not in (0, None, -signal.SIGTERM)):
            return map_ssh_failure(self.host, text, code if code is not None else 255)
        return None

    def run(self, command: str, *, stdin: bytes | None = None, timeout: float) -> tuple[int, bytes, bytes]:
        """`ssh HOST COMMAND` through the tunnel's master (no new login):
        (exit status, stdout, stderr); ssh's own failure (255) raised as a client error."""
        argv = self.ssh_argv("-T", "-o", "ClearAllForwardings=yes", "--", self.host, command)
        try:
            proc = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout,
                                  start_new_session=True)
        except subprocess.TimeoutExpired as exc:
            raise TimedOut(self.host, f"ssh did not finish within {timeout:g} s") from exc
        except OSError as exc:
            raise ConnectionFailed(self.host, f"cannot run {self.ssh_binary}: {exc.strerror or exc}") from exc
        if proc.returncode == 255:
            raise map_ssh_failure(self.host, proc.stderr.decode("utf-8", errors="replace"), 255)
        return proc.returncode, proc.stdout, proc.stderr

    def start_agent(self) -> Any:
        """Start (or find) the installed agent over `ssh HOST` and return its AgentEndpoint
        (not yet cached); None when it must be installed or upgraded first (deploy's job).
        Raises ConnectionFailed and below when ssh fails, StartFailed when the host refused
        to start it (its reason; `guarded` for a key forced through rhl-guard)."""
        from ...deploy.cache import AgentEndpoint

        code, out, err = self.run(f"{shlex.quote(VENV_PYTHON)} -", stdin=_START_SCRIPT.encode(),
                                  timeout=START_TIMEOUT)
        lines = [line for line in out.decode("utf-8", errors="replace").splitlines() if line.strip()]
        try:
            info = json.loads(lines[-1]) if lines else None
        except ValueError:
            info = None
        said = err.decode("utf-8", errors="replace")
        if "rhl-guard" in said:  # the key forces rhl-guard: only rhl-* helpers run there
            raise StartFailed(_last_line(said)[:200], guarded=True)
        if not isinstance(info, dict):
            # 126/127: no agent venv (not installed); anything else without our JSON line
            # (an old agent without `start --json`...): deploy installs or repairs it.
            return None
        if "error" in info:
            raise StartFailed(str(info["error"]))
        if info.get("version") != __version__:
            return None  # another version runs there: deploy upgrades the venv
        try:
            return AgentEndpoint(host=self.host, remote_port=int(info["port"]), secret=str(info["secret"]),
                                 version=str(info["version"]), pid=int(info["pid"]),
                                 remote_python=f"~/{VENV_PYTHON}", protocol=info.get("protocol"),
                                 deployed_at=time.time())
        except (KeyError, TypeError, ValueError):
            raise StartFailed("`agent start --json` did not report port, pid and secret") from None

    # ------------------------------------------------------------------ introspection

    def describe(self) -> dict[str, Any]:
        """For `tunnel status` (never a secret): the ssh client and its live processes."""
        with self._lock:
            pids = [s.proc.pid for s in self._socks if s.proc is not None and s.proc.poll() is None]
            master = self._master
        return {"host": self.host, "alive": self.alive, "opened_at": self.opened_at, "ssh": self._path,
                "ssh_pids": pids, "master_pid": master.pid if master is not None else None,
                "control_master": "ours" if self._control is not None else "the user's"}

    def __repr__(self) -> str:
        return f"OpenSshTunnel({self.host!r}, alive={self.alive})"


class StartFailed(Exception):
    """The installed agent could not be started over ssh (its own one-line reason);
    `guarded`: the key is forced through rhl-guard, which runs no agent."""

    def __init__(self, message: str, *, guarded: bool = False):
        super().__init__(message)
        self.guarded = guarded


def _read(handle: Any) -> str:
    """What ssh wrote to its stderr file (the first 64 KB)."""
    try:
        handle.seek(0)
        return handle.read(65536).decode("utf-8", errors="replace")
    except (OSError, ValueError):
        return ""


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""
