"""Find a Python >= 3.10 on the host that can create a venv for the agent.

A configured interpreter (per-host setting, e.g. a conda base env) wins and is the only
one tried: if it is unsuitable, that is an error, not a reason to pick another silently.
Otherwise the usual names are probed, all in ONE remote command (each SSH exec costs a
round trip): python3, python3.12, python3.11, python3.10, then the user's miniforge /
miniconda base. The interpreter is only read from: the agent gets its own venv.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

import paramiko

from . import DeployError
from .ssh import run

MIN_VERSION = (3, 10)
CANDIDATES = (
    "python3", "python3.13", "python3.12", "python3.11", "python3.10",
    "$HOME/miniforge3/bin/python", "$HOME/miniconda3/bin/python",
)
PROBE_TIMEOUT = 60.0

# Runs inside each candidate. Also py2-compatible, so an old `python3` symlink to something
# ancient still reports its version instead of a syntax error. `import ensurepip` fails on
# Debian/Ubuntu without python3-venv, where `-m venv` would fail.
_PROBE = r"""
import json, os, sys, sysconfig
try:
    import venv, ensurepip
    has_venv = True
except Exception:
    has_venv = False
try:
    libc = os.confstr("CS_GNU_LIBC_VERSION").split()
except (AttributeError, ValueError, OSError):
    libc = []
print(json.dumps({"executable": sys.executable, "real": os.path.realpath(sys.executable),
                  "version": list(sys.version_info[:3]), "impl": sys.implementation.name,
                  "platform": sysconfig.get_platform(), "libc": libc, "venv": has_venv}))
"""

# Sent on stdin to `sh -s -- CANDIDATES...`, so every argument on the command line is one
# plain word: csh/tcsh login shells (common on clusters) cannot take quoted newlines.
# `$HOME/...` and `~/...` are expanded here, on the host (the login shell saw them quoted).
_FINDER = """\
probe=$(cat <<'SEAMLESS_PROBE'
%s
SEAMLESS_PROBE
)
for p in "$@"; do
  case $p in
    '$HOME/'*) p=$HOME/${p#'$HOME/'} ;;
    '~/'*) p=$HOME/${p#'~/'} ;;
  esac
  case $p in
    */*) [ -x "$p" ] || { printf 'MISSING\\t%%s\\n' "$p"; continue; } ;;
    *) command -v "$p" >/dev/null 2>&1 || { printf 'MISSING\\t%%s\\n' "$p"; continue; } ;;
  esac
  out=$("$p" -c "$probe" 2>/dev/null | tail -n 1) || out=
  printf 'RESULT\\t%%s\\t%%s\\n' "$p" "$out"
done
""" % _PROBE.strip()


@dataclass(frozen=True)
class RemotePython:
    """An interpreter on the host and what offline wheels must match."""

    path: str  # absolute path on the host (sys.executable)
    version: tuple[int, int, int]
    implementation: str = "cpython"
    platform: str = ""  # sysconfig.get_platform(), e.g. linux-x86_64
    libc: tuple[str, ...] = ()  # e.g. ("glibc", "2.36"); empty on musl/macOS
    has_venv: bool = True
    real: str = ""

    @property
    def version_str(self) -> str:
        return ".".join(str(v) for v in self.version)

    @property
    def tag_key(self) -> str:
        """Identifies which binary wheels fit: interpreter, minor version, platform, libc."""
        libc = "-".join(self.libc) or "nolibc"
        return f"{self.implementation}-{self.version[0]}.{self.version[1]}-{self.platform}-{libc}"

    def __str__(self) -> str:
        return f"{self.path} (Python {self.version_str})"


def _parse(payload: str) -> RemotePython | None:
    try:
        data = json.loads(payload)
        return RemotePython(
            path=data["executable"], version=tuple(data["version"]), implementation=data["impl"],
            platform=data["platform"], libc=tuple(data["libc"]), has_venv=bool(data["venv"]),
            real=data.get("real", data["executable"]),
        )
    except (ValueError, KeyError, TypeError):
        return None


def probe(client: paramiko.SSHClient, names: Sequence[str]) -> tuple[list[RemotePython], list[str]]:
    """Probe `names` on the host; return (usable interpreters in order, reasons for the rest)."""
    code, out, err = run(client, ["sh", "-s", "--", *names], timeout=PROBE_TIMEOUT, stdin=_FINDER.encode())
    if code != 0:
        raise DeployError(f"probing for Python on the host failed ({code}): {err.strip()[-300:]}")
    usable: list[RemotePython] = []
    rejected: list[str] = []
    seen: set[str] = set()
    for line in out.splitlines():
        kind, _, rest = line.partition("\t")
        name, _, payload = rest.partition("\t")
        if kind == "MISSING":
            rejected.append(f"{name}: not found")
            continue
        if kind != "RESULT":
            continue
        found = _parse(payload)
        if found is None:
            rejected.append(f"{name}: does not run")
        elif found.version < MIN_VERSION:
            rejected.append(f"{name}: Python {found.version_str} < {MIN_VERSION[0]}.{MIN_VERSION[1]}")
        elif not found.has_venv:
            rejected.append(f"{name}: Python {found.version_str} lacks venv/ensurepip "
                            "(on Debian/Ubuntu: apt install python3-venv)")
        elif found.real not in seen:  # python3 and python3.11 are often the same binary
            seen.add(found.real)
            usable.append(found)
    return usable, rejected


def find_pythons(client: paramiko.SSHClient, configured: str | None = None) -> list[RemotePython]:
    """Usable interpreters in order of preference; at least one, else DeployError."""
    names = [configured] if configured else list(CANDIDATES)
    usable, rejected = probe(client, names)
    if usable:
        return usable
    if configured:
        raise DeployError(f"the configured Python {configured} cannot host the agent: {'; '.join(rejected)}")
    raise DeployError(f"no Python >= {MIN_VERSION[0]}.{MIN_VERSION[1]} with venv on the host "
                      f"(tried {', '.join(rejected)}); install one or configure its path")


def describe(client: paramiko.SSHClient, path: str) -> RemotePython | None:
    """Describe one interpreter (e.g. the agent venv's), or None if it does not run."""
    usable, _ = probe(client, [path])
    return usable[0] if usable else None
