"""Choosing a transport: `open_transport(host, kind)`.

    transport = open_transport("cluster-frontend")          # kind="auto"
    results = transport.batch([("ps", {}), ("hello", {})])  # raw results
    transport.close()

Kinds (all return the same raw results, see agent/ops/*):
  local   host None: ops run in-process on this machine (local.py), no SSH at all
  agent   the host's agent over an SSH tunnel (agent.py), deployed on first use
  ssh     per-call `ssh HOST rhl-* --json` (ssh.py), for hosts where the agent cannot run
  auto    agent; if the agent cannot run on the host or cannot be reached right now, ssh
          (auto.py says when, and what is remembered: choice.py)

How the agent is reached (`via`, for kinds agent and auto):
  paramiko  paramiko's SSH connection and direct-tcpip channel (tunnel.py): the default
  openssh   the user's own `ssh` client: `ssh -W` streams on one master connection
            (openssh.py), ~/.ssh/config as `ssh` reads it (Include, Match exec, ProxyJump,
            GSSAPI, a ControlMaster the user already has, e.g. after a 2FA login)
None chooses: $SEAMLESS_SERVICE_SSH (openssh or paramiko) if set, else `default_via()`.
Why paramiko by default: measured side by side (benchmarks/bench_tunnel.py, bench_peers.py,
profile_warm.py --split; loopback sshd, 2 cores), warm calls from a long-lived process cost
the same (small call p50 0.42 vs 0.45 ms, 1,000 services ps 2.05 vs 2.03 ms); inside the
tunnel keeper a warm CLI command is ~1.5 ms faster through openssh (keeper round trip 3.5
vs 5.2-5.6 ms: paramiko's packet thread shares the GIL), but its first connection is ~3x
slower (212 vs 75 ms), paid again after every idle exit of the keeper. Most of that is the
key exchange: OpenSSH 9 negotiates the post-quantum sntrup761x25519 (`ssh HOST true` 251 ms,
144 ms with KexAlgorithms=curve25519-sha256, the one paramiko uses); the user's key
exchange is theirs to choose, so it is not overridden here. openssh is the choice for what paramiko cannot do:
2FA reused through a ControlMaster, GSSAPI, Match exec, Include.
Note: `ssh` reads the config of the user's passwd home, not $HOME (paramiko reads $HOME's).

Inside the tunnel keeper (pool.default_pool.in_keeper), what open_transport returns is a lease on a
pooled transport (pooled.py), made for callers with this caller's inputs: the environment
values listed here (local: the absolute launcher folder and HOME; remote: REMOTE_ENV) and
the files the transport read (inputs.py).
"""

from __future__ import annotations

import os

from ..errors import UsageError
from .auto import AutoTransport
from .base import DEFAULT_TIMEOUT, Notice, Transport
from .choice import remembered_choice
from .pool import TransportPool, default_pool
from .pooled import PooledTransport, lease

KINDS = ("auto", "agent", "ssh", "local")
VIAS = ("openssh", "paramiko")
VIA_ENV = "SEAMLESS_SERVICE_SSH"

# What a pooled remote transport depends on in the environment, besides its files: HOME
# (where ~/.ssh/config, known_hosts and default keys are), the user name paramiko logs in
# with when the config names none (getpass.getuser's variables), the ssh-agent it asks for
# keys, and the client cache holding the agent endpoints and remembered choices. An agent
# transport's SSH client (`via`) is one more input: callers choosing another one get
# transports of their own.
REMOTE_ENV = ("HOME", "USER", "LOGNAME", "LNAME", "USERNAME", "SSH_AUTH_SOCK", "XDG_CACHE_HOME")


