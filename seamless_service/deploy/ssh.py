"""A paramiko connection to a host alias that behaves like `ssh ALIAS` in batch mode.

Honoured from the ssh config (default ~/.ssh/config; `ssh_config=` for another file, like
`ssh -F`): HostName, Port, User, IdentityFile, IdentitiesOnly, ProxyJump, ProxyCommand,
UserKnownHostsFile, GlobalKnownHostsFile, HostKeyAlias, ConnectTimeout,
ServerAliveInterval, and StrictHostKeyChecking.

Host keys are checked here, not by paramiko: paramiko's lookup ignores wildcards,
`@revoked` and duplicate lines, and its auto-add policy would also accept keys of a host
whose key CHANGED. The rules are OpenSSH's in batch mode (ssh_config(5), checked against
the real `ssh` in tests/deploy/test_host_keys.py):

* a known matching key passes; a key marked @revoked is refused;
* a CHANGED key (known_hosts holds another key for the host) is refused under every
  StrictHostKeyChecking value. Under `no`/`off` OpenSSH still logs in, but disables port
  forwarding "to avoid man-in-the-middle attacks", and the agent's tunnel is port
  forwarding (the deploy serves the tunnel and reads the agent's secret);
* an unknown key: `yes` and `ask` (the default; nothing may prompt) refuse; `accept-new`
  (also `accept_new_host_key=True`, the --accept-new-host-key flag) and `no`/`off`
  accept it and append it to the first UserKnownHostsFile. With `UserKnownHostsFile
  none` there is nowhere to add it and OpenSSH refuses; `/dev/null` takes it (every key
  is then unknown, and accepted, at every connection).

An accepted key is said in one line (`notice`), once per host, key and decision in this
process (the tunnel keeper is one process, so once per keeper life).

Nothing ever prompts (no passwords, no passphrases): like BatchMode=yes.
"""

from __future__ import annotations

import base64
import errno
import getpass
import hashlib
import hmac
import os
import re
import select
import shlex
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import paramiko

from ..sockopts import set_nodelay
from . import AuthFailed, HostKeyChanged, HostKeyUnknown, RemoteTimeout, SshError

DEFAULT_CONFIG = "~/.ssh/config"
DEFAULT_USER_KNOWN_HOSTS = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")
DEFAULT_GLOBAL_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")
# What paramiko's look_for_keys tries when the config names no IdentityFile.
DEFAULT_IDENTITIES = ("~/.ssh/id_rsa", "~/.ssh/id_ecdsa", "~/.ssh/id_ed25519")
CONNECT_TIMEOUT = 15.0
KEEPALIVE = 30  # seconds; like ServerAliveInterval, so NATs/firewalls keep the session
MAX_JUMPS = 8  # guards against a ProxyJump loop in the config
EXIT_GRACE = 1.0  # seconds of silence after the exit status before output is taken as complete


# --------------------------------------------------------------------------- config


@dataclass
class HostSettings:
    """What the ssh config says about one alias, resolved."""

    alias: str
    hostname: str
    port: int
    user: str
    identity_files: list[str]
    identities_only: bool
    user_known_hosts: list[str]
    global_known_hosts: list[str]
    host_key_alias: str | None = None
    proxy_jump: list[str] = field(default_factory=list)
    proxy_command: str | None = None
    connect_timeout: float = CONNECT_TIMEOUT
    keepalive: int = KEEPALIVE
    strict_host_key_checking: str = "ask"   # yes | accept-new | no | ask (normalised)

    def files(self) -> list[str]:
        """The files a login with these settings reads: keys and known_hosts."""
        keys = self.identity_files or [os.path.expanduser(p) for p in DEFAULT_IDENTITIES]
        return [*keys, *self.user_known_hosts, *self.global_known_hosts]

    @property
    def known_hosts_name(self) -> str:
        """The name OpenSSH files this host's key under in known_hosts."""
        if self.host_key_alias:
            return self.host_key_alias
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"


