"""deploy/ against a real OpenSSH server and a throwaway remote account.

One server is deployed from nothing once per session (`deployed`); tests that only need
SSH use a fresh `sshd`. Nothing is mocked: the venv, pip, the agent, SFTP and the host-key
checks are the real ones.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Iterator

import paramiko
import pytest

from seamless_service import __version__
from seamless_service.deploy import AuthFailed, DeployError, HostKeyChanged, HostKeyUnknown, SshError
from seamless_service.deploy import bootstrap, cache, remote_python, ssh, wheels
from seamless_service.deploy.cache import AgentEndpoint
from seamless_service.deploy.remote_python import RemotePython
from tests.support.deploy import Deployed, deploy_recorded
from tests.support.sshd import SshServer

FAKE_VERSION = "0.0.1"
INSTALL_STEPS = {"venv", "build", "upload", "install", "installed", "wheels"}


def steps(events: list[tuple[str, str]]) -> set[str]:
    return {step for step, _ in events}


def agent_status_on_host(server: SshServer, venv: Path) -> dict | None:
    """`agent status --json` run on the host through the real ssh client."""
    result = server.ssh([str(venv / "bin/python"), "-m", "seamless_service", "agent", "status", "--json"])
    lines = result.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else None


# --------------------------------------------------------------------------- deploy from nothing


def test_deploy_from_nothing_installs_and_starts(deployed: Deployed):
    server, endpoint = deployed.server, deployed.endpoint
    assert {"venv", "upload", "install", "start", "ready"} <= steps(deployed.events)
    # The dedicated venv exists on the remote side, owned by the remote user, and holds us.
    assert (deployed.venv / "bin/python").exists()
    assert deployed.venv.stat().st_uid == server.uid
    assert endpoint.remote_python == str(deployed.venv / "bin/python")
    assert endpoint.version == __version__
    status = agent_status_on_host(server, deployed.venv)
    assert status is not None, "agent status says no agent is running"
    assert status["port"] == endpoint.remote_port and status["pid"] == endpoint.pid
    assert status["version"] == __version__
    assert endpoint.pid in server.user_processes()  # runs as the remote user
    print(f"deploy from nothing took {deployed.seconds:.1f} s")


def test_the_agent_venv_holds_only_the_agent_dependencies(deployed: Deployed):
    """The server install pulls neither the client side nor numpy/aiohttp (issue: agent)."""
    site = next((deployed.venv / "lib").glob("python3*/site-packages"))
    installed = {path.name.split("-")[0].lower().replace("_", "-")
                 for path in site.glob("*.dist-info")}
    assert {"seamless-service", "rpyc", "msgpack", "pyyaml", "remote-http-launcher"} <= installed
    assert not installed & {"numpy", "aiohttp", "paramiko", "sshtunnel", "seamless-config"}, installed


def test_status_reports_the_running_agent(deployed: Deployed):
    info = bootstrap.status(deployed.server.alias, ssh_config=deployed.server.ssh_config)
    assert info["installed"] == __version__
    assert info["running"] is True
    assert info["port"] == deployed.endpoint.remote_port


def test_redeploy_reuses_install_and_agent(deployed: Deployed):
    site = next((deployed.venv / "lib").glob("python3*/site-packages"))
    dist_info = next(site.glob("seamless_service-*.dist-info"))
    before = (dist_info.stat().st_mtime_ns, (site / "seamless_service").stat().st_mtime_ns)
    start = time.monotonic()
    endpoint, events = deploy_recorded(deployed.server)
    elapsed = time.monotonic() - start
    assert not steps(events) & INSTALL_STEPS, events  # no venv, no build, no upload, no pip
    assert (dist_info.stat().st_mtime_ns, (site / "seamless_service").stat().st_mtime_ns) == before
    assert (endpoint.pid, endpoint.remote_port) == (deployed.endpoint.pid, deployed.endpoint.remote_port)
    assert endpoint.secret == deployed.endpoint.secret
    assert any("already running" in message for _, message in events)
    print(f"redeploy took {elapsed:.2f} s")


# --------------------------------------------------------------------------- the endpoint works


@contextlib.contextmanager
def forward(conn: paramiko.SSHClient, remote_port: int) -> Iterator[int]:
    """A 127.0.0.1 listener whose connections travel in direct-tcpip channels of `conn`."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    transport = conn.get_transport()

    def pump(src, dst) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            # shutdown() before close(): the other pump thread is blocked in recv() on the
            # same socket, and a bare close() would not send FIN until that recv returns.
            for end in (src, dst):
                with contextlib.suppress(Exception):
                    end.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(Exception):
                    end.close()

    def accept() -> None:
        while True:
            try:
                client, peer = listener.accept()
            except OSError:
                return
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            chan = transport.open_channel("direct-tcpip", ("127.0.0.1", remote_port), peer)
            threading.Thread(target=pump, args=(client, chan), daemon=True).start()
            threading.Thread(target=pump, args=(chan, client), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


def test_endpoint_answers_hello_through_ssh(deployed: Deployed):
    from seamless_service.client.transport.agent_conn import AgentConnection

    endpoint = deployed.endpoint
    with ssh.connect(deployed.server.alias, ssh_config=deployed.server.ssh_config) as conn:
        with forward(conn, endpoint.remote_port) as local_port:
            agent = AgentConnection.connect("127.0.0.1", local_port, endpoint.secret, timeout=20)
            try:
                (result,) = agent.batch([("hello", {})])
            finally:
                agent.close()
    assert result["ok"], result
    assert result["value"]["version"] == __version__
    assert result["value"]["user"] == deployed.server.user
    assert result["value"]["pid"] == endpoint.pid


# --------------------------------------------------------------------------- the secret


def test_secret_never_exposed(deployed: Deployed):
    server, endpoint = deployed.server, deployed.endpoint
    secret = endpoint.secret
    agent_dir = server.home / ".remote-http-launcher/agent"
    assert secret and secret == (agent_dir / "secret").read_text().strip()  # we read the right file
    assert secret not in repr(endpoint) and secret not in str(endpoint)
    assert endpoint.pid in server.user_processes()
    for pid in server.user_processes():  # the agent and anything else the remote user runs
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            assert secret.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
            assert secret.encode() not in Path(f"/proc/{pid}/environ").read_bytes()
    assert secret not in (agent_dir / "agent.log").read_text(errors="replace")
    assert secret not in server.log_text()
    assert all(secret not in message for _, message in deployed.events)


def test_secret_readable_by_others_is_refused(deployed: Deployed):
    secret_file = deployed.server.home / ".remote-http-launcher/agent/secret"
    secret = secret_file.read_text().strip()
    secret_file.chmod(0o644)
    try:
        with pytest.raises(DeployError) as info:
            deploy_recorded(deployed.server)
    finally:
        secret_file.chmod(0o600)
    assert "accessible to other users" in str(info.value)
    assert secret not in str(info.value) and secret not in repr(info.value)


def test_cache_files_are_private(deployed: Deployed):
    endpoint = deployed.endpoint
    path = cache.host_file(endpoint.host)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700  # hosts/
    assert stat.S_IMODE(cache.cache_root().stat().st_mode) == 0o700  # seamless-service/
    assert stat.S_IMODE(cache.wheels_dir().stat().st_mode) == 0o700
    loaded = cache.load(endpoint.host)
    assert loaded is not None
    assert (loaded.remote_port, loaded.pid, loaded.version) == (endpoint.remote_port, endpoint.pid, endpoint.version)
    assert loaded.secret == endpoint.secret
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp-")]  # atomic writes leave nothing


# --------------------------------------------------------------------------- upgrades


@pytest.fixture(scope="session")
def fake_wheel(tmp_path_factory) -> Path:
    """A wheel of this very source tree that says it is version FAKE_VERSION."""
    root = wheels.project_root()
    if root is None:
        pytest.skip("needs the source tree (editable install) to build a wheel of another version")
    tmp = tmp_path_factory.mktemp("fake-version")
    src = tmp / "src"
    for path in wheels._source_files(root):
        target = src / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    for name, old, new in (("seamless_service/__init__.py", f'__version__ = "{__version__}"',
                            f'__version__ = "{FAKE_VERSION}"'),
                           ("pyproject.toml", f'version = "{__version__}"', f'version = "{FAKE_VERSION}"')):
        text = (src / name).read_text()
        assert old in text, f"cannot patch the version in {name}"
        (src / name).write_text(text.replace(old, new, 1))
    return wheels.build_wheel(src, tmp / "out")


def install_fake_version(server: SshServer, venv: Path, wheel: Path) -> dict:
    """As the remote user: install the other version into the agent venv and start its agent."""
    remote = server.write_file(wheel.name, "")
    shutil.copyfile(wheel, remote)
    python = str(venv / "bin/python")
    result = server.ssh([python, "-m", "pip", "install", "--no-deps", "--force-reinstall", "--no-index",
                         "--disable-pip-version-check", "-q", str(remote)], timeout=300)
    assert result.returncode == 0, result.stderr
    result = server.ssh([python, "-m", "seamless_service", "agent", "start", "--json"], timeout=120)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["version"] == FAKE_VERSION
    return info


def test_deploy_upgrades_another_version(deployed: Deployed, fake_wheel: Path):
    server = deployed.server
    fake = install_fake_version(server, deployed.venv, fake_wheel)
    endpoint, events = deploy_recorded(server)
    deployed.endpoint = endpoint
    assert any(f"upgrading from {FAKE_VERSION}" in message for _, message in events), events
    assert "venv" not in steps(events)  # the venv is reused, only the package changes
    assert endpoint.version == __version__
    assert endpoint.pid != fake["pid"] and fake["pid"] not in server.user_processes()
    status = agent_status_on_host(server, deployed.venv)
    assert status["version"] == __version__ and status["port"] == endpoint.remote_port


# --------------------------------------------------------------------------- offline installs


@pytest.fixture(scope="module")
def offline_deployed(offline_server: SshServer) -> Deployed:
    start = time.monotonic()
    endpoint, events = deploy_recorded(offline_server, force_offline=True)
    return Deployed(offline_server, endpoint, events, time.monotonic() - start)


def test_offline_host_really_has_no_index(offline_server: SshServer):
    result = offline_server.ssh(["python3", "-m", "pip", "download", "--no-deps", "-d", "dl", "tabulate"],
                                timeout=120)
    assert result.returncode != 0


def test_force_offline_installs_from_uploaded_wheels(offline_deployed: Deployed):
    events, server = offline_deployed.events, offline_deployed.server
    messages = [message for _, message in events]
    assert not any("from the host's package index" in m for m in messages), messages  # never tried online
    uploads = [m for m in messages if m.startswith("uploading") and "dependency wheels" in m]
    assert uploads and int(uploads[0].split()[1]) >= 5
    assert any("from uploaded wheels" in m for m in messages)
    python = str(offline_deployed.venv / "bin/python")
    ok = server.ssh([python, "-c", "import rpyc, msgpack, yaml, tabulate, ssh_guard"])
    assert ok.returncode == 0, ok.stderr
    # Only the agent's own dependencies: never the [client] extra.
    for client_only in ("paramiko", "sshtunnel", "seamless_config"):
        assert server.ssh([python, "-c", f"import {client_only}"]).returncode != 0, client_only
    status = agent_status_on_host(server, offline_deployed.venv)
    assert status["port"] == offline_deployed.endpoint.remote_port
    print(f"offline deploy from nothing took {offline_deployed.seconds:.1f} s")


def test_upgrade_falls_back_to_uploaded_wheels(offline_deployed: Deployed, fake_wheel: Path):
    server = offline_deployed.server
    python = str(offline_deployed.venv / "bin/python")
    install_fake_version(server, offline_deployed.venv, fake_wheel)
    # As if the new version needed a dependency the host lacks: only an index or an upload
    # can provide it (with all dependencies present, pip would not need the index at all).
    result = server.ssh([python, "-m", "pip", "uninstall", "-y", "-q", "tabulate"], timeout=120)
    assert result.returncode == 0, result.stderr
    endpoint, events = deploy_recorded(server)  # not forced: the index attempt fails first
    messages = [message for _, message in events]
    assert any("from the host's package index" in m for m in messages)
    assert any("cannot install from a package index" in m for m in messages)
    assert any("from uploaded wheels" in m for m in messages)
    assert endpoint.version == __version__
    assert server.ssh([python, "-c", "import tabulate"]).returncode == 0


# --------------------------------------------------------------------------- host keys and auth


def test_unknown_host_key_refused_then_accepted(deployed: Deployed, tmp_path):
    server = deployed.server
    known = tmp_path / "known_hosts"
    known.write_text("")
    config = server.write_ssh_config(tmp_path / "config", known_hosts=known)
    with pytest.raises(HostKeyUnknown) as info:
        deploy_recorded(server, ssh_config=config)
    message = str(info.value)
    assert (f"host key for {server.alias} is not in known_hosts; verify it and run "
            f"`seamless-service agent deploy {server.alias} --accept-new-host-key`") in message
    assert "\n" not in message
    assert known.read_text() == ""
    endpoint, events = deploy_recorded(server, ssh_config=config, accept_new_host_key=True)
    assert endpoint.remote_port == deployed.endpoint.remote_port
    assert known.read_text().split() == server.known_hosts_line().split()
    deploy_recorded(server, ssh_config=config)  # now known: no flag needed


def test_changed_host_key_refused_even_when_accepting(sshd: SshServer):
    before = sshd.known_hosts.read_bytes()
    sshd.rotate_host_key()
    for accept in (False, True):
        with pytest.raises(HostKeyChanged) as info:
            bootstrap.deploy(sshd.alias, ssh_config=sshd.ssh_config, accept_new_host_key=accept)
        assert "host key CHANGED" in str(info.value)
        assert sshd.alias in str(info.value)
    assert sshd.known_hosts.read_bytes() == before
    assert not (sshd.home / ".local/share/seamless-service").exists()  # nothing ran on the host


def test_wrong_user_key_refused(sshd: SshServer, tmp_path):
    key = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    config = sshd.write_ssh_config(tmp_path / "config", identity=key)
    with pytest.raises(AuthFailed) as info:
        bootstrap.deploy(sshd.alias, ssh_config=config)
    message = str(info.value)
    assert sshd.alias in message and "authentication" in message and "\n" not in message


def test_unreachable_host_is_one_line(sshd: SshServer):
    sshd.stop()
    with pytest.raises(SshError) as info:
        bootstrap.deploy(sshd.alias, ssh_config=sshd.ssh_config)
    assert f"cannot reach {sshd.alias}" in str(info.value)


def test_hashed_known_hosts_accepted(sshd: SshServer):
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(sshd.known_hosts)], check=True, capture_output=True)
    assert sshd.known_hosts.read_text().startswith("|1|")
    with ssh.connect(sshd.alias, ssh_config=sshd.ssh_config) as conn:
        assert ssh.run(conn, ["id", "-un"], timeout=30)[1].strip() == sshd.user


