"""The same commands against a REAL remote host (tests/support/sshd.py through the `remote`
fixture of tests/client/conftest.py: deployed agent, toy services launched as the remote
user), compared with seamless-config's per-call-ssh commands on the same host.

seamless-config calls plain `ssh HOST`, which reads the real user's ~/.ssh/config (OpenSSH
ignores $HOME); a wrapper `ssh` first on the sandbox PATH adds `-F <fixture ssh_config>`,
so seamless-config reaches the fixture through a real config alias. Our commands get the same
file through --ssh-config. Shared remote state (RUNNING_KEYS, ODD_STATES) is only read;
tests that change state use keys of their own.
"""

from __future__ import annotations

import json
import os

import pytest

from seamless_service.client.transport.choice import forget_choice
from tests.support.remote_state import G11, G11_MARKED, ODD_STATES, RUNNING_KEYS
from tests.support.cli import SHARED, Home, assert_one_line_error, cli, make_home, remote_home, seamless_config_cli



def ours(home: Home, remote, *argv: str):
    return cli(home, *argv, "--ssh-config", str(remote.ssh_config))


def remote_status(remote, key: str) -> str | None:
    rows = remote.helper_rows("rhl-ps", "--json")
    return next((r["status"] for r in rows if r["key"] == key), None)


def test_remote_resolve_inspect_logs_like_seamless_config(rhome, remote):
    assert cli(rhome, "resolve", *SHARED).stdout == seamless_config_cli(rhome, "resolve", *SHARED).stdout
    for command, extra in (("inspect", []), ("logs", ["--tail", "2"]), ("logs", [])):
        mine, theirs = ours(rhome, remote, command, *SHARED, *extra), seamless_config_cli(rhome, command, *SHARED, *extra)
        assert mine.returncode == theirs.returncode == 0, (mine.stderr, theirs.stderr)
        assert mine.stdout == theirs.stdout != "", command
    assert json.loads(ours(rhome, remote, "inspect", *SHARED).stdout)["status"] == "running"


def test_remote_host_without_ssh_hostname_1(sandbox, monkeypatch, remote):
    home = remote_home(sandbox, monkeypatch, remote, ssh_hostname=False)
    mine = ours(home, remote, "inspect", *SHARED)
    assert mine.returncode == 0, mine.stderr
    assert json.loads(mine.stdout)["status"] == "running"
    theirs = seamless_config_cli(home, "inspect", *SHARED)  # #1: ran rhl-inspect on this machine
    assert theirs.returncode == 1 and "no state file" in theirs.stderr


def test_remote_stop_rm_like_seamless_config(rhome, remote, sandbox):
    mine_key, their_key = "hashserver-clu-rw-mine--STAGE-a", "hashserver-clu-rw-mine--STAGE-b"
    try:
        for key in (mine_key, their_key):
            remote.launch(key)
            sandbox.write_state(key, {"hostname": "127.0.0.1", "port": 1}, side="client")
            os.chmod(sandbox.client_dir / f"{key}.json", 0o600)
        sel = ["--service", "hashserver", "--cluster", "clu", "--project", "mine"]
        stopped = ours(rhome, remote, "stop", *sel, "--stage", "a")
        theirs = seamless_config_cli(rhome, "stop", *sel, "--stage", "b")
        assert (stopped.returncode, stopped.stdout) == (0, f"{mine_key}: stopped\n"), stopped.stderr
        assert (theirs.returncode, theirs.stdout) == (0, f"{their_key}: stopped\n"), theirs.stderr
        for key in (mine_key, their_key):
            assert remote_status(remote, key) == "stale"
            assert json.loads((sandbox.client_dir / f"{key}.json").read_text())["status"] == "stale"
        assert (sandbox.client_dir / f"{mine_key}.json").stat().st_mode & 0o777 == 0o600  # #19

        removed = ours(rhome, remote, "rm", "--server", *sel, "--stage", "a")
        theirs = seamless_config_cli(rhome, "rm", "--server", *sel, "--stage", "b")
        assert removed.returncode == theirs.returncode == 0, (removed.stderr, theirs.stderr)
        assert removed.stdout == f"removed {remote.state_dir}/{mine_key}.json\n"
        assert theirs.stdout == f"removed {remote.state_dir}/{their_key}.json\n"
        assert remote_status(remote, mine_key) is None and remote_status(remote, their_key) is None
        client = ours(rhome, remote, "rm", "--client", *sel, "--stage", "a")
        assert client.stdout == f"removed {sandbox.client_dir}/{mine_key}.json\n"  # on this machine
    finally:
        for key in (mine_key, their_key):
            remote.kill_service(key)