def config_path(ssh_config: str | os.PathLike | None = None) -> Path:
    """The ssh config file load_config reads: `ssh_config`, else ~/.ssh/config."""
    return Path(ssh_config if ssh_config is not None else DEFAULT_CONFIG).expanduser()


def load_config(ssh_config: str | os.PathLike | None = None) -> paramiko.SSHConfig:
    """Parse the ssh config. An explicit file must exist; a missing ~/.ssh/config is empty."""
    path = config_path(ssh_config)
    if not path.is_file():
        if ssh_config is not None:
            raise SshError(f"ssh config file {path} does not exist")
        return paramiko.SSHConfig()
    try:
        return paramiko.SSHConfig.from_path(str(path))
    except Exception as exc:  # paramiko raises assorted types for syntax it does not know
        raise SshError(f"cannot parse ssh config {path}: {exc}") from exc


def _split_user(spec: str) -> tuple[str | None, str]:
    if "@" in spec:
        user, _, host = spec.rpartition("@")
        return user, host
    return None, spec


# ssh_config(5) StrictHostKeyChecking values -> the four behaviours
STRICT_VALUES = {"yes": "yes", "true": "yes", "accept-new": "accept-new", "no": "no", "off": "no",
                 "false": "no", "ask": "ask"}


def _strict(value: str | None, alias: str) -> str:
    if value is None:
        return "ask"  # OpenSSH's default
    mode = STRICT_VALUES.get(value.strip().lower())
    if mode is None:
        raise SshError(f"bad value in the ssh config for {alias}: StrictHostKeyChecking {value!r} "
                       f"(use one of {', '.join(STRICT_VALUES)})")
    return mode


def _yes(value: str | None) -> bool:
    return (value or "").strip().lower() in ("yes", "true")


def _files(value: str | None, default: Sequence[str]) -> list[str]:
    if value is None:
        return [os.path.expanduser(p) for p in default]
    if value.strip().lower() == "none":
        return []
    return [os.path.expanduser(p) for p in value.split()]


def resolve(host: str, config: paramiko.SSHConfig, *, port: int | None = None) -> HostSettings:
    """Resolve `[user@]alias` through the config, with OpenSSH's defaults."""
    user, alias = _split_user(host)
    try:
        cfg = config.lookup(alias)
    except Exception as exc:  # e.g. `Match exec` failing, bad tokens
        raise SshError(f"cannot read the ssh config for {alias}: {exc}") from exc
    jump = cfg.get("proxyjump")
    proxy_command = cfg.get("proxycommand")
    try:
        settings = HostSettings(
            alias=alias,
            hostname=cfg.get("hostname", alias),
            port=int(port or cfg.get("port", 22)),
            user=user or cfg.get("user") or getpass.getuser(),
            identity_files=[os.path.expanduser(p) for p in cfg.get("identityfile", [])],
            identities_only=_yes(cfg.get("identitiesonly")),
            user_known_hosts=_files(cfg.get("userknownhostsfile"), DEFAULT_USER_KNOWN_HOSTS),
            global_known_hosts=_files(cfg.get("globalknownhostsfile"), DEFAULT_GLOBAL_KNOWN_HOSTS),
            host_key_alias=cfg.get("hostkeyalias"),
            proxy_jump=[] if not jump or jump.lower() == "none" else [j.strip() for j in jump.split(",")],
            proxy_command=None if not proxy_command or proxy_command.lower() == "none" else proxy_command,
            connect_timeout=float(cfg.get("connecttimeout", CONNECT_TIMEOUT)),
            keepalive=int(cfg.get("serveraliveinterval", KEEPALIVE)),
            # the user's own choice for this host, as OpenSSH applies it
            strict_host_key_checking=_strict(cfg.get("stricthostkeychecking"), alias),
        )
    except ValueError as exc:
        raise SshError(f"bad value in the ssh config for {alias}: {exc}") from exc
    return settings


