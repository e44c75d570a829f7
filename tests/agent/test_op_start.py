"""The `start` op on real launches: the installed rhl-launch-service starts the toy service
(whitelisted through the sandbox's tools.yaml), real pids, ports, state files and logs."""

from __future__ import annotations

import json

import pytest

from seamless_service.agent.ops import handler
from seamless_service.protocol import ErrorCode, ProtocolError, validate_args
from tests.support.services import TOY_NAME

KEY = "hashserver-clu-rw-projS"


def start(ctx, **args) -> dict:
    return handler("start")(ctx, validate_args("start", args))


def toy_args(sandbox, key: str = KEY, **extra) -> dict:
    args = {"key": key, "workdir": str(sandbox.root / "work" / key), "network_interface": "127.0.0.1",
            "argv": [TOY_NAME, "--status-file", f"~/.remote-http-launcher/server/{key}.json"], "wait": 10.0}
    args.update(extra)
    return args


def test_start_launches_then_finds_it_running(sandbox, make_ctx):
    ctx = make_ctx("seamless")
    first = start(ctx, **toy_args(sandbox))
    assert (first["outcome"], first["launched"], first["status"]) == ("started", True, "running")
    state = json.loads((sandbox.server_dir / f"{KEY}.json").read_text())
    assert state["pid"] == first["pid"] and state["port"] == first["port"]
    assert f"--status-file {sandbox.server_dir}/{KEY}.json" in state["command"]
    second = start(ctx, **toy_args(sandbox))
    assert (second["outcome"], second["launched"]) == ("already running", False)
    assert (second["pid"], second["port"]) == (first["pid"], first["port"])
    assert json.loads((sandbox.server_dir / f"{KEY}.json").read_text()) == state


def test_relaunch_keeps_the_previous_log(sandbox, make_ctx):
    ctx = make_ctx("seamless")
    first = start(ctx, **toy_args(sandbox))
    log = sandbox.server_dir / f"{KEY}.log"
    log.write_text(log.read_text() + "a line of the first run\n")
    handler("stop")(ctx, validate_args("stop", {"keys": [KEY]}))
    again = start(ctx, **toy_args(sandbox))
    assert again["launched"] and again["pid"] != first["pid"]
    assert again["rotated_log"] == f"{log}.1"
    assert "a line of the first run" in (sandbox.server_dir / f"{KEY}.log.1").read_text()
    assert "a line of the first run" not in log.read_text()


def test_follow_up_call_never_launches(sandbox, make_ctx):
    value = start(make_ctx("seamless"), **toy_args(sandbox, launch=False, wait=0.0))
    assert value["outcome"] == "failed" and not value["launched"]
    assert not (sandbox.server_dir / f"{KEY}.json").exists()


@pytest.mark.parametrize("policy, change, code", [
    ("seamless", {"argv": [TOY_NAME, "--status-file", "/tmp/elsewhere.json"]}, ErrorCode.BAD_ARGS),
    ("seamless", {"argv": ["/bin/sh", "--status-file", f"~/.remote-http-launcher/server/{KEY}.json"]},
     ErrorCode.BAD_ARGS),
    ("seamless", {"workdir": "/etc"}, ErrorCode.POLICY_REFUSED),
    ("seamless", {"workdir": "~"}, ErrorCode.POLICY_REFUSED),
    ("seamless", {"workdir": "relative/dir"}, ErrorCode.POLICY_REFUSED),
    ("data-roots:{roots}", {}, ErrorCode.POLICY_REFUSED),
    ("seamless", {"parameters": "[1]"}, ErrorCode.BAD_ARGS),
    ("seamless", {"meta": "not json"}, ErrorCode.BAD_ARGS),
])
def test_refusals_launch_nothing(sandbox, make_ctx, policy, change, code):
    roots = sandbox.root / "roots"
    roots.write_text(f"{sandbox.root / 'elsewhere'}\n")
    ctx = make_ctx(policy.format(roots=roots))
    with pytest.raises(ProtocolError) as info:
        start(ctx, **toy_args(sandbox, **change))
    assert info.value.code == code, info.value.message
    assert not sandbox.server_dir.exists() or not list(sandbox.server_dir.iterdir())
