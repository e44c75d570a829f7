"""Install or upgrade the agent into its own venv on the host.

The venv lives at `~/.local/share/seamless-service/agent-venv` on the host and is ours
alone: it is created with `<python> -m venv`, so the user's own Python environments are
never modified. Our wheel is always uploaded (it is not on the package index). Its
dependencies come from the host's package index when it can reach one; otherwise (or
with `force_offline=True`) wheels gathered on the client are uploaded too and installed
with `--no-index --find-links`.

Uploads go by SFTP into a private (0700) staging folder next to the venv, removed
afterwards: no shell command ever carries file contents, and /tmp is not used.
"""

from __future__ import annotations

import posixpath
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import paramiko

from . import DeployError, SshError
from . import remote_python, wheels
from .remote_python import RemotePython
from .ssh import run

DATA_RELPATH = ".local/share/seamless-service"
VENV_NAME = "agent-venv"
VENV_TIMEOUT = 300.0
INSTALL_TIMEOUT = 900.0
PROBE_TIMEOUT = 60.0
# Online attempt: fail fast when the host has no route to an index, instead of pip's
# default 5 retries with back-off.
ONLINE_OPTIONS = ["--timeout", "20", "--retries", "1"]
PIP_OPTIONS = ["--disable-pip-version-check", "--no-input", "--upgrade"]

Progress = Callable[[str, str], None]


def _noop(step: str, message: str) -> None:
    pass


def _tail(text: str, lines: int = 4) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:]) or "no output"


@dataclass(frozen=True)
class Layout:
    """Where the agent lives on the host."""

    home: str

    @property
    def data_dir(self) -> str:
        return posixpath.join(self.home, DATA_RELPATH)

    @property
    def venv(self) -> str:
        return posixpath.join(self.data_dir, VENV_NAME)

    @property
    def python(self) -> str:
        return posixpath.join(self.venv, "bin", "python")


@dataclass(frozen=True)
class InstallResult:
    layout: Layout
    version: str
    previous: str | None  # the version found before, None if none was installed
    changed: bool  # something was installed
    offline: bool  # dependencies came from uploaded wheels
    created_venv: str | None  # base interpreter the venv was created with, if it was


def layout(sftp: paramiko.SFTPClient) -> Layout:
    """The host's layout; HOME is where SFTP starts (no shell needed to ask for $HOME)."""
    try:
        home = sftp.normalize(".")
    except (IOError, paramiko.SSHException) as exc:
        raise SshError(f"cannot find the home folder on the host over SFTP: {exc}") from exc
    return Layout(home=home)


def installed_version(client: paramiko.SSHClient, lay: Layout) -> str | None:
    """The seamless-service version in the agent venv, or None (no venv, broken, not installed)."""
    code, out, _ = run(client, [lay.python, "-c", "import seamless_service; print(seamless_service.__version__)"],
                       timeout=PROBE_TIMEOUT)
    lines = out.strip().splitlines()
    return lines[-1].strip() if code == 0 and lines else None


def _venv_runs(client: paramiko.SSHClient, lay: Layout) -> bool:
    code, _, _ = run(client, [lay.python, "-c", "import sys"], timeout=PROBE_TIMEOUT)
    return code == 0


def _venv_base(client: paramiko.SSHClient, lay: Layout) -> str | None:
    """Real path of the interpreter the venv was made from, or None if there is no usable venv."""
    code, out, _ = run(client, [lay.python, "-c", "import os, sys; "
                                "print(os.path.realpath(getattr(sys, '_base_executable', sys.executable)))"],
                       timeout=PROBE_TIMEOUT)
    lines = out.strip().splitlines()
    return lines[-1] if code == 0 and lines else None


def _makedirs(sftp: paramiko.SFTPClient, path: str, mode: int = 0o700) -> None:
    parts = []
    while path not in ("", "/"):
        parts.append(path)
        path = posixpath.dirname(path)
    for folder in reversed(parts):
        try:
            sftp.stat(folder)
        except IOError:
            sftp.mkdir(folder, mode)


def _create_venv(client: paramiko.SSHClient, lay: Layout, configured: str | None, progress: Progress) -> str:
    """Create the venv with the first interpreter that manages it; return that interpreter."""
    failures = []
    for py in remote_python.find_pythons(client, configured):
        progress("venv", f"creating the agent environment {lay.venv} with {py}")
        # --clear: a half-made or broken venv from an earlier attempt is replaced, never reused.
        code, _, err = run(client, [py.path, "-m", "venv", "--clear", lay.venv], timeout=VENV_TIMEOUT)
        if code == 0 and _venv_runs(client, lay):
            return py.path
        failures.append(f"{py}: {_tail(err, 2)}")
    raise DeployError(f"cannot create the agent environment {lay.venv}: {'; '.join(failures)}")