def test_revoked_key_refused(sshd: SshServer):
    key_type, blob = sshd.host_pubkey.split()[:2]
    with open(sshd.known_hosts, "a") as fh:
        fh.write(f"@revoked * {key_type} {blob}\n")
    with pytest.raises(HostKeyChanged, match="revoked"):
        ssh.connect(sshd.alias, ssh_config=sshd.ssh_config)


# --------------------------------------------------------------------------- ssh.run and the connection


def test_run_quotes_every_argument(sshd: SshServer):
    words = ["a b", "$HOME", "'quoted'", '"double"', "semi;colon", "*", "back`tick`", ""]
    with ssh.connect(sshd.alias, ssh_config=sshd.ssh_config) as conn:
        code, out, err = ssh.run(conn, ["printf", "%s\\n", *words], timeout=30)
        assert code == 0, err
        assert out.split("\n")[:-1] == words
        assert ssh.run(conn, ["sh", "-c", "echo out; echo err >&2; exit 7"], timeout=30) == (7, "out\n", "err\n")
        for size in (300_000, 3_000_000):  # more than one channel window
            assert ssh.run(conn, ["cat"], timeout=60, stdin=b"x" * size)[1] == "x" * size
        with pytest.raises(TypeError):
            ssh.run(conn, "echo hi", timeout=30)  # type: ignore[arg-type]


