"""`hello` keeps what cannot change during the agent's life (the user name of its uid, a
policy's description, the op lists) and reads the rest on every call: these tests change
each live input between two calls and check the answer follows it, in-process and from a
real agent process over rpyc."""

from __future__ import annotations

import getpass
import os
import platform
import pwd
import socket
import time

import pytest

from seamless_service import __version__
from seamless_service.agent import dispatch, lifecycle
from seamless_service.agent.context import AgentContext
from seamless_service.agent.ops import hello
from seamless_service.agent.policy import default_policy, parse_policy
from seamless_service.client.transport.agent_conn import AgentConnection
from seamless_service.protocol import PROTOCOL_VERSION, decode_reply, encode_request
from seamless_service.protocol.conditional import CONDITIONAL_OPS
from seamless_service.protocol.schema import OPS

from tests.support.agent import end_agent, spawn_agent

USER_VARIABLES = ("LOGNAME", "USER", "LNAME", "USERNAME")


def no_user_variables(monkeypatch) -> None:
    for name in USER_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def ask(ctx: AgentContext) -> dict:
    [result] = decode_reply(dispatch.handle(ctx, encode_request([("hello", {})])), 1)
    assert result["ok"], result
    return result["value"]


@pytest.fixture
def ctx(tmp_path):
    context = AgentContext(base=tmp_path / "rhl")
    yield context
    context.close()


def test_hello_answers_what_it_always_answered(ctx):
    value = ask(ctx)
    assert value["version"] == __version__ and value["protocol"] == PROTOCOL_VERSION
    assert value["ops"] == sorted(OPS) and value["conditional"] == sorted(CONDITIONAL_OPS)
    assert value["python"] == platform.python_version()
    assert value["hostname"] == socket.gethostname() and value["pid"] == os.getpid()
    assert value["user"] == getpass.getuser()
    assert value["base"] == str(ctx.base)
    assert value["path_policy"] == default_policy().describe()
    assert value["file_watch"] in ("inotify", "stat")


def test_user_follows_the_environment_getpass_reads_first(ctx, monkeypatch):
    # The keeper runs the local transport with each caller's environment in os.environ,
    # so the variables must be read on every call, in getpass's order.
    no_user_variables(monkeypatch)
    own = pwd.getpwuid(os.getuid()).pw_name
    assert ask(ctx)["user"] == own == getpass.getuser()
    monkeypatch.setenv("USERNAME", "fourth")
    assert ask(ctx)["user"] == "fourth" == getpass.getuser()
    monkeypatch.setenv("USER", "second")
    assert ask(ctx)["user"] == "second" == getpass.getuser()
    monkeypatch.setenv("LOGNAME", "first")
    assert ask(ctx)["user"] == "first" == getpass.getuser()
    monkeypatch.setenv("LOGNAME", "")  # empty counts as unset, as for getpass
    assert ask(ctx)["user"] == "second" == getpass.getuser()
    no_user_variables(monkeypatch)
    assert ask(ctx)["user"] == own


def test_user_without_a_passwd_entry_is_the_uid_and_is_not_kept(ctx, monkeypatch):
    no_user_variables(monkeypatch)
    monkeypatch.setattr(hello, "_passwd_names", {})
    monkeypatch.setattr(pwd, "getpwuid", lambda uid: (_ for _ in ()).throw(KeyError(uid)))
    assert ask(ctx)["user"] == str(os.getuid())
    monkeypatch.undo()
    no_user_variables(monkeypatch)
    monkeypatch.setattr(hello, "_passwd_names", {})
    assert ask(ctx)["user"] == pwd.getpwuid(os.getuid()).pw_name  # the entry appeared: found


def test_path_policy_follows_the_policy_the_context_holds(ctx, tmp_path):
    assert ask(ctx)["path_policy"] == default_policy().describe()
    ctx.policy = parse_policy("permissive")
    assert ask(ctx)["path_policy"] == {"mode": "permissive", "markers": [], "roots": []}
    ctx.policy = parse_policy("marker:MINE")
    assert ask(ctx)["path_policy"] == {"mode": "marker", "markers": ["MINE"], "roots": []}
    roots = tmp_path / "roots.txt"
    (tmp_path / "data").mkdir()
    roots.write_text(f"{tmp_path / 'data'}\n")
    ctx.policy = parse_policy(f"data-roots:{roots}")
    assert ask(ctx)["path_policy"] == ctx.policy.describe()
    assert ask(ctx)["path_policy"]["roots"] == [(tmp_path / "data").resolve().as_posix()]
    # two contexts with different policies in one process, asked in turn
    other = AgentContext(base=tmp_path / "other", policy=parse_policy("marker:OTHER"))
    try:
        for _ in range(2):
            assert ask(other)["path_policy"]["markers"] == ["OTHER"]
            assert ask(ctx)["path_policy"] == ctx.policy.describe()
    finally:
        other.close()
    ctx.policy = None
    assert ask(ctx)["path_policy"] == default_policy().describe()