def test_remote_stop_cluster_honours_project_12(rhome, remote):
    keys = ["database-clu-rw-mine2", "hashserver-clu-rw-mine2"]
    try:
        for key in keys:
            remote.launch(key)
        result = ours(rhome, remote, "stop", "--cluster", "clu", "--project", "mine2")
        assert (result.returncode, result.stdout) == (0, "".join(f"{k}: stopped\n" for k in keys)), result.stderr
        assert [remote_status(remote, k) for k in keys] == ["stale", "stale"]
        # the shared services of project projA kept running
        assert remote_status(remote, "hashserver-clu-rw-projA") == "running"
        refused = ours(rhome, remote, "rm", "--cluster", "clu", "--project", "projA", "--server")
        assert refused.returncode == 1 and "refused: service is running" in refused.stderr  # #38
        assert remote_status(remote, "hashserver-clu-rw-projA") == "running"
    finally:
        for key in keys:
            remote.kill_service(key)


def test_remote_clear_keeps_marker(rhome, remote):
    for name in ("mineclear", "theirclear"):
        remote.write(f"data/buffers/{name}/.HASHSERVER_PREFIX", "")
        remote.write(f"data/buffers/{name}/ab/cdef0123", "buffer")
    sel = ["--service", "hashserver", "--cluster", "clu"]
    path = remote.home / "data/buffers/mineclear"
    unconfirmed = ours(rhome, remote, "clear", *sel, "--project", "mineclear")
    assert f"{remote.alias}:~/data/buffers/mineclear" in assert_one_line_error(unconfirmed, 2)
    cleared = ours(rhome, remote, "clear", *sel, "--project", "mineclear", "--yes")
    # ab and the buffer in it (rhl-clear would count ab alone)
    assert (cleared.returncode, cleared.stdout) == (0, f"removed 2 item(s) from {path}\n"), cleared.stderr
    assert sorted(os.listdir(path)) == [".HASHSERVER_PREFIX"]
    theirs = seamless_config_cli(rhome, "clear", *sel, "--project", "theirclear")
    assert theirs.returncode == 0, theirs.stderr
    assert theirs.stdout.startswith("removed 2 item(s) from ")  # seamless-config deletes the marker too
    assert os.listdir(remote.home / "data/buffers/theirclear") == []


# ---------------------------------------------------------------- ps, side by side

PS_FIELDS = ("key", "service", "cluster", "project", "stage", "process", "port", "persistent", "path", "size")
ZEROPID = "hashserver-clu-rw-zeropid"                      # ODD_STATES: pid 0
SUBSTAGE = "jobserver-clu-rw-projB--STAGE-s2SUBSTAGE-gpu"  # ODD_STATES: a substage key


def _ps_rows(result) -> dict[str, dict]:
    """Rows by key (data-directory rows by path). Only the shared fixture's services are
    kept: keys other tests launch and kill may be zombies for a while, which seamless-config
    counts as alive (a difference of its own, tested elsewhere)."""
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    known = set(RUNNING_KEYS) | set(ODD_STATES)
    return {r["key"] or r["path"]: {f: r.get(f) for f in PS_FIELDS} for r in rows
            if r["key"] is None or r["key"] in known}


