"""`rm` on real launcher state: removal through rhl-rm, refusal to orphan running services."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from seamless_service.agent import procinfo
from seamless_service.agent.context import AgentContext
from seamless_service.agent.dispatch import handle
from seamless_service.protocol import decode_reply, encode_request
from tests.support.processes import alive


def call(op: str, **args):
    reply = decode_reply(handle(AgentContext(), encode_request([(op, args)])), expected=1)
    assert reply[0]["ok"], reply[0]
    return reply[0]["value"]


def files(sandbox, key):
    return sandbox.client_dir / f"{key}.json", sandbox.server_dir / f"{key}.json"


@pytest.fixture
def stale(sandbox):
    """Both state files of a stopped service (hand-written: cheaper than launch + rhl-stop)."""
    done = subprocess.Popen(["true"])
    done.wait()  # a pid that is dead by now
    sandbox.write_state("toy-stale", {"workdir": "/tmp/w", "command": "seamless-toy-service", "uid": os.getuid(),
                                      "pid": done.pid, "status": "stale", "port": 1})
    sandbox.write_state("toy-stale", {"hostname": "127.0.0.1", "port": 1}, side="client")


@pytest.fixture
def running(sandbox):
    """A real running service, killed at teardown even if its state file was removed."""
    state = sandbox.launch("toy-run")
    yield state
    info = procinfo.read_proc(state["pid"])
    if info is not None and any("seamless-toy-service" in a for a in info.argv):
        os.killpg(state["pid"], signal.SIGKILL)


def test_rm_really_stopped_service(sandbox):
    state = sandbox.launch("toy-real")
    assert sandbox.run_helper("rhl-stop", "toy-real").stdout.strip() == "toy-real: stopped"
    value = call("rm", keys=["toy-real"])
    client, server = files(sandbox, "toy-real")
    assert value["results"] == [{"key": "toy-real", "outcome": "removed", "removed": [str(client), str(server)]}]
    assert not client.exists() and not server.exists()
    assert os.path.exists(state["log"])  # logs are never removed


def test_rm_stale_service_and_not_found(sandbox, stale):
    client, server = files(sandbox, "toy-stale")
    assert client.exists() and server.exists()
    value = call("rm", keys=["toy-stale", "toy-nothing"])
    assert value["exit_status"] == 0
    removed, missing = value["results"]
    assert removed == {"key": "toy-stale", "outcome": "removed", "removed": [str(client), str(server)]}
    assert missing == {"key": "toy-nothing", "outcome": "not found", "removed": []}
    assert not client.exists() and not server.exists()


def test_rm_refuses_running_service_unless_forced(sandbox, stale, running):
    toy = running
    client, server = files(sandbox, "toy-run")
    value = call("rm", keys=["toy-run", "toy-stale"])
    refused, removed = value["results"]
    assert refused["outcome"] == "refused: service is running (stop it first, or force)"
    assert refused["removed"] == [] and refused["pid"] == toy["pid"]
    assert removed["outcome"] == "removed"
    assert client.exists() and server.exists() and alive(toy["pid"])

    # Alone, nothing runs rhl-rm at all.
    value = call("rm", keys=["toy-run"])
    assert value["exit_status"] is None and value["results"][0]["outcome"].startswith("refused")

    value = call("rm", keys=["toy-run"], force=True)
    (result,) = value["results"]
    assert result["outcome"] == "removed" and result["removed"] == [str(client), str(server)]
    assert f"process {toy['pid']} is still running" in result["warning"]
    assert not client.exists() and not server.exists()


def test_rm_one_side_only(sandbox, stale, running):
    toy = running
    # Removing only the client file of a running service orphans nothing: allowed.
    value = call("rm", keys=["toy-run", "toy-stale"], client=True)
    assert [r["outcome"] for r in value["results"]] == ["removed", "removed"]
    assert value["results"][0]["removed"] == [str(files(sandbox, "toy-run")[0])]
    assert not files(sandbox, "toy-run")[0].exists() and files(sandbox, "toy-run")[1].exists()
    assert not files(sandbox, "toy-stale")[0].exists() and files(sandbox, "toy-stale")[1].exists()
    assert alive(toy["pid"])

    # --server: the running one is refused, the stale one's server file goes.
    value = call("rm", keys=["toy-run", "toy-stale"], server=True)
    assert value["results"][0]["outcome"].startswith("refused")
    assert value["results"][1] == {"key": "toy-stale", "outcome": "removed",
                                   "removed": [str(files(sandbox, "toy-stale")[1])]}
    assert files(sandbox, "toy-run")[1].exists() and not files(sandbox, "toy-stale")[1].exists()

    # Both flags mean both sides, like no flag.
    sandbox.write_state("toy-both", {"status": "stale"})
    sandbox.write_state("toy-both", {"hostname": "127.0.0.1", "port": 1}, side="client")
    value = call("rm", keys=["toy-both"], client=True, server=True)
    assert len(value["results"][0]["removed"]) == 2


def test_rm_helper_error_is_reported_per_key(sandbox, stale):
    # A server "file" that is a directory: rhl-rm cannot unlink it and stops there.
    (sandbox.server_dir / "toy-dir.json").mkdir()
    value = call("rm", keys=["toy-dir", "toy-stale"], server=True)
    assert value["exit_status"] == 1
    broken, later = value["results"]
    assert broken["outcome"].startswith("error: could not remove ") and "toy-dir.json" in broken["outcome"]
    assert later["outcome"].startswith("error: rhl-rm did not process this key")
    assert "could not remove" in value["stderr"]
    assert files(sandbox, "toy-stale")[1].exists()


def test_rm_keys_starting_with_dash_are_not_flags(sandbox, stale):
    client, server = files(sandbox, "toy-stale")
    # Passed through, '--server' would narrow the removal to the server side only: the
    # whole op is refused before rhl-rm runs, and both files stay.
    reply = decode_reply(handle(AgentContext(), encode_request([("rm", {"keys": ["--server", "toy-stale"]})])),
                         expected=1)
    assert reply[0]["ok"] is False and reply[0]["error"]["code"] == "invalid_key"
    assert client.exists() and server.exists()
