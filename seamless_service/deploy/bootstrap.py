"""The whole deploy over one SSH connection: install if needed, start, read back, cache.

    endpoint = deploy("cluster-frontend", progress=lambda step, msg: print(msg))
    endpoint.remote_port, endpoint.version      # secret: endpoint.secret (never in repr)

`deploy` connects (known_hosts enforced), makes sure our version is installed in the agent
venv (installing or upgrading it), runs `<venv>/bin/python -m seamless_service agent start
--json` (which returns once the agent serves, and replaces an agent of another version),
reads the secret FILE over SFTP (never through a command's output or argv), and stores
the endpoint in the client-side cache. `status` and `stop` ask the host's agent CLI.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any, Callable, Iterator

import paramiko

from . import DeployError, SshError, cache, install, ssh
from .cache import AgentEndpoint
from .ssh import run

Progress = Callable[[str, str], None]
AGENT_TIMEOUT = 60.0  # `agent start` waits up to 10 s for the agent; stop up to 15 s
SECRET_MAX = 4096

__all__ = ["deploy", "status", "stop", "AgentEndpoint"]


def _noop(step: str, message: str) -> None:
    pass


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _version() -> str:
    from .. import __version__

    return __version__


@contextlib.contextmanager
def _session(host: str, ssh_config: str | os.PathLike | None, accept_new_host_key: bool,
             timeout: float | None, notice: ssh.Notice | None = None
             ) -> Iterator[tuple[ssh.ParamikoClient, paramiko.SFTPClient]]:
    conn = ssh.connect(host, ssh_config=ssh_config, accept_new_host_key=accept_new_host_key, timeout=timeout,
                       notice=notice)
    try:
        try:
            sftp = conn.open_sftp()
        except (paramiko.SSHException, OSError) as exc:
            raise SshError(f"SFTP is not available on {host}: {exc}") from exc
        try:
            yield conn, sftp
        finally:
            sftp.close()
    except DeployError:
        raise
    except (paramiko.SSHException, OSError, EOFError) as exc:
        # The session broke mid-way (server gone, network): one line, no traceback.
        raise SshError(f"the SSH session with {host} failed: {exc or type(exc).__name__}") from exc
    finally:
        conn.close()


def _agent(conn: paramiko.SSHClient, lay: install.Layout, args: list[str]) -> tuple[int, Any, str]:
    """Run the host's agent CLI; return (exit status, parsed last JSON line or None, stderr)."""
    code, out, err = run(conn, [lay.python, "-m", "seamless_service", "agent", *args], timeout=AGENT_TIMEOUT)
    payload = None
    lines = [line for line in out.splitlines() if line.strip()]
    if lines:
        try:
            payload = json.loads(lines[-1])
        except ValueError:
            payload = None
    return code, payload, err


def _start(conn: paramiko.SSHClient, lay: install.Layout, host: str, idle_timeout: float | None,
           progress: Progress) -> dict[str, Any]:
    args = ["start", "--json"]
    if idle_timeout is not None:
        args += ["--idle-timeout", repr(float(idle_timeout))]
    progress("start", f"starting the agent on {host}")
    code, info, err = _agent(conn, lay, args)
    if code != 0 or not isinstance(info, dict):
        raise DeployError(f"starting the agent on {host} failed ({code}): {_last_line(err)}")
    for key in ("pid", "port", "version", "secret_path"):
        if key not in info:
            raise DeployError(f"`agent start` on {host} did not report {key}")
    return info


def _read_secret(sftp: paramiko.SFTPClient, path: str, host: str) -> str:
    """The secret, read as a file over SFTP: it never passes through argv, a shell or a log."""
    from ..protocol.auth import secret_key

    try:
        st = sftp.stat(path)
        if (st.st_mode or 0) & 0o077:
            raise DeployError(f"the agent secret {path} on {host} is accessible to other users "
                              f"(mode {oct((st.st_mode or 0) & 0o777)}); refusing to use it")
        with sftp.open(path, "r") as fh:
            data = fh.read(SECRET_MAX)
    except IOError as exc:
        raise DeployError(f"cannot read the agent secret {path} on {host}: {exc.strerror or exc}") from exc
    try:
        secret = data.decode("ascii").strip()
        secret_key(secret)
    except (UnicodeDecodeError, ValueError):
        # no cause: a UnicodeDecodeError carries the secret's bytes
        raise DeployError(f"the agent secret {path} on {host} is malformed") from None
    return secret


