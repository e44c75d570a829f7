"""client/transport/ssh.py (real `ssh` + the host's rhl-* helpers) and the auto fallback:
same values as the agent on the same remote state, rhl-guard, quoting, mutations."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from seamless_service.client.transport.agent import AgentTransport
from seamless_service.client.errors import AuthFailed, ConnectionFailed
from seamless_service.client.transport.ssh import HelperResult, SshTransport, _Checked, _policy_argv, _policy_verdict
from seamless_service.protocol import ErrorCode, ProtocolError
from seamless_service.client.transport.auto import AutoTransport
from seamless_service.client.transport.choice import remembered_choice
from seamless_service.client.transport.open import open_transport
from tests.support.remote import Remote
from tests.support.remote_state import BUFFER_DIRS, G11, RUNNING_KEYS
from tests.support.transports import Notices
from tests.support.services import wait_for

SIZE_FIELDS = ("bytes", "bytes_measured", "bytes_state", "bytes_error")


@pytest.fixture
def agent(remote: Remote):
    with AgentTransport(remote.alias, ssh_config=remote.ssh_config, notice=Notices()) as t:
        yield t


@pytest.fixture
def ssh(remote: Remote):
    return SshTransport(remote.alias, ssh_config=remote.ssh_config, notice=Notices())


def values(transport, ops) -> list:
    results = transport.batch(ops)
    for (name, _), result in zip(ops, results):
        assert result["ok"], f"{name}: {result}"
    return [r["value"] for r in results]


def persistent_ops(remote: Remote) -> list:
    return [
        ("persistent", {"paths": [str(remote.data / "buffers"), str(remote.data / "with space"),
                                  str(remote.data / "we;ird $(touch PWNED) 'q'")],
                        "level": 2, "marker": ".HASHSERVER_PREFIX"}),
        ("persistent", {"paths": [str(remote.data / "db")], "level": 2, "file": "seamless.db",
                        "marker": "seamless.db"}),
    ]


def mine(remote: Remote, rows: list[dict]) -> list[str]:
    """The paths of the rows of this module's data directories (other test modules share
    the remote host and may add their own)."""
    wanted = {str(remote.home / d) for d in BUFFER_DIRS}
    return [r["path"] for r in rows if r["path"] in wanted]


def _without_sizes(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in SIZE_FIELDS} for row in rows]


def test_same_values_as_the_agent(remote: Remote, agent: AgentTransport, ssh: SshTransport):
    ops = [("ps", {}), ("ps", {"side": "client"}), ("ps", {"service": "hashserver", "status": "running"}),
           *persistent_ops(remote),
           ("inspect", {"key": RUNNING_KEYS[0]}), ("logs", {"key": "big"}), ("logs", {"key": "big", "tail": 5}),
           ("logs", {"key": "big", "offset": 1000, "max_bytes": 5000})]
    by_agent = values(agent, ops)
    by_ssh = values(ssh, ops)
    assert ssh.ssh_sessions == 1  # every helper of the batch in ONE ssh session
    ps_a, client_a, filtered_a, pers_a, db_a, inspect_a, logs_a, tail_a, offset_a = by_agent
    ps_s, client_s, filtered_s, pers_s, db_s, inspect_s, logs_s, tail_s, offset_s = by_ssh
    # ps: field by field, including the agent's corrected status of the pid-0 row
    assert ps_s["rows"] == ps_a["rows"] and ps_s["token"] is None
    assert {r["key"]: r["status"] for r in ps_s["rows"]}["hashserver-clu-rw-zeropid"] == "stale"
    assert client_s["rows"] == client_a["rows"]
    assert {r["key"]: r["process"] for r in client_s["rows"]}[RUNNING_KEYS[0]] == "running"
    assert [r["key"] for r in filtered_s["rows"]] == [RUNNING_KEYS[0]] == [r["key"] for r in filtered_a["rows"]]
    # persistent: same rows; sizes only from the agent
    assert _without_sizes(pers_s["rows"]) == _without_sizes(pers_a["rows"])
    assert mine(remote, pers_s["rows"]) == mine(remote, pers_a["rows"]) == [str(remote.home / d) for d in BUFFER_DIRS]
    assert all(r["bytes"] is None and r["bytes_state"] == "unavailable" for r in pers_s["rows"])
    assert _without_sizes(db_s["rows"]) == _without_sizes(db_a["rows"]) and db_s["rows"][0]["size"] == 4096
    # inspect and logs
    assert inspect_s == inspect_a
    assert logs_s == logs_a and len(logs_s["data"]) == 200 * 1024
    assert offset_s == offset_a and offset_s["truncated"] is True
    assert tail_s["data"] == tail_a["data"] and tail_s["data"].count(b"\n") == 5
    assert tail_s["size"] is None  # documented: a tail over ssh does not know the size


def test_path_with_space_and_metacharacters_is_quoted(remote: Remote, ssh: SshTransport):
    weird = remote.data / "we;ird $(touch PWNED) 'q'"
    (value,) = values(ssh, [("persistent", {"paths": [str(weird), str(remote.data / "with space")],
                                            "level": 1, "marker": ".HASHSERVER_PREFIX"})])
    assert [r["path"] for r in value["rows"]] == [str(weird / "projD"), str(remote.data / "with space/projC")]
    assert all(r["state"] == "populated" for r in value["rows"])
    assert not list(remote.home.rglob("PWNED")), "a shell expanded the path"


def test_guarded_key_falls_back_to_ssh_with_a_notice(remote: Remote, agent: AgentTransport):
    notices = Notices()
    transport = open_transport(remote.guard_alias, ssh_config=remote.ssh_config, notice=notices)
    assert isinstance(transport, AutoTransport)
    (ps,) = values(transport, [("ps", {})])
    assert transport.kind == "ssh" and "rhl-guard" in transport.fallback_reason
    assert len(notices) == 1 and "rhl-guard" in notices[0]
    assert notices[0].startswith(f"seamless-service: {remote.guard_alias}: using per-call ssh (agent unavailable: ")
    (expected,) = values(agent, [("ps", {})])
    assert ps["rows"] == expected["rows"]  # same user, same state, other door
    # remembered (a lasting reason): the next transport goes straight to ssh, knowing the
    # guard, and says so once
    assert remembered_choice(remote.guard_alias)["guarded"] is True
    said = Notices()
    again = open_transport(remote.guard_alias, ssh_config=remote.ssh_config, notice=said)
    assert isinstance(again, AutoTransport) and again.kind == "ssh"
    assert isinstance(again.active, SshTransport) and again.active.guarded is True
    values(again, [("ps", {})])
    values(again, [("hello", {})])
    fallback = [n for n in said if "using per-call ssh" in n]
    assert len(fallback) == 1 and "rhl-guard" in fallback[0] and "remembered until" in fallback[0], said


def test_guard_allows_one_helper_per_session(remote: Remote):
    notices = Notices()
    ssh = SshTransport(remote.guard_alias, ssh_config=remote.ssh_config, notice=notices)
    ps, pers, inspect = values(ssh, [("ps", {}), persistent_ops(remote)[0], ("inspect", {"key": RUNNING_KEYS[0]})])
    assert ssh.guarded is True and any("rhl-guard" in n for n in notices)
    assert ssh.ssh_sessions == 4  # the refused script, then one session per helper
    assert {r["key"] for r in ps["rows"]} >= set(RUNNING_KEYS)
    assert mine(remote, pers["rows"]) == [str(remote.home / d) for d in BUFFER_DIRS]
    assert inspect["key"] == RUNNING_KEYS[0]
    # the guard's own policy still applies: outside --data-roots is refused
    (result,) = ssh.batch([("persistent", {"paths": [str(remote.home / "elsewhere")]})])
    assert not result["ok"] and result["error"]["code"] == "policy_refused"
    assert "data-roots" in result["error"]["message"]


def test_stop_rm_and_clear_through_ssh(remote: Remote, ssh: SshTransport):
    key = "hashserver-clu-rw-sshstop"
    workdir = remote.data / "work" / key
    remote.launch(key)
    remote.write(str((workdir / ".HASHSERVER_PREFIX").relative_to(remote.home)), "")  # as a hashserver's
    try:
        rm_live, clear_live = ssh.batch([("rm", {"keys": [key]}), ("clear", {"path": str(workdir)})])
        assert rm_live["value"]["results"][0]["outcome"].startswith("refused: service is running")
        assert clear_live["error"]["code"] == "conflict" and key in clear_live["error"]["message"]
        (stop,) = values(ssh, [("stop", {"keys": [key, "no-such-key"]})])
        first, missing = stop["results"]
        assert first["outcome"] == "stopped" and first["stopped"] and first["signalled"]
        assert missing["outcome"] == "missing state" and not missing["stopped"]
        # a mutation ends a segment: the ps after the stop sees its effect
        stop_again, ps = values(ssh, [("stop", {"keys": [key]}), ("ps", {})])
        assert stop_again["results"][0]["outcome"] == "already gone"  # as rhl-stop says it
        assert {r["key"]: r["status"] for r in ps["rows"]}[key] == "stale"
        remote.write(str((workdir / "nested" / "f").relative_to(remote.home)), "x")
        remote.write(str((workdir / "nested" / ".keep" / "g").relative_to(remote.home)), "y")
        sessions = ssh.ssh_sessions
        cleared, removed = values(ssh, [("clear", {"path": str(workdir)}), ("rm", {"keys": [key], "server": True})])
        assert cleared["ok"] and cleared["path"] == str(workdir)
        # clear's path-policy check costs no session of its own: it runs beside rhl-ps
        # (then rhl-clear; rm: rhl-ps, rhl-rm)
        assert ssh.ssh_sessions - sessions == 4
        # rhl-clear keeps nested/ (it holds a dot directory) and so counts it as nothing
        # removed, although nested/f is gone: the count is said to be the helper's (1: the
        # marker, which rhl-clear removes, #21)
        assert not (workdir / "nested" / "f").exists() and cleared["removed"] == 1
        assert cleared["removed_counts"] == "top-level"
        assert "count is rhl-clear's own" in cleared["stderr"]
        assert removed["results"][0]["outcome"] == "removed"
        assert not (remote.state_dir / f"{key}.json").exists()
    finally:
        remote.kill_service(key)


def test_behind_rhl_guard_the_guard_decides_what_clear_may_empty(remote: Remote):
    """The guard's --data-roots policy lets a folder without a marker inside the data root
    be cleared: the client-side check of the default policy is for plain ssh only. Its
    command is refused by the guard once (which tells the transport it is guarded), then
    no longer sent."""
    ssh = SshTransport(remote.guard_alias, ssh_config=remote.ssh_config, notice=Notices())
    folders = [remote.data / f"guardclear-{n}" for n in range(2)]
    try:
        for folder in folders:
            remote.write(str((folder / "a" / "x").relative_to(remote.home)), "data")
        (first,) = values(ssh, [("clear", {"path": str(folders[0])})])
        assert ssh.guarded is True
        # the refused script (rhl-ps + check), rhl-ps, the check refused, rhl-clear
        assert ssh.ssh_sessions == 4
        (second,) = values(ssh, [("clear", {"path": str(folders[1])})])
        assert ssh.ssh_sessions == 6  # rhl-ps, rhl-clear
        for cleared, folder in zip((first, second), folders):
            assert cleared["ok"] and cleared["path"] == str(folder) and os.listdir(folder) == []
    finally:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)


def test_clear_is_refused_when_the_host_cannot_tell_what_the_path_is():
    """The policy check's own failure is a refusal (nothing cleared), said in one line; the
    guard's refusal of it means the guard decides."""
    argv = _policy_argv("~/data/p")
    broken = HelperResult(argv, 127, b"", b"sh: 1: realpath: not found\n")
    with pytest.raises(ProtocolError) as info:
        _policy_verdict(broken, "~/data/p", "h")
    assert (info.value.code, info.value.message) == (
        ErrorCode.POLICY_REFUSED,
        "clear: cannot check the path policy on h (sh: 1: realpath: not found); nothing was cleared")
    guarded = HelperResult(argv, 1, b"", b"rhl-guard: rejected: command not allowed\n")
    assert _policy_verdict(guarded, "~/data/p", "h") is None
    marked = HelperResult(argv, 0, b"/home/u\0/srv/u\0/srv/u/data/p\0" + b"1\0", b"")
    assert _policy_verdict(marked, "~/data/p", "h") == _Checked("/home/u", "/srv/u/data/p")