def _parse_jump(spec: str) -> tuple[str, int | None]:
    """`[user@]host[:port]` or `ssh://[user@]host[:port]` -> (`[user@]host`, port)."""
    if spec.startswith("ssh://"):
        spec = spec[len("ssh://"):]
    user, rest = _split_user(spec)
    port = None
    if rest.startswith("["):  # [ipv6]:port
        addr, _, tail = rest[1:].partition("]")
        rest, port = addr, int(tail[1:]) if tail.startswith(":") else None
    elif rest.count(":") == 1:
        rest, _, p = rest.partition(":")
        port = int(p)
    return (f"{user}@{rest}" if user else rest), port


# --------------------------------------------------------------------------- host keys


def fingerprint(key: paramiko.PKey) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _wildcard(pattern: str) -> re.Pattern:
    # Only * and ? are special in OpenSSH patterns; `[host]:port` brackets are literal
    # (fnmatch would read them as a character class).
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern), re.IGNORECASE)


def _host_matches(patterns: str, name: str) -> bool:
    """OpenSSH known_hosts host field: hashed `|1|salt|hmac`, or patterns with * ? and !."""
    if patterns.startswith("|1|"):
        try:
            _, _, salt, digest = patterns.split("|")
            mac = hmac.new(base64.b64decode(salt), name.encode(), hashlib.sha1).digest()
            return hmac.compare_digest(mac, base64.b64decode(digest))
        except ValueError:
            return False
    matched = False
    for pattern in patterns.split(","):
        negated = pattern.startswith("!")
        if _wildcard(pattern[1:] if negated else pattern).fullmatch(name):
            if negated:
                return False  # a negated match vetoes the whole line
            matched = True
    return matched


@dataclass
class KnownKeys:
    """The known_hosts lines that apply to one name: (type, base64, file) triples."""

    keys: list[tuple[str, str, str]]
    revoked: set[tuple[str, str]]

    @property
    def types(self) -> list[str]:
        return list(dict.fromkeys(t for t, _, _ in self.keys))


def read_known_hosts(files: Sequence[str], name: str) -> KnownKeys:
    keys: list[tuple[str, str, str]] = []
    revoked: set[tuple[str, str]] = set()
    for path in files:
        try:
            lines = Path(path).read_text(errors="replace").splitlines()
        except OSError:
            continue  # a missing known_hosts is simply empty, as for OpenSSH
        for line in lines:
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            marker = None
            if fields[0].startswith("@"):
                marker, fields = fields[0], fields[1:]
            if len(fields) < 3:
                continue
            patterns, key_type, blob = fields[:3]
            if marker == "@revoked":
                revoked.add((key_type, blob))  # revoked everywhere, whatever the host field
            elif marker is None and _host_matches(patterns, name):
                keys.append((key_type, blob, path))
            # @cert-authority lines: host certificates are not supported; ignored.
    return KnownKeys(keys, revoked)