def test_run_returns_when_a_detached_child_keeps_the_output_open(sshd: SshServer):
    with ssh.connect(sshd.alias, ssh_config=sshd.ssh_config) as conn:
        start = time.monotonic()
        code, out, _ = ssh.run(conn, ["sh", "-c", "sleep 30 & echo started"], timeout=60)
        assert (code, out) == (0, "started\n")
        assert time.monotonic() - start < 20  # did not wait for the child


def test_run_times_out(sshd: SshServer):
    from seamless_service.deploy import RemoteTimeout

    with ssh.connect(sshd.alias, ssh_config=sshd.ssh_config) as conn:
        with pytest.raises(RemoteTimeout, match="sleep did not finish"):
            ssh.run(conn, ["sleep", "30"], timeout=1)
        assert ssh.run(conn, ["true"], timeout=30)[0] == 0  # the connection is still usable


def test_connection_settings(sshd: SshServer):
    with ssh.connect(sshd.alias, ssh_config=sshd.ssh_config) as conn:
        transport = conn.get_transport()
        assert transport.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert transport.packetizer._Packetizer__keepalive_interval == ssh.KEEPALIVE
        assert conn.settings.user == sshd.user and conn.settings.port == sshd.port
    assert not transport.is_active()


def test_proxy_jump(sshd: SshServer, tmp_path):
    with SshServer.start() as target:
        config = tmp_path / "config"
        config.write_text(sshd.config_block() + target.config_block(extra={"ProxyJump": sshd.alias}))
        with ssh.connect(target.alias, ssh_config=config) as conn:
            assert ssh.run(conn, ["id", "-un"], timeout=30)[1].strip() == target.user
            assert isinstance(conn.get_transport().sock, paramiko.Channel)  # through the jump host
            assert [j.alias for j in conn.jumps] == [sshd.alias]
            jump_transport = conn.jumps[0].get_transport()
        assert not jump_transport.is_active()  # closed with the connection