def test_agent_only_ops_and_bad_args_are_op_errors(ssh: SshTransport):
    health, wait, bad, missing = ssh.batch([("health", {}), ("wait", {"timeout": 1}),
                                            ("inspect", {"key": "../etc"}), ("inspect", {"key": "nope"})])
    assert health["error"]["code"] == wait["error"]["code"] == "op_failed"
    assert "needs the agent" in health["error"]["message"]
    assert bad["error"]["code"] == "invalid_key"
    assert missing["error"]["code"] == "not_found" and "nope" in missing["error"]["message"]


def test_hello_says_ssh(remote: Remote, ssh: SshTransport):
    (hello,) = values(ssh, [("hello", {})])
    assert hello["transport"] == "ssh" and "ps" in hello["ops"] and "health" not in hello["ops"]


def test_ssh_failures_map_to_client_errors(sshd, tmp_path):
    config = sshd.write_ssh_config(tmp_path / "cfg", known_hosts=tmp_path / "nothing")
    with pytest.raises(AuthFailed) as info:
        SshTransport(sshd.alias, ssh_config=config).batch([("ps", {})])
    assert str(info.value).startswith(f"{sshd.alias}: ssh: ")
    sshd.stop()
    with pytest.raises(ConnectionFailed) as info:
        SshTransport(sshd.alias, ssh_config=sshd.ssh_config).batch([("ps", {})])
    assert not isinstance(info.value, AuthFailed) and "refused" in str(info.value)