def deploy(host: str, *, ssh_config: str | os.PathLike | None = None, accept_new_host_key: bool = False,
           python: str | None = None, force_offline: bool = False, progress: Progress | None = None,
           idle_timeout: float | None = None, timeout: float | None = None,
           notice: ssh.Notice | None = None) -> AgentEndpoint:
    """Make sure our agent version runs on `host` and return how to reach it (also cached).

    `python`: interpreter on the host for the agent venv (a per-host setting; default:
    search). `force_offline`: install dependencies from uploaded wheels, never from the
    host's package index. `progress(step, message)` is called for each slow step.
    """
    progress = progress or _noop
    ours = _version()
    progress("connect", f"connecting to {host}")
    with _session(host, ssh_config, accept_new_host_key, timeout, notice) as (conn, sftp):
        lay = install.layout(sftp)
        current = install.installed_version(conn, lay)
        install.ensure_installed(conn, sftp, lay, version=ours, current=current, python=python,
                                 force_offline=force_offline, progress=progress)
        info = _start(conn, lay, host, idle_timeout, progress)
        if info.get("version") != ours:
            # `agent start` replaces another version itself; if one still answers, it
            # could not be stopped by it: stop it explicitly and start once more.
            progress("restart", f"agent {info.get('version')} is running on {host}; replacing it with {ours}")
            _agent(conn, lay, ["stop", "--json"])
            info = _start(conn, lay, host, idle_timeout, progress)
            if info.get("version") != ours:
                raise DeployError(f"the agent on {host} still reports version {info.get('version')} "
                                  f"after an upgrade to {ours}")
        secret = _read_secret(sftp, str(info["secret_path"]), host)
        endpoint = AgentEndpoint(
            host=host, remote_port=int(info["port"]), secret=secret, version=str(info["version"]),
            pid=int(info["pid"]), remote_python=lay.python, protocol=info.get("protocol"),
            deployed_at=time.time(),
        )
    try:
        cache.store(endpoint)
    except OSError as exc:
        raise DeployError(f"cannot write the client cache {cache.host_file(host)}: {exc.strerror or exc}") from exc
    how = "already running" if info.get("reused") else "started"
    progress("ready", f"agent {endpoint.version} {how} on {host}: pid {endpoint.pid}, port {endpoint.remote_port}")
    return endpoint


def status(host: str, *, ssh_config: str | os.PathLike | None = None, accept_new_host_key: bool = False,
           timeout: float | None = None, notice: ssh.Notice | None = None) -> dict[str, Any]:
    """What the host says: {"host", "installed": version|None, "running": bool, ...agent state}."""
    with _session(host, ssh_config, accept_new_host_key, timeout, notice) as (conn, sftp):
        lay = install.layout(sftp)
        installed = install.installed_version(conn, lay)
        result: dict[str, Any] = {"host": host, "installed": installed, "venv": lay.venv, "running": False}
        if installed is None:
            return result
        code, info, err = _agent(conn, lay, ["status", "--json"])
    if code == 0 and isinstance(info, dict):
        result.update({k: v for k, v in info.items() if k not in result})
        result["running"] = True
    elif code != 1:  # 1 = "no agent running"; anything else is a failure of the command
        raise DeployError(f"`agent status` on {host} failed ({code}): {_last_line(err)}")
    return result


def stop(host: str, *, ssh_config: str | os.PathLike | None = None, accept_new_host_key: bool = False,
         timeout: float | None = None, notice: ssh.Notice | None = None) -> bool:
    """Stop the host's agent and forget its cached endpoint; True if an agent was running."""
    with _session(host, ssh_config, accept_new_host_key, timeout, notice) as (conn, sftp):
        lay = install.layout(sftp)
        if install.installed_version(conn, lay) is None:
            cache.remove(host)
            return False
        code, info, err = _agent(conn, lay, ["stop", "--json"])
    cache.remove(host)
    if code != 0 or not isinstance(info, dict):
        raise DeployError(f"stopping the agent on {host} failed ({code}): {_last_line(err)}")
    return bool(info.get("stopped"))