def test_proxy_jump_chain(sshd: SshServer, tmp_path):
    with SshServer.start() as middle, SshServer.start() as target:
        config = tmp_path / "config"
        config.write_text(sshd.config_block() + middle.config_block()
                          + target.config_block(extra={"ProxyJump": f"{sshd.alias},{middle.alias}"}))
        with ssh.connect(target.alias, ssh_config=config) as conn:
            assert ssh.run(conn, ["id", "-un"], timeout=30)[1].strip() == target.user
            assert [j.alias for j in conn.jumps] == [sshd.alias, middle.alias]
            assert isinstance(conn.jumps[1].get_transport().sock, paramiko.Channel)  # hop 2 via hop 1
            transports = [j.get_transport() for j in conn.jumps]
        assert not any(t.is_active() for t in transports)


def test_proxy_command(sshd: SshServer, tmp_path):
    with SshServer.start() as target:
        config = tmp_path / "config"
        proxy = f"ssh -F {config} -W %h:%p {sshd.alias}"  # the classic pre-ProxyJump idiom
        config.write_text(sshd.config_block() + target.config_block(extra={"ProxyCommand": proxy}))
        with ssh.connect(target.alias, ssh_config=config) as conn:
            assert ssh.run(conn, ["id", "-un"], timeout=30)[1].strip() == target.user
            assert isinstance(conn.get_transport().sock, paramiko.ProxyCommand)