@pytest.mark.parametrize("argv", [
    ["--cluster", "clu"],
    ["--cluster", "clu", "--server"],
    ["--cluster", "clu", "--persistent"],
    ["--cluster", "clu", "--status", "running"],
    ["--cluster", "clu", "--project", "projA"],
    ["--cluster", "clu", "--service", "hashserver"],
])
def test_remote_ps_json_like_seamless_config_except_the_documented_fixes(rhome, remote, argv):
    """seamless-service-ps (a fresh ssh per helper) and ours (one agent batch) on the same
    sshd, cluster config and state: the same rows and fields, but for #9 (buffer
    directories have a size), #15 (pid 0 is not alive) and #30 (SUBSTAGE is not the stage)."""
    theirs = _ps_rows(seamless_config_cli(rhome, "ps", *argv, "--json"))
    mine = _ps_rows(ours(rhome, remote, "ps", *argv, "--json"))
    assert theirs, "seamless-config listed nothing: the comparison would prove nothing"
    if "--status" in argv:  # #15: seamless-config counts pid 0 as a running process
        assert theirs.pop(ZEROPID)["process"] == "running" and ZEROPID not in mine
    assert set(mine) == set(theirs)
    for name, old in theirs.items():
        new = dict(mine[name])
        if name == ZEROPID:
            assert (old["process"], new.pop("process")) == ("running", "stale")      # #15
            old = {k: v for k, v in old.items() if k != "process"}
        if name == SUBSTAGE:
            assert (old["stage"], new.pop("stage")) == ("s2SUBSTAGE-gpu", "s2")      # #30
            old = {k: v for k, v in old.items() if k != "stage"}
        if old["service"] == "hashserver" and old["persistent"] in ("populated", "empty"):
            size = new.pop("size")                                                    # #9
            assert old["size"] is None and isinstance(size, int)
            assert (size > 0) == (old["persistent"] == "populated"), (name, size)
            old = {k: v for k, v in old.items() if k != "size"}
        assert new == old, name


def _kill_remote(remote, key: str) -> int:
    """The remote service dies without the launcher knowing (its file still says running)."""
    pid = json.loads((remote.state_dir / f"{key}.json").read_text())["pid"]
    remote.kill_service(key)
    from tests.support.services import wait_for

    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), timeout=30)
    return pid


def test_remote_stop_of_a_dead_service_like_seamless_config(rhome, remote, sandbox):
    """Through the agent: `already gone` and the remote file marked stale, per service and
    cluster-wide, as seamless-service-stop (rhl-stop over ssh) says and does."""
    mine, theirs_key = "hashserver-clu-rw-dead--STAGE-a", "hashserver-clu-rw-dead--STAGE-b"
    cluster_keys = ["database-clu-rw-dead2", "hashserver-clu-rw-dead2"]
    try:
        for key in (mine, theirs_key, *cluster_keys):
            remote.launch(key)
            _kill_remote(remote, key)
            assert remote_status(remote, key) == "stale"  # derived; the file says running
        sel = ["--service", "hashserver", "--cluster", "clu", "--project", "dead"]
        stopped = ours(rhome, remote, "stop", *sel, "--stage", "a")
        theirs = seamless_config_cli(rhome, "stop", *sel, "--stage", "b")
        assert (stopped.returncode, stopped.stdout, stopped.stderr) == (0, f"{mine}: already gone\n", "")
        assert (theirs.returncode, theirs.stdout) == (0, f"{theirs_key}: already gone\n")
        for key in (mine, theirs_key):
            assert json.loads((remote.state_dir / f"{key}.json").read_text())["status"] == "stale"

        result = ours(rhome, remote, "stop", "--cluster", "clu", "--project", "dead2")
        assert (result.returncode, result.stdout) == (0, "".join(f"{k}: already gone\n" for k in cluster_keys))
        for key in cluster_keys:
            assert json.loads((remote.state_dir / f"{key}.json").read_text())["status"] == "stale"
        # a second cluster stop reports them again (seamless-service-stop does), nothing else
        again = ours(rhome, remote, "stop", "--cluster", "clu", "--project", "dead2")
        assert again.stdout == result.stdout
    finally:
        for key in (mine, theirs_key, *cluster_keys):
            remote.kill_service(key)