def test_stop_of_a_dead_service_through_ssh(remote: Remote, ssh: SshTransport):
    """A service that died behind the launcher's back: rhl-stop's `already gone`, and its
    file marked stale (by rhl-stop: the ssh transport cannot write files); a `failed` row,
    whose pid rhl-ps does not probe, is not passed (#17)."""
    key, failed = "hashserver-clu-rw-sshdead", "hashserver-clu-rw-sshfailed"
    try:
        state = remote.launch(key)
        remote.kill_service(key)
        wait_for(lambda: not os.path.exists(f"/proc/{state['pid']}"), timeout=30)
        remote.write(f".remote-http-launcher/server/{failed}.json", json.dumps({"status": "failed", "pid": 1}))
        (stop,) = values(ssh, [("stop", {"keys": [key, failed]})])
        dead, not_run = stop["results"]
        assert (dead["outcome"], dead["stopped"], dead["signalled"]) == ("already gone", True, False)
        assert json.loads((remote.state_dir / f"{key}.json").read_text())["status"] == "stale"
        assert (not_run["outcome"], not_run["stopped"]) == ("not running", True)
        assert json.loads((remote.state_dir / f"{failed}.json").read_text())["status"] == "failed"
    finally:
        remote.kill_service(key)


# --------------------------------------------------------------------------- #11 behind the seamless marker policy