def open_transport(host: str | None, kind: str = "auto", *, ssh_config: str | os.PathLike | None = None,
                   timeout: float | None = None, notice: Notice | None = None,
                   accept_new_host_key: bool = False, pool: TransportPool = default_pool,
                   via: str | None = None) -> Transport:
    """A transport to `host` (None: this machine). See the module docstring for `kind`
    and `via` (which SSH client carries the agent's connection).

    Nothing connects here: the first batch() does (and may deploy the agent). `pool`: where
    pooled transports are leased from in keeper mode (the process's default_pool).
    Raises UsageError for an unknown kind or a host given with kind="local".
    """
    if kind not in KINDS:
        raise UsageError(f"unknown transport {kind!r}; choose one of {', '.join(KINDS)}")
    via = choose_via(via)
    if host is None or kind == "local":
        if host is not None:
            raise UsageError(f"the local transport runs on this machine; it takes no host (got {host!r})")
        return lease("transport:local", _make_local, inputs=_local_inputs, pool=pool)
    if not host or host.startswith("-"):
        raise UsageError(f"not a host name: {host!r}")
    if ssh_config is not None:
        # Absolute now: a relative --ssh-config means the caller's cwd, and a pooled
        # transport reconnects later, from another command's cwd.
        ssh_config = os.path.abspath(os.path.expanduser(os.fspath(ssh_config)))
    opts = {"ssh_config": ssh_config, "timeout": timeout, "notice": notice,
            "accept_new_host_key": accept_new_host_key, "pool": pool}
    if kind == "agent":
        return _agent(host, via=via, **opts)
    if kind == "ssh":
        return _ssh(host, **opts)
    return AutoTransport(host, lambda: _agent(host, via=via, **opts), lambda guarded: _ssh(host, guarded=guarded, **opts),
                         notice=notice, remembered=remembered_choice(host))


def default_via() -> str:
    """The SSH client when the caller names none: "paramiko" (why: the module docstring)."""
    return "paramiko"


def choose_via(via: str | None) -> str:
    """`via`, else $SEAMLESS_SERVICE_SSH, else default_via(); UsageError for another name."""
    chosen = via if via is not None else (os.environ.get(VIA_ENV) or None)
    if chosen is None:
        return default_via()
    if chosen not in VIAS:
        where = "via" if via is not None else f"${VIA_ENV}"
        raise UsageError(f"unknown SSH client {chosen!r} ({where}); choose openssh or paramiko")
    return chosen


# --------------------------------------------------------------------------- factories


def _make_local() -> Transport:
    from .local import LocalTransport

    return LocalTransport()


def _local_inputs() -> tuple[str, str | None]:
    """What the local transport depends on in the environment: the launcher folder it reads
    (REMOTE_HTTP_LAUNCHER_DIR, else under HOME; absolute) and HOME (`~` in the path policy)."""
    from ...agent import paths

    return os.path.abspath(paths.base_dir()), os.environ.get("HOME")


def _remote_inputs() -> tuple[tuple[str, str | None], ...]:
    from .inputs import env_values

    return env_values(REMOTE_ENV)


def _key(kind: str, host: str, ssh_config: str | None) -> str:
    # The same alias under another ssh config is another host.
    return f"transport:{kind}:{host}" + (f"|{os.fspath(ssh_config)}" if ssh_config is not None else "")


def _agent(host: str, *, ssh_config: str | None, timeout: float | None, notice: Notice | None,
           accept_new_host_key: bool, pool: TransportPool, via: str) -> Transport:
    from .agent import AgentTransport

    def factory() -> AgentTransport:
        return AgentTransport(host, ssh_config=ssh_config, timeout=timeout or DEFAULT_TIMEOUT,
                              accept_new_host_key=accept_new_host_key, notice=notice,
                              via="openssh" if via == "openssh" else "channel")

    return lease(_key("agent", host, ssh_config), factory, inputs=lambda: (*_remote_inputs(), ("via", via)), notice=notice,
                 timeout=timeout or DEFAULT_TIMEOUT, accept_new_host_key=accept_new_host_key, pool=pool)


def _ssh(host: str, *, ssh_config: str | None, timeout: float | None, notice: Notice | None,
         accept_new_host_key: bool, pool: TransportPool, guarded: bool | None = None) -> Transport:
    from .ssh import SshTransport

    def factory() -> SshTransport:
        return SshTransport(host, ssh_config=ssh_config, timeout=timeout or DEFAULT_TIMEOUT,
                            guarded=guarded, notice=notice)

    leased = lease(_key("ssh", host, ssh_config), factory, inputs=_remote_inputs, notice=notice,
                   timeout=timeout or DEFAULT_TIMEOUT, pool=pool)
    # A kept ssh transport made before rhl-guard was known to force its key learns it now.
    ssh = leased.inner if isinstance(leased, PooledTransport) else leased
    if guarded and isinstance(ssh, SshTransport) and ssh.guarded is None:
        ssh.guarded = guarded
    return leased