def _append_known_host(path: str, name: str, key: paramiko.PKey) -> None:
    target = Path(path)
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    prefix = ""
    if target.exists() and target.stat().st_size:
        with open(target, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            prefix = "" if fh.read(1) == b"\n" else "\n"
    fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a") as fh:
        fh.write(f"{prefix}{name} {key.get_name()} {key.get_base64()}\n")


Notice = Callable[[str], None]
_noted: set[tuple[str, ...]] = set()   # (host, key, decision) already said in this process
_noted_lock = threading.Lock()


def _print_notice(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _say_once(notice: Notice | None, what: tuple[str, ...], message: str) -> None:
    with _noted_lock:
        if what in _noted:
            return
        _noted.add(what)
    (notice if notice is not None else _print_notice)(message)


class _HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Called by paramiko for every connection (the client holds no keys of its own).

    `mode`: the StrictHostKeyChecking behaviour (yes | accept-new | no | ask)."""

    def __init__(self, settings: HostSettings, mode: str, notice: Notice | None = None):
        self.settings = settings
        self.mode = mode
        self.notice = notice
        self.verified = False
        self.known = read_known_hosts(settings.user_known_hosts + settings.global_known_hosts,
                                      settings.known_hosts_name)

    def missing_host_key(self, client, hostname, key) -> None:
        s = self.settings
        name = s.known_hosts_name
        ktype, blob = key.get_name(), key.get_base64()
        shown = f"{ktype} {fingerprint(key)}"
        if (ktype, blob) in self.known.revoked:
            raise HostKeyChanged(f"host key for {s.alias} ({name}) is marked @revoked in known_hosts: {shown}; refusing")
        if self.known.keys:
            same_type = [(b, f) for t, b, f in self.known.keys if t == ktype]
            if any(b == blob for b, _ in same_type):
                self.verified = True
                return
            where = (same_type or [(None, f) for _, _, f in self.known.keys])[0][1]
            why = ("; StrictHostKeyChecking no lets ssh log in, but OpenSSH then disables port forwarding, "
                   "which the agent's tunnel is" if self.mode == "no" else "")
            raise HostKeyChanged(
                f"host key CHANGED for {s.alias} ({name}): the server sent {shown} but {where} holds a "
                f"different key; refusing to connect (possible man-in-the-middle{why}). If the change is "
                f"expected, remove the old key with `ssh-keygen -R '{name}' -f {where}` and deploy again"
            )
        if self.mode in ("yes", "ask"):
            files = ", ".join(s.user_known_hosts) or "none configured"
            setting = "; StrictHostKeyChecking yes" if self.mode == "yes" else ""
            raise HostKeyUnknown(
                f"host key for {s.alias} is not in known_hosts; verify it and run "
                f"`seamless-service agent deploy {s.alias} --accept-new-host-key` "
                f"(server key: {shown}; known_hosts: {files}{setting})"
            )
        if not s.user_known_hosts:
            # OpenSSH too: with nowhere to record it, "Host key verification failed"
            raise HostKeyUnknown(f"cannot accept the host key of {s.alias}: UserKnownHostsFile is none")
        self._accept(key, shown)
        self.verified = True

    def _accept(self, key: paramiko.PKey, shown: str) -> None:
        """Record an unknown key as OpenSSH does and say so; a failure to record it is said
        too, and (as for OpenSSH) does not stop the connection."""
        s = self.settings
        target = s.user_known_hosts[0]
        setting = f"StrictHostKeyChecking {self.mode}"
        try:
            _append_known_host(target, s.known_hosts_name, key)
        except OSError as exc:
            kept = f"could not be added to {target} ({exc.strerror or exc})"
        else:
            kept = "" if os.path.realpath(target) == os.devnull else f"added to {target}"
        if kept.startswith("added"):
            message = f"seamless-service: {s.alias}: host key {shown} {kept} ({setting})"
        else:
            where = f"UserKnownHostsFile {target}" if not kept else kept
            message = f"seamless-service: {s.alias}: host key {shown} accepted unchecked ({setting}, {where})"
        _say_once(self.notice, (s.alias, s.known_hosts_name, shown, self.mode, target), message)

    def prefer_known_types(self, transport: paramiko.Transport) -> None:
        """Ask the server for a key type we know, like OpenSSH, so a host with an ed25519
        and an rsa key is not reported as CHANGED when we only know one of them."""
        known = self.known.types
        if "ssh-rsa" in known:
            known = known + ["rsa-sha2-512", "rsa-sha2-256"]
        opts = transport.get_security_options()
        preferred = [t for t in opts.key_types if t in known]
        if preferred:
            opts.key_types = preferred + [t for t in opts.key_types if t not in preferred]


# --------------------------------------------------------------------------- connect


class ParamikoClient(paramiko.SSHClient):
    """The paramiko SSHClient `connect` returns: connected as `ssh ALIAS` would be (the
    deploy's and the agent transport's one SSH connection; not to be confused with the ssh
    transport, which runs the `ssh` binary per call). Knows where it goes and closes its
    jump hosts with itself."""

    def __init__(self, settings: HostSettings):
        super().__init__()
        self.settings = settings
        self.jumps: list[ParamikoClient] = []
        self._proxy: paramiko.ProxyCommand | None = None

    @property
    def alias(self) -> str:
        return self.settings.alias

    def close(self) -> None:
        super().close()
        if self._proxy is not None:
            self._proxy.close()
            self._proxy = None
        for jump in reversed(self.jumps):
            jump.close()
        self.jumps = []

    def __enter__(self) -> "ParamikoClient":
        return self


def _open_socket(s: HostSettings, timeout: float) -> socket.socket:
    try:
        sock = socket.create_connection((s.hostname, s.port), timeout=timeout)
    except socket.gaierror as exc:
        raise SshError(f"cannot resolve {s.hostname} (host {s.alias}): {exc.strerror}") from exc
    except socket.timeout as exc:
        raise RemoteTimeout(f"cannot reach {s.alias} ({s.hostname}:{s.port}): timed out after {timeout:g} s") from exc
    except OSError as exc:
        reason = exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))
        raise SshError(f"cannot reach {s.alias} ({s.hostname}:{s.port}): {reason}") from exc
    set_nodelay(sock)
    return sock


def connect(host: str, *, ssh_config: str | os.PathLike | None = None, accept_new_host_key: bool = False,
            timeout: float | None = None, on_read: Callable[[list[str]], None] | None = None,
            notice: Notice | None = None,
            _config: paramiko.SSHConfig | None = None, _port: int | None = None, _depth: int = 0) -> ParamikoClient:
    """Open an authenticated SSH connection to `host` (`[user@]alias`), or raise SshError.

    `timeout` bounds each phase (TCP connect, banner, key exchange, auth); default
    ConnectTimeout from the config, else 15 s. `accept_new_host_key` is
    StrictHostKeyChecking accept-new for this call; `notice` (default: stderr) hears of a
    host key accepted without being known. `on_read(paths)`, if given, is told about
    every local file the connection depends on (the config, known_hosts, keys, also of
    jump hosts) before it is read, so a caller can tell later whether any changed.
    """
    if _depth > MAX_JUMPS:
        raise SshError(f"ProxyJump chain for {host} is longer than {MAX_JUMPS} hops (a loop in the ssh config?)")
    if _config is None and on_read is not None:
        on_read([str(config_path(ssh_config))])
    config = _config if _config is not None else load_config(ssh_config)
    s = resolve(host, config, port=_port)
    if on_read is not None:
        on_read(s.files())
    timeout = timeout if timeout is not None else s.connect_timeout
    conn = ParamikoClient(s)
    try:
        sock = _proxy_socket(conn, config, accept_new_host_key, timeout, _depth, on_read, notice)
        if sock is None:
            sock = _open_socket(s, timeout)
        _handshake(conn, sock, host_key_mode(s, accept_new_host_key), timeout, notice)
    except BaseException:
        conn.close()
        raise
    return conn


def host_key_mode(settings: HostSettings, accept_new_host_key: bool) -> str:
    """The StrictHostKeyChecking behaviour for a connection: the config's, unless the
    caller asked for accept-new (like `ssh -o StrictHostKeyChecking=accept-new`, which
    takes precedence over the config file)."""
    return "accept-new" if accept_new_host_key else settings.strict_host_key_checking


def _proxy_socket(conn: ParamikoClient, config: paramiko.SSHConfig, accept_new: bool,
                  timeout: float, depth: int, on_read: Callable[[list[str]], None] | None = None,
                  notice: Notice | None = None):
    """A socket-like object through ProxyJump hops or ProxyCommand, or None for direct."""
    s = conn.settings
    if s.proxy_jump:
        # The first hop is reached with its own config (it may jump too); every later hop
        # and the target are reached through a direct-tcpip channel of the previous hop,
        # addressed by the HostName/Port that the local config gives them (as `ssh -J`).
        try:
            hops = [_parse_jump(j) for j in s.proxy_jump]
        except ValueError as exc:
            raise SshError(f"bad ProxyJump for {s.alias} in the ssh config: {','.join(s.proxy_jump)}") from exc
        sock = None
        for i, (hop, hop_port) in enumerate(hops):
            if i == 0:
                jump = connect(hop, accept_new_host_key=accept_new, timeout=timeout, on_read=on_read, notice=notice,
                               _config=config, _port=hop_port, _depth=depth + 1)
                conn.jumps.append(jump)
            else:
                jump = ParamikoClient(resolve(hop, config, port=hop_port))
                conn.jumps.append(jump)  # before the handshake, so close() cleans up a failure
                if on_read is not None:
                    on_read(jump.settings.files())
                _handshake(jump, sock, host_key_mode(jump.settings, accept_new), timeout, notice)
            if i + 1 < len(hops):
                nxt = resolve(hops[i + 1][0], config, port=hops[i + 1][1])
            else:
                nxt = s
            try:
                sock = jump.get_transport().open_channel(
                    "direct-tcpip", (nxt.hostname, nxt.port), ("127.0.0.1", 0), timeout=timeout)
            except (paramiko.SSHException, OSError) as exc:
                raise SshError(f"jump host {jump.alias} could not reach {nxt.hostname}:{nxt.port} "
                               f"for {s.alias}: {exc}") from exc
        return sock
    if s.proxy_command:
        try:
            conn._proxy = paramiko.ProxyCommand(s.proxy_command)
        except Exception as exc:
            raise SshError(f"ProxyCommand for {s.alias} failed to start: {exc}") from exc
        return conn._proxy
    return None


def _handshake(conn: ParamikoClient, sock, mode: str, timeout: float, notice: Notice | None = None) -> None:
    s = conn.settings
    policy = _HostKeyPolicy(s, mode, notice)
    conn.set_missing_host_key_policy(policy)

    def transport_factory(sock, disabled_algorithms=None):
        transport = paramiko.Transport(sock, disabled_algorithms=disabled_algorithms)
        policy.prefer_known_types(transport)
        # AES-GCM first: authenticated encryption in one pass is the cheapest cipher paramiko
        # offers; it brings a 200 KB agent reply through the tunnel under 2 ms (bench_tunnel).
        options = transport.get_security_options()
        preferred = [c for c in ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com") if c in options.ciphers]
        options.ciphers = tuple(preferred + [c for c in options.ciphers if c not in preferred])
        return transport

    keys = [f for f in s.identity_files if os.path.exists(f)]
    try:
        conn.connect(
            s.hostname, port=s.port, username=s.user, sock=sock,
            key_filename=keys or None,
            # IdentitiesOnly: only the configured files, like OpenSSH (agent keys are not
            # filtered to match them here, so the agent is skipped altogether).
            allow_agent=not s.identities_only,
            # OpenSSH tries the default ~/.ssh/id_* files only when no IdentityFile is set.
            look_for_keys=not s.identity_files,
            timeout=timeout, banner_timeout=timeout, auth_timeout=timeout, channel_timeout=timeout,
            transport_factory=transport_factory,
        )
    except SshError:
        raise
    except paramiko.PasswordRequiredException as exc:
        raise AuthFailed(f"authentication to {s.alias} as {s.user} failed: the key is passphrase-protected "
                         "and nothing may prompt; load it into ssh-agent") from exc
    except paramiko.AuthenticationException as exc:
        raise AuthFailed(f"authentication to {s.alias} as {s.user} failed: the server refused "
                         f"{_offered(s, keys)}") from exc
    except paramiko.SSHException as exc:
        if policy.verified:  # past the host key: this is the auth phase
            reason = "no key to offer" if "No authentication methods" in str(exc) else str(exc)
            raise AuthFailed(f"authentication to {s.alias} as {s.user} failed: {reason} "
                             f"({_offered(s, keys)})") from exc
        raise SshError(f"SSH handshake with {s.alias} ({s.hostname}:{s.port}) failed: {exc}") from exc
    except (OSError, EOFError) as exc:
        raise SshError(f"SSH connection to {s.alias} ({s.hostname}:{s.port}) failed: "
                       f"{getattr(exc, 'strerror', None) or exc or type(exc).__name__}") from exc
    transport = conn.get_transport()
    transport.set_keepalive(s.keepalive)
    set_nodelay(transport.sock)


def _offered(s: HostSettings, keys: list[str]) -> str:
    if keys:
        return "keys " + ", ".join(keys)
    if s.identity_files:
        return "no key: IdentityFile " + ", ".join(s.identity_files) + " does not exist"
    return "the default keys" + ("" if s.identities_only else " and ssh-agent keys")


# --------------------------------------------------------------------------- commands


def run(client: paramiko.SSHClient, argv: Sequence[str], *, timeout: float,
        stdin: bytes | None = None) -> tuple[int, str, str]:
    """Run `argv` on the host and return (exit status, stdout, stderr).

    Every argument is shell-quoted (shlex.join): the remote login shell sees exactly these
    words, never a string to re-split. stdout and stderr are read together so a chatty
    stderr cannot fill the channel window and deadlock. A command that outlives `timeout`
    is abandoned (its channel closed) and RemoteTimeout raised.
    """
    if isinstance(argv, (str, bytes)):
        raise TypeError("run() takes a list of arguments, not a command string")
    command = shlex.join([str(a) for a in argv])
    name = os.path.basename(str(argv[0])) if argv else "?"
    deadline = time.monotonic() + timeout
    transport = client.get_transport()
    if transport is None or not transport.is_active():
        raise SshError("the SSH connection is closed")
    try:
        chan = transport.open_session(timeout=timeout)
        chan.settimeout(timeout)  # bounds sendall() if the command does not read its stdin
        chan.exec_command(command)
        if stdin is not None:
            chan.sendall(stdin)
        chan.shutdown_write()  # EOF on the command's stdin: nothing waits for input
    except socket.timeout as exc:
        chan.close()
        raise RemoteTimeout(f"{name} did not read its input on the host within {timeout:g} s") from exc
    except (paramiko.SSHException, OSError) as exc:
        raise SshError(f"cannot run {name} on the host: {exc}") from exc
    out, err = bytearray(), bytearray()
    exited_at: float | None = None
    quiet_since = time.monotonic()
    try:
        while True:
            got = False
            while chan.recv_ready():
                out += chan.recv(65536)
                got = True
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
                got = True
            now = time.monotonic()
            if got:
                quiet_since = now
            if not (chan.recv_ready() or chan.recv_stderr_ready()):
                # sshd may send the exit status before the last output, so the end is EOF
                # (or close) after the exit status...
                if chan.closed or (chan.eof_received and chan.exit_status_ready()):
                    break
                # ...except when a detached child still holds the output open: then a
                # quiet spell after the exit status ends it.
                if chan.exit_status_ready():
                    exited_at = exited_at or now
                    if now - max(exited_at, quiet_since) >= EXIT_GRACE:
                        break
            remaining = deadline - now
            if remaining <= 0:
                raise RemoteTimeout(f"{name} did not finish on the host within {timeout:g} s")
            select.select([chan], [], [], min(remaining, 0.2))
        status = chan.recv_exit_status() if chan.exit_status_ready() else -1
    finally:
        chan.close()
    return status, out.decode(errors="replace"), err.decode(errors="replace")