class _Staging:
    """A private upload folder on the host, removed on exit (SFTP only, no shell)."""

    def __init__(self, sftp: paramiko.SFTPClient, lay: Layout):
        self.sftp = sftp
        self.path = posixpath.join(lay.data_dir, f"upload-{secrets.token_hex(6)}")

    def __enter__(self) -> "_Staging":
        try:
            _makedirs(self.sftp, posixpath.dirname(self.path))
            self.sftp.mkdir(self.path, 0o700)
        except (IOError, paramiko.SSHException) as exc:
            raise DeployError(f"cannot create the upload folder {self.path} on the host: "
                              f"{getattr(exc, 'strerror', None) or exc}") from exc
        return self

    def put(self, local: Path) -> str:
        remote = posixpath.join(self.path, local.name)
        try:
            self.sftp.put(str(local), remote, confirm=True)
        except (IOError, paramiko.SSHException) as exc:
            raise DeployError(f"uploading {local.name} to the host failed: {exc}") from exc
        return remote

    def __exit__(self, *exc) -> None:
        try:
            for entry in self.sftp.listdir_attr(self.path):
                if not stat.S_ISDIR(entry.st_mode or 0):
                    self.sftp.remove(posixpath.join(self.path, entry.filename))
            self.sftp.rmdir(self.path)
        except (IOError, paramiko.SSHException):
            pass  # best effort: a leftover upload folder is harmless and private


def ensure_installed(client: paramiko.SSHClient, sftp: paramiko.SFTPClient, lay: Layout, *, version: str,
                     current: str | None, python: str | None = None, force_offline: bool = False,
                     progress: Progress | None = None) -> InstallResult:
    """Make `version` the installed agent in the venv; nothing happens if it already is.

    A configured `python` wins: a venv made from another interpreter is recreated (after
    stopping the agent that runs from it).
    """
    progress = progress or _noop
    recreate = False
    if python is not None:
        base = _venv_base(client, lay)
        if base is not None:
            wanted = remote_python.find_pythons(client, python)[0]
            recreate = wanted.real != base
    if current == version and not recreate:
        return InstallResult(lay, version, current, changed=False, offline=False, created_venv=None)
    created = None
    if recreate:
        progress("venv", f"the agent environment uses {base}, not the configured {python}: recreating it")
        # The running agent lives in the venv that --clear is about to empty.
        run(client, [lay.python, "-m", "seamless_service", "agent", "stop"], timeout=PROBE_TIMEOUT)
        created = _create_venv(client, lay, python, progress)
        current = None
    elif current is None and not _venv_runs(client, lay):
        created = _create_venv(client, lay, python, progress)
    own = wheels.own_wheel(progress)
    what = f"seamless-service {version}" + (f" (upgrading from {current})" if current else "")
    offline = force_offline
    with _Staging(sftp, lay) as staging:
        progress("upload", f"uploading {own.name}")
        remote_wheel = staging.put(own)
        online_error = None
        if not force_offline:
            progress("install", f"installing {what} and its dependencies from the host's package index")
            code, _, err = run(client, [lay.python, "-m", "pip", "install", *PIP_OPTIONS, *ONLINE_OPTIONS,
                                        remote_wheel], timeout=INSTALL_TIMEOUT)
            if code != 0:
                online_error = _tail(err)
                offline = True
                progress("install", "the host cannot install from a package index; uploading dependency wheels")
        if offline:
            _install_offline(client, lay, staging, own, remote_wheel, what, online_error, progress)
    found = installed_version(client, lay)
    if found != version:
        raise DeployError(f"after installing, the agent environment reports version {found or 'none'}, "
                          f"expected {version}")
    progress("installed", f"seamless-service {version} installed in {lay.venv}")
    return InstallResult(lay, version, current, changed=True, offline=offline, created_venv=created)


def _install_offline(client: paramiko.SSHClient, lay: Layout, staging: _Staging, own: Path, remote_wheel: str,
                     what: str, online_error: str | None, progress: Progress) -> None:
    target: RemotePython | None = remote_python.describe(client, lay.python)
    if target is None:
        raise DeployError(f"the agent environment's Python {lay.python} does not run")
    deps = wheels.dependency_wheels(target, own, progress)
    progress("upload", f"uploading {len(deps)} dependency wheels")
    for wheel in deps:
        staging.put(wheel)
    progress("install", f"installing {what} from uploaded wheels (no package index)")
    code, _, err = run(client, [lay.python, "-m", "pip", "install", *PIP_OPTIONS, "--no-index",
                                "--find-links", staging.path, remote_wheel], timeout=INSTALL_TIMEOUT)
    if code != 0:
        before = f"from the package index: {online_error}; " if online_error else ""
        raise DeployError(f"installing the agent on the host failed {before}from uploaded wheels: {_tail(err)}")