# --------------------------------------------------------------------------- remote Python


def test_find_python_prefers_python3_and_expands_home(sshd: SshServer):
    link = sshd.home / "miniforge3/bin/python"
    sshd.write_file("miniforge3/bin/.keep", "")
    link.symlink_to(sshd.python)
    with ssh.connect(sshd.alias, ssh_config=sshd.ssh_config) as conn:
        found = remote_python.find_pythons(conn)
        assert found[0].version >= (3, 10) and found[0].has_venv
        assert os.path.realpath(found[0].path) == os.path.realpath(sshd.python)
        usable, _ = remote_python.probe(conn, ["$HOME/miniforge3/bin/python"])
        assert [p.path for p in usable] == [str(link)]
        with pytest.raises(DeployError, match="configured Python /nonexistent/python .*not found"):
            remote_python.find_pythons(conn, "/nonexistent/python")


# --------------------------------------------------------------------------- client-side pieces


def test_cache_names_and_permissions(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    hosts = tmp_path / "seamless-service/hosts"
    hosts.mkdir(parents=True, mode=0o755)
    hosts.chmod(0o755)
    for alias in ("user@host.example", "../../etc/passwd", "..", "a/b"):
        path = cache.host_file(alias)
        assert path.parent == hosts and not path.name.startswith(".")
    assert cache.host_file("a@b") != cache.host_file("a_b")
    endpoint = AgentEndpoint(host="h1", remote_port=1234, secret="s" * 64, version="9", pid=5, remote_python="/p")
    cache.store(endpoint)
    assert stat.S_IMODE(hosts.stat().st_mode) == 0o700  # tightened
    assert stat.S_IMODE(cache.host_file("h1").stat().st_mode) == 0o600
    assert cache.load("h1").secret == "s" * 64
    assert "s" * 64 not in repr(cache.load("h1"))
    assert cache.remove("h1") and cache.load("h1") is None


def test_requirements_are_the_agent_ones():
    reqs = wheels.requirements(wheels.own_wheel())
    names = {r.split(";")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower() for r in reqs}
    assert {"rpyc", "msgpack", "pyyaml", "remote-http-launcher", "tabulate"} <= names
    assert not names & {"paramiko", "sshtunnel", "seamless-config"}


def test_platform_tags_follow_the_host_glibc():
    target = RemotePython(path="/x", version=(3, 12, 1), platform="linux-x86_64", libc=("glibc", "2.28"))
    tags = wheels.platform_tags(target)
    assert tags[0] == "manylinux_2_28_x86_64" and "manylinux2014_x86_64" in tags
    assert "manylinux_2_29_x86_64" not in tags
    assert not wheels.same_platform(target)


def test_repack_installed_distribution(tmp_path):
    own = wheels.own_wheel()
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--disable-pip-version-check",
                    "--target", str(target), str(own)], check=True, capture_output=True)
    (dist,) = [d for d in importlib.metadata.distributions(path=[str(target)])
               if d.metadata["Name"] == "seamless-service"]
    repacked = wheels.repack_distribution(dist, tmp_path / "out")
    with zipfile.ZipFile(own) as a, zipfile.ZipFile(repacked) as b:
        package = {n for n in a.namelist() if n.startswith("seamless_service/")}
        assert package and package == {n for n in b.namelist() if n.startswith("seamless_service/")}
        for name in package:
            assert a.read(name) == b.read(name)
    again = tmp_path / "site2"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--disable-pip-version-check",
                    "--target", str(again), str(repacked)], check=True, capture_output=True)
    assert (again / "seamless_service/__init__.py").read_bytes() == (target / "seamless_service/__init__.py").read_bytes()