def test_a_caller_changing_its_answer_does_not_change_the_next(ctx):
    # run_op hands the value itself to in-process callers: nothing shared may leak out.
    first = dispatch.run_op(ctx, {"op": "hello", "args": {}})["value"]
    expected = dispatch.run_op(ctx, {"op": "hello", "args": {}})["value"]
    first["path_policy"]["markers"].append("planted")
    first["path_policy"]["mode"] = "permissive"
    first["ops"].append("planted")
    first["conditional"].clear()
    again = dispatch.run_op(ctx, {"op": "hello", "args": {}})["value"]
    for field in ("path_policy", "ops", "conditional"):
        assert again[field] == expected[field]


def test_uptime_base_and_file_watch_are_live(ctx, tmp_path, monkeypatch):
    first = ask(ctx)
    ctx.started -= 100
    assert ask(ctx)["uptime"] >= first["uptime"] + 100
    ctx.base = tmp_path / "moved"
    assert ask(ctx)["base"] == str(tmp_path / "moved")
    watch = hello.watcher(ctx)
    # what the watch turns to when it loses track of a folder: asked on every call
    monkeypatch.setattr(type(watch), "mode", property(lambda self: "stat"))
    assert ask(ctx)["file_watch"] == "stat"
    monkeypatch.setattr(type(watch), "mode", property(lambda self: "inotify"))
    assert ask(ctx)["file_watch"] == "inotify"


def test_a_real_agent_reports_its_user_and_policy(tmp_path, monkeypatch):
    # The agent process reads its environment and its passwd name as getpass would.
    no_user_variables(monkeypatch)
    base = tmp_path / "rhl"
    proc, info = spawn_agent(base, "--path-policy", "marker:FLAG")
    try:
        with AgentConnection.connect("127.0.0.1", info["port"], lifecycle.read_secret(base)) as conn:
            first = conn.batch([("hello", {})])[0]["value"]
            time.sleep(0.05)
            second = conn.batch([("hello", {})])[0]["value"]
    finally:
        assert end_agent(proc) == 0
    assert first["user"] == second["user"] == pwd.getpwuid(os.getuid()).pw_name
    assert first["pid"] == proc.pid and first["base"] == str(base)
    assert first["path_policy"] == second["path_policy"] == {"mode": "marker", "markers": ["FLAG"], "roots": []}
    assert second["uptime"] > first["uptime"]
    monkeypatch.setenv("USER", "someone-else")
    proc, info = spawn_agent(base)
    try:
        with AgentConnection.connect("127.0.0.1", info["port"], lifecycle.read_secret(base)) as conn:
            value = conn.batch([("hello", {})])[0]["value"]
    finally:
        assert end_agent(proc) == 0
    assert value["user"] == "someone-else" and value["path_policy"] == default_policy().describe()


def test_the_agent_process_context_keeps_the_user_it_found(tmp_path, monkeypatch):
    # The agent process's context (fixed_environment): nothing changes its environment,
    # so the name found first is kept; any other context follows the environment.
    monkeypatch.setenv("LOGNAME", "at-start")
    fixed = AgentContext(base=tmp_path / "a", fixed_environment=True)
    live = AgentContext(base=tmp_path / "b")
    try:
        assert ask(fixed)["user"] == ask(live)["user"] == "at-start"
        monkeypatch.setenv("LOGNAME", "changed")
        assert ask(fixed)["user"] == "at-start"
        assert ask(live)["user"] == "changed"
        # a uid fallback (no passwd entry yet) is not kept even there
        no_user_variables(monkeypatch)
        other = AgentContext(base=tmp_path / "c", fixed_environment=True)
        monkeypatch.setattr(hello, "_passwd_names", {})
        monkeypatch.setattr(pwd, "getpwuid", lambda uid: (_ for _ in ()).throw(KeyError(uid)))
        assert ask(other)["user"] == str(os.getuid())
        monkeypatch.undo()
        no_user_variables(monkeypatch)
        assert ask(other)["user"] == pwd.getpwuid(os.getuid()).pw_name
        other.close()
    finally:
        fixed.close()
        live.close()


def test_the_agent_process_context_is_the_fixed_kind(tmp_path, monkeypatch):
    from seamless_service.agent import server

    made = []
    monkeypatch.setattr(server.signal, "signal", lambda *args: None)  # leave pytest's handlers be
    monkeypatch.setattr(server, "AgentContext", lambda **kw: made.append(kw) or AgentContext(**kw))
    monkeypatch.setattr(server.Agent, "_make_server", lambda self, ctx, secret: (_ for _ in ()).throw(
        server.ServeError("stop here")))
    with pytest.raises(server.ServeError):
        server.Agent(tmp_path / "rhl", idle_timeout=1, policy_spec="seamless").run()
    assert made and made[0]["fixed_environment"] is True
