"""A real OpenSSH server on 127.0.0.1 for tests, logging in as a throwaway local user.

`SshServer.start()` makes a temporary root folder that holds everything:

    <root>/server/   sshd_config, throwaway ed25519 host key, authorized_keys, pid file, log
    <root>/client/   the client's ed25519 key, a known_hosts with the server's key in
                     `[127.0.0.1]:PORT` form, and an ssh_config with a Host alias
    <root>/home/     HOME of a dedicated throwaway user (useradd; removed by userdel)

The "remote" side therefore is a separate account with its own HOME (and its own
~/.remote-http-launcher), like a real server: nothing it does touches the test process's
HOME. Several servers may run at once (each gets its own port, user and alias), which the
fan-out tests need. Root is required (useradd, sshd); tests skip when not root.

Everything here is real: `ssh -F <ssh_config> <alias> CMD` goes through /usr/sbin/sshd.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator, Sequence

SSHD = "/usr/sbin/sshd"
PRIVSEP_DIR = Path("/run/sshd")  # sshd refuses to start without its privilege-separation dir
START_TIMEOUT = 20.0

# Interpreters the throwaway user may run. The machine's `python3` may live under
# /root/.pyenv, which another user cannot read, so Debian's /usr/bin/python3 comes first.
PYTHON_CANDIDATES = (
    "/usr/bin/python3",
    "/usr/local/bin/python3",
    "/usr/bin/python3.13",
    "/usr/bin/python3.12",
    "/usr/bin/python3.11",
    "/usr/bin/python3.10",
)


class SshdError(RuntimeError):
    """The test sshd could not be set up; the message says what is missing."""


def sshd_available() -> str | None:
    """None if this machine can run the fixture, else the reason it cannot."""
    if os.geteuid() != 0:
        return "the sshd fixture needs root (useradd, sshd)"
    for tool in (SSHD, "/usr/bin/ssh-keygen", "/usr/sbin/useradd", "/usr/sbin/userdel"):
        if not os.access(tool, os.X_OK):
            return f"{tool} is missing (install openssh-server / passwd)"
    if shutil.which("ssh") is None:
        return "ssh client is missing (install openssh-client)"
    return None


@functools.cache
def _unavailable() -> str | None:
    return sshd_available()


def require_sshd() -> None:
    """Skip the calling test when this machine cannot run the fixture (the reason shown)."""
    import pytest  # here: the benchmarks import this module without pytest

    reason = _unavailable()
    if reason is not None:
        pytest.skip(reason)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(argv: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, **kwargs)
    if result.returncode != 0:
        raise SshdError(f"{shlex.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def _keygen(path: Path, comment: str) -> str:
    """Make an ed25519 key pair without passphrase; return the public key line."""
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    return path.with_name(path.name + ".pub").read_text().strip()


def _uid_of_process(pid: int) -> int | None:
    """Real uid of a live process; None for zombies (already exited, nothing to end)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("State:") and line.split()[1] in ("Z", "X"):
                    return None
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def processes_of_uid(uid: int) -> list[int]:
    """Live pids whose real uid is `uid` (read from /proc; no pattern matching on names)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _uid_of_process(int(entry)) == uid:
            pids.append(int(entry))
    return pids


USER_COMMENT = "seamless-service test"
_reaped = False


def reap_orphaned_users() -> list[str]:
    """Remove throwaway users that an interrupted earlier run left behind.

    Only accounts with our exact comment whose temp root (HOME's parent) is gone and that
    run no process: a live run's users always have their root, so they are never touched.
    """
    removed = []
    for entry in pwd.getpwall():
        # The temp root (HOME's parent) exists before useradd runs, so a server that is
        # starting right now is never mistaken for an orphan.
        if entry.pw_gecos != USER_COMMENT or os.path.exists(os.path.dirname(entry.pw_dir)):
            continue
        if processes_of_uid(entry.pw_uid):
            continue
        if subprocess.run(["userdel", entry.pw_name], capture_output=True, timeout=60).returncode == 0:
            removed.append(entry.pw_name)
    return removed


def _wait_for_banner(port: int, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    """Return once the port answers with an SSH banner (so the server is really serving)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SshdError(f"sshd exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
                sock.settimeout(2.0)
                if sock.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise SshdError(f"sshd did not accept connections on 127.0.0.1:{port} within {timeout:g} s")


class SshServer:
    """One running sshd plus its throwaway user and client-side files. Use `start()`."""

    def __init__(self, root: Path, alias: str):
        self.root = root
        self.alias = alias
        self.server_dir = root / "server"
        self.client_dir = root / "client"
        self.home = root / "home"
        self.port = free_port()
        self.user = "sst" + secrets.token_hex(4)  # short: useradd limits names to 32 chars
        self.uid: int = -1
        self.python: str = ""
        self.host_key = self.server_dir / "ssh_host_ed25519_key"
        self.host_pubkey = ""
        self.identity = self.client_dir / "id_ed25519"
        self.known_hosts = self.client_dir / "known_hosts"
        self.ssh_config = self.client_dir / "ssh_config"
        self.log_path = self.server_dir / "sshd.log"
        self.pid_file = self.server_dir / "sshd.pid"
        self._proc: subprocess.Popen | None = None
        self._user_created = False

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def start(cls, alias: str | None = None, parent: Path | None = None) -> "SshServer":
        reason = sshd_available()
        if reason:
            raise SshdError(reason)
        global _reaped
        if not _reaped:
            _reaped = True
            reap_orphaned_users()
        # Not under pytest's tmp_path: /tmp/pytest-of-root is 0700 and the throwaway
        # user could not reach its own HOME below it.
        root = Path(tempfile.mkdtemp(prefix="seamless-sshd-", dir=parent))
        root.chmod(0o711)
        server = cls(root, alias or f"sshd-test-{secrets.token_hex(3)}")
        try:
            server._setup()
            server._launch()
        except BaseException:
            server.close()
            raise
        return server

    def _setup(self) -> None:
        self.server_dir.mkdir(mode=0o711)
        self.client_dir.mkdir(mode=0o700)
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        self._create_user()
        self.python = self._find_user_python()

        self.host_pubkey = _keygen(self.host_key, f"host-{self.alias}")
        user_pub = _keygen(self.identity, f"client-{self.alias}")
        authorized = self.server_dir / "authorized_keys"
        authorized.write_text(user_pub + "\n")
        authorized.chmod(0o644)  # sshd opens it with the user's uid
        self.known_hosts.write_text(self.known_hosts_line() + "\n")
        self.write_ssh_config(self.ssh_config)
        (self.server_dir / "sshd_config").write_text(self._sshd_config())

    def _create_user(self) -> None:
        # `-p '*'`: no usable password but not locked ("!"), else sshd without PAM
        # refuses even public-key logins for the account.
        _run(["useradd", "--home-dir", str(self.home), "--create-home", "--shell", "/bin/bash",
              "--user-group", "--password", "*", "--comment", USER_COMMENT, self.user])
        self._user_created = True
        self.uid = pwd.getpwnam(self.user).pw_uid

    def _find_user_python(self) -> str:
        check = "import sys, venv; sys.exit(0 if sys.version_info >= (3, 10) else 1)"
        for candidate in PYTHON_CANDIDATES:
            if not os.path.exists(candidate):
                continue
            probe = subprocess.run(["runuser", "-u", self.user, "--", candidate, "-c", check],
                                   capture_output=True, timeout=60)
            if probe.returncode == 0:
                return candidate
        raise SshdError(
            f"no Python >= 3.10 that the test user may execute (tried {', '.join(PYTHON_CANDIDATES)}); "
            "install Debian's python3 and python3-venv (see .ci/run)"
        )

    def _sshd_config(self) -> str:
        return "\n".join([
            f"ListenAddress 127.0.0.1:{self.port}",
            f"HostKey {self.host_key}",
            f"PidFile {self.pid_file}",
            f"AuthorizedKeysFile {self.server_dir / 'authorized_keys'}",
            f"AllowUsers {self.user}",
            "UsePAM no",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "PermitRootLogin no",
            "StrictModes no",
            "AllowTcpForwarding yes",
            "X11Forwarding no",
            "PrintMotd no",
            "Subsystem sftp internal-sftp",
            # Fan-out tests open many connections at once; the defaults would drop some.
            "MaxStartups 100:30:200",
            "MaxSessions 64",
            # VERBOSE: logins and refused keys, enough to see why a test connection failed.
            "LogLevel VERBOSE",
            "",
        ])

    def _launch(self) -> None:
        log = open(self.log_path, "ab")
        try:
            # sshd must be started by absolute path (it re-execs itself).
            self._proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.server_dir / "sshd_config")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )
        finally:
            log.close()
        _wait_for_banner(self.port, self._proc, self.log_path, START_TIMEOUT)

    def stop(self) -> None:
        """Stop the listening sshd. Sessions already open keep running, as with a real sshd."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def restart(self) -> None:
        """Kill sshd and start it again on the same port with the same keys."""
        self.stop()
        self._launch()

    def rotate_host_key(self) -> None:
        """Give the server a NEW host key and restart; the client's known_hosts keeps the old one."""
        self.stop()
        for path in (self.host_key, self.host_key.with_name(self.host_key.name + ".pub")):
            path.unlink()
        self.host_pubkey = _keygen(self.host_key, f"host-{self.alias}-rotated")
        self._launch()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def sshd_pid(self) -> int | None:
        return self._proc.pid if self.running else None

    def user_processes(self) -> list[int]:
        return processes_of_uid(self.uid) if self.uid >= 0 else []

    def kill_user_processes(self, timeout: float = 5.0) -> None:
        """End everything the throwaway user runs (agents, sessions), by pid."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.user_processes():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + timeout
            while self.user_processes() and time.monotonic() < deadline:
                time.sleep(0.05)
            if not self.user_processes():
                return

    def close(self) -> None:
        """Stop sshd, end the user's processes, remove the user and every file."""
        self.stop()
        if self._user_created:
            self.kill_user_processes()
            # userdel refuses (exit 8) while a just-killed process is not yet reaped: retry.
            deadline = time.monotonic() + 10
            while subprocess.run(["userdel", self.user], capture_output=True, timeout=60).returncode == 8:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            self._user_created = False
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "SshServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ client side

    def known_hosts_line(self) -> str:
        key_type, key_b64 = self.host_pubkey.split()[:2]
        return f"[127.0.0.1]:{self.port} {key_type} {key_b64}"

    def config_block(self, *, alias: str | None = None, known_hosts: Path | None = None,
                     identity: Path | None = None, extra: dict[str, str] | None = None) -> str:
        """A `Host` block for this server; fan-out tests concatenate several into one file."""
        options = {
            "HostName": "127.0.0.1",
            "Port": str(self.port),
            "User": self.user,
            "IdentityFile": str(identity or self.identity),
            "IdentitiesOnly": "yes",
            "UserKnownHostsFile": str(known_hosts or self.known_hosts),
            "GlobalKnownHostsFile": "/dev/null",
            "StrictHostKeyChecking": "yes",
            "BatchMode": "yes",
            "ControlMaster": "no",
            "ControlPath": "none",
            "LogLevel": "ERROR",
        }
        options.update(extra or {})
        lines = [f"Host {alias or self.alias}"] + [f"    {k} {v}" for k, v in options.items()]
        return "\n".join(lines) + "\n"

    def write_ssh_config(self, path: Path, **kwargs) -> Path:
        """Write an ssh_config holding this server's block (variants: other known_hosts/key)."""
        path = Path(path)
        path.write_text(self.config_block(**kwargs))
        path.chmod(0o600)
        return path

    def write_file(self, relpath: str, data: str | bytes, mode: int = 0o644) -> Path:
        """A file in the test user's HOME, owned by that user as if they had made it
        (folders created 0755 as needed); written atomically, as the launcher writes state."""
        import pwd

        pw = pwd.getpwnam(self.user)
        path = self.home / relpath
        folder = self.home
        for part in Path(relpath).parent.parts:
            folder = folder / part
            if not folder.exists():
                folder.mkdir(mode=0o755)
                os.chown(folder, pw.pw_uid, pw.pw_gid)
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
        tmp.chmod(mode)
        os.chown(tmp, pw.pw_uid, pw.pw_gid)
        os.replace(tmp, path)
        return path

    def ssh_argv(self, cmd: str | Sequence[str], *, config: Path | None = None) -> list[str]:
        """argv for the real `ssh` client; a list command is shell-quoted for the remote shell."""
        remote = cmd if isinstance(cmd, str) else shlex.join(cmd)
        return ["ssh", "-F", str(config or self.ssh_config), self.alias, remote]

    def ssh(self, cmd: str | Sequence[str], *, timeout: float = 60, check: bool = False,
            input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(self.ssh_argv(cmd), capture_output=True, text=True, timeout=timeout,
                              check=check, input=input, stdin=None if input is not None else subprocess.DEVNULL)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextlib.contextmanager
def running_sshd(alias: str | None = None) -> Iterator[SshServer]:
    server = SshServer.start(alias)
    try:
        yield server
    finally:
        server.close()


def combined_ssh_config(path: Path, servers: Sequence[SshServer]) -> Path:
    """One ssh_config with a Host block per server (for fan-out over several hosts)."""
    path = Path(path)
    path.write_text("\n".join(server.config_block() for server in servers))
    path.chmod(0o600)
    return path