def g11_ops(root, *, tilde: bool = False) -> list:
    base = "~/" + G11 if tilde else str(root)
    return [("persistent", {"paths": [f"{base}/buffers"], "level": 2, "marker": ".HASHSERVER_PREFIX"}),
            ("persistent", {"paths": [f"{base}/db"], "level": 2, "file": "seamless.db", "marker": "seamless.db"})]


@pytest.mark.parametrize("tilde", [False, True])
def test_seamless_marker_guard_lists_the_marked_directories_of_a_marker_less_root(
        remote: Remote, agent: AgentTransport, g11, tilde: bool):
    """#11 on the ssh fallback: `rhl-guard --clear-policy seamless` refuses rhl-ps-persistent
    on a root without a marker. The fallback asks for the marked directories its services
    work in instead (the guard accepts those), and gives the agent's rows for them; a
    marked directory no state file names cannot be found without listing the root, which
    the guard forbids: one notice line per root says so."""
    notices = Notices()
    ssh = SshTransport(remote.seamless_guard_alias, ssh_config=remote.ssh_config, guarded=True, notice=notices)
    buffers, db = values(ssh, g11_ops(g11, tilde=tilde))
    agent_buffers, agent_db = values(agent, g11_ops(g11, tilde=tilde))
    orphan = str(g11 / "buffers/orphan")
    assert [r["path"] for r in agent_buffers["rows"]] == [str(g11 / f) for f in (
        "buffers/orphan", "buffers/projG", "buffers/projG/STAGE-s3", "buffers/projH/STAGE-s1")]
    expected = [r for r in agent_buffers["rows"] if r["path"] != orphan]
    assert _without_sizes(buffers["rows"]) == _without_sizes(expected)
    assert _without_sizes(db["rows"]) == _without_sizes(agent_db["rows"]) and db["rows"][0]["size"] == 4096
    # one line per root the guard would not list, once per transport (not at every poll)
    values(ssh, [("ps", {}), *g11_ops(g11, tilde=tilde)])
    assert len(notices) == 2, notices
    prefix = f"seamless-service: {remote.seamless_guard_alias}: rhl-guard forbids listing "
    base = "~/" + G11 if tilde else str(g11)  # the root as the client named it
    assert all(n.startswith(prefix) for n in notices), notices
    assert sorted(n[len(prefix):].split(" (")[0] for n in notices) == [f"{base}/buffers", f"{base}/db"]
    assert all("(it holds no marker file: seamless.db, .HASHSERVER_PREFIX)" in n for n in notices)
    # the ps op's `rhl-ps --json` also gave the persistent ops their workdirs: no second call
    sessions = ssh.ssh_sessions
    ps, again, _ = values(ssh, [("ps", {}), *g11_ops(g11, tilde=tilde)])
    assert _without_sizes(again["rows"]) == _without_sizes(buffers["rows"])
    # rhl-ps; buffers: the root, projG + projH (projH refused), projG, projH/STAGE-s1; db: the root, projG
    assert ssh.ssh_sessions - sessions == 1 + 4 + 2


def test_marker_guard_still_refuses_what_it_refuses(remote: Remote, g11):
    """The guard's heuristics are not worked around: $HOME stays refused, as by the agent."""
    ssh = SshTransport(remote.seamless_guard_alias, ssh_config=remote.ssh_config, guarded=True, notice=Notices())
    (result,) = ssh.batch([("persistent", {"paths": [str(remote.home)], "level": 2, "marker": "seamless.db"})])
    assert not result["ok"] and result["error"]["code"] == "policy_refused"
    assert "$HOME" in result["error"]["message"]