# --------------------------------------------------------------------------- configured Python


def test_configured_python_recreates_the_venv(deployed: Deployed):
    """A per-host Python (e.g. a conda base) wins over the one the venv was made from."""
    server = deployed.server
    before = deployed.endpoint
    # A distinct interpreter file, as a conda/miniforge python would be.
    alt = server.write_file("altpy/bin/.keep", "").parent / "python3"
    shutil.copy2(os.path.realpath(server.python), alt)
    os.chown(alt, server.uid, -1)
    endpoint, events = deploy_recorded(server, python=str(alt))
    assert any("recreating" in message for _, message in events), events
    base = server.ssh([str(deployed.venv / "bin/python"), "-c",
                       "import os, sys; print(os.path.realpath(sys._base_executable))"])
    assert base.stdout.strip() == str(alt)
    assert endpoint.pid != before.pid and before.pid not in server.user_processes()
    assert agent_status_on_host(server, deployed.venv)["port"] == endpoint.remote_port
    again, events = deploy_recorded(server, python=str(alt))
    assert not steps(events) & INSTALL_STEPS, events
    assert again.pid == endpoint.pid
    deployed.endpoint = again


# --------------------------------------------------------------------------- stop


def test_stop_ends_the_agent_and_forgets_it(deployed: Deployed):
    server, alias = deployed.server, deployed.server.alias
    pid = deployed.endpoint.pid
    assert cache.load(alias) is not None
    assert bootstrap.stop(alias, ssh_config=server.ssh_config) is True
    assert pid not in server.user_processes()
    assert cache.load(alias) is None
    info = bootstrap.status(alias, ssh_config=server.ssh_config)
    assert info["installed"] == __version__ and info["running"] is False
    assert bootstrap.stop(alias, ssh_config=server.ssh_config) is False  # nothing left to stop
    endpoint, events = deploy_recorded(server)  # leave the shared host deployed
    assert not steps(events) & INSTALL_STEPS and endpoint.pid != pid
    deployed.endpoint = endpoint


def test_ssh_agent_keys_are_used_unless_identities_only(sshd: SshServer, tmp_path, monkeypatch):
    """The user's key lives only in a real ssh-agent: we log in with it, as OpenSSH would,
    and not when the config says IdentitiesOnly (then only the files listed count)."""
    other = tmp_path / "id_other"  # a key the server does not know
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        subprocess.run(["ssh-add", "-q", str(sshd.identity)], env=env, check=True, capture_output=True)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        via_agent = sshd.write_ssh_config(tmp_path / "cfg-agent", identity=other,
                                          extra={"IdentitiesOnly": "no"})
        with ssh.connect(sshd.alias, ssh_config=via_agent) as conn:
            assert ssh.run(conn, ["id", "-un"], timeout=30)[1].strip() == sshd.user
        only_files = sshd.write_ssh_config(tmp_path / "cfg-files", identity=other)  # IdentitiesOnly yes
        with pytest.raises(AuthFailed):
            ssh.connect(sshd.alias, ssh_config=only_files)
    finally:
        agent.terminate()
        agent.wait(timeout=10)