# ---------------------------------------------------------------- #11 through rhl-guard


def test_ps_persistent_through_guarded_keys_like_the_agent_11(sandbox, monkeypatch, remote, g11):
    """`ps --cluster X --persistent` on a host whose key is forced through rhl-guard (the
    auto fallback to `ssh HOST rhl-*`): with `--clear-policy seamless` the roots hold no
    marker, and the marked data directories of the host's services are still listed (one
    notice per root: others cannot be found); with `--data-roots FILE` the whole roots are.
    The same data rows as the agent path on the same state, and exit 0."""
    home = make_home(sandbox, monkeypatch)
    with (home.home / ".seamless" / "clusters.yaml").open("a") as handle:
        for cluster, alias in (("g11a", remote.alias), ("g11s", remote.seamless_guard_alias),
                               ("g11d", remote.guard_alias)):
            handle.write(f"{cluster}:\n  type: local\n  frontends:\n    - hostname: {alias}\n"
                         f"      ssh_hostname: {alias}\n"
                         f"      hashserver: {{bufferdir: ~/{G11}/buffers}}\n"
                         f"      database: {{database_dir: ~/{G11}/db}}\n")

    def data_rows(cluster: str) -> tuple[list[dict], str]:
        result = ours(home, remote, "ps", "--cluster", cluster, "--persistent", "--json")
        assert result.returncode == 0, result.stderr
        rows = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
        return [{f: r.get(f) for f in PS_FIELDS if f not in ("size", "cluster")} for r in rows
                if r["key"] is None], result.stderr

    try:
        by_agent, _ = data_rows("g11a")
        marker_guard, marker_err = data_rows("g11s")
        data_roots_guard, err = data_rows("g11d")
    finally:
        # the CLI remembered the fallback in the shared client cache: other tests want it fresh
        for alias in (remote.guard_alias, remote.seamless_guard_alias):
            forget_choice(alias)
    orphan = str(g11 / "buffers/orphan")
    assert {r["path"] for r in by_agent} == {str(g11 / f) for f in G11_MARKED}
    assert marker_guard == [r for r in by_agent if r["path"] != orphan]
    notes = [line for line in marker_err.splitlines() if "rhl-guard forbids listing" in line]
    assert sorted(n.split("forbids listing ")[1].split(" (")[0] for n in notes) == [f"~/{G11}/buffers", f"~/{G11}/db"]
    assert "Traceback" not in marker_err
    assert "seamless-service: seamless-service:" not in marker_err  # the CLI printed the notices' prefix twice
    assert data_roots_guard == by_agent and "forbids listing" not in err


def test_ps_with_strict_host_key_checking_no_and_dev_null(sandbox, monkeypatch, remote, tmp_path):
    """A config entry with `StrictHostKeyChecking no` + `UserKnownHostsFile /dev/null`
    (cluster frontends, containers, CI): `ssh` connects, and so does `ps`, saying once that
    the key was accepted unchecked."""
    alias = remote.alias + "-nocheck"
    config = tmp_path / "ssh_config"
    config.write_text(remote.ssh_config.read_text() + "\n" + remote.server.config_block(
        alias=alias, extra={"UserKnownHostsFile": "/dev/null", "StrictHostKeyChecking": "no"}))
    home = make_home(sandbox, monkeypatch)
    with (home.home / ".seamless" / "clusters.yaml").open("a") as handle:
        handle.write(f"clu:\n  type: local\n  frontends:\n    - hostname: {alias}\n      ssh_hostname: {alias}\n")
    result = cli(home, "ps", "--cluster", "clu", "--server", "--json", "--ssh-config", str(config))
    assert result.returncode == 0, result.stderr
    assert {json.loads(line)["key"] for line in result.stdout.splitlines()} >= set(RUNNING_KEYS)
    unchecked = [line for line in result.stderr.splitlines() if "accepted unchecked" in line]
    assert len(unchecked) == 1 and unchecked[0].startswith(f"seamless-service: {alias}: host key "), result.stderr
