"""Odd files in the launcher state folder, against a real agent process (issue 9 item 5).

A FIFO named `*.json` used to hang ps, wait (so `ps --watch`), inspect and clear's running
check forever, each holding an agent thread and keeping the agent from its idle exit; a
FIFO `*.log` hung logs; a `*.json` link to /dev/zero was read (1 MiB of NULs per poll)
and shown as "malformed JSON", a `*.log` link to it as an empty log. Now only regular
files are read (agent/safe_read.py): anything else is an error row or an OP_FAILED naming
what the file is, and every other row is still there.

Every call below runs under a deadline, so the old code fails the test instead of hanging.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from seamless_service.agent import safe_read
from seamless_service.agent.statefiles import MAX_STATE_BYTES
from seamless_service.client.transport.agent_conn import AgentConnection
from tests.support.agent import end_agent, proc_status, start_test_agent

DEADLINE = 8.0  # seconds for a call that, on a regular folder, takes milliseconds
HS = ".HASHSERVER_PREFIX"


def batch(agent: dict, ops: list[tuple[str, dict]], deadline: float = DEADLINE) -> list[dict]:
    """The agent's results for `ops`, or a test failure if they take longer than `deadline`.
    The call runs in a daemon thread: a hung agent leaves that thread waiting, not the test."""
    results: list = []

    def ask() -> None:
        try:
            with AgentConnection.connect("127.0.0.1", agent["port"], agent["secret"], timeout=5,
                                         call_timeout=deadline + 60) as conn:
                results.append(conn.batch(ops))
        except BaseException as exc:  # reported below
            results.append(exc)

    worker = threading.Thread(target=ask, daemon=True)
    worker.start()
    worker.join(deadline)
    assert not worker.is_alive(), f"{[op for op, _ in ops]} did not return within {deadline:g} s"
    [answer] = results
    if isinstance(answer, BaseException):
        raise answer
    return answer


def value(result: dict) -> dict:
    assert result["ok"], result
    return result["value"]


def odd_folder(base: Path) -> dict[str, Path]:
    """server/: a FIFO, a /dev/zero link, a normal live row, and the same odd pair as logs;
    client/: a FIFO and a normal row."""
    server, client = base / "server", base / "client"
    client.mkdir(exist_ok=True)
    paths = {
        "fifo": server / "fifo.json", "zero": server / "zero.json", "ok": server / "ok.json",
        "fifo_log": server / "fifo.log", "zero_log": server / "zero.log",
        "client_fifo": client / "cfifo.json", "client_ok": client / "cok.json",
    }
    for name in ("fifo", "fifo_log", "client_fifo"):
        os.mkfifo(paths[name])
    paths["zero"].symlink_to("/dev/zero")
    paths["zero_log"].symlink_to("/dev/zero")
    paths["ok"].write_text(json.dumps({"status": "running", "pid": os.getpid(), "port": 5999}))
    paths["client_ok"].write_text(json.dumps({"hostname": "h", "port": 6000}))
    return paths


def not_regular(path: Path, kind: str) -> str:
    return f"could not read {path}: not a regular file ({kind})"


def test_ps_shows_odd_files_as_error_rows_and_the_rest_as_usual(agent):
    paths = odd_folder(agent["base"])
    server, client = (value(r) for r in batch(agent, [("ps", {}), ("ps", {"side": "client"})]))
    rows = {row["key"]: row for row in server["rows"]}
    assert set(rows) == {"fifo", "zero", "ok"}
    assert rows["fifo"]["status"] == "error" and rows["fifo"]["live"] is None
    assert rows["fifo"]["error"] == not_regular(paths["fifo"], "a FIFO")
    assert rows["zero"]["status"] == "error"
    assert rows["zero"]["error"] == not_regular(paths["zero"], "a character device")
    assert rows["ok"]["status"] == "running" and rows["ok"]["live"] is True
    crows = {row["key"]: row for row in client["rows"]}
    assert set(crows) == {"cfifo", "cok"}
    assert crows["cfifo"]["status"] == "error"
    assert crows["cfifo"]["error"] == not_regular(paths["client_fifo"], "a FIFO")
    assert crows["cok"]["port"] == 6000 and crows["cok"]["process"] == "client"


def test_wait_and_watch_return_with_a_fifo_in_the_folder(agent):
    paths = odd_folder(agent["base"])
    [ps] = batch(agent, [("ps", {})])
    token = value(ps)["token"]
    start = time.monotonic()
    [waited] = batch(agent, [("wait", {"token": token, "timeout": 1})])
    assert value(waited) == {"changed": False, "token": token}
    assert time.monotonic() - start < 1 + DEADLINE / 2
    # a change is still seen: the normal row's service "stops"
    paths["ok"].write_text(json.dumps({"status": "stale", "pid": os.getpid(), "port": 5999}))
    [waited] = batch(agent, [("wait", {"token": token, "timeout": 5})])
    assert value(waited)["changed"] is True


def test_inspect_stop_and_rm_of_a_fifo_key_answer(agent):
    paths = odd_folder(agent["base"])
    inspect, stop = batch(agent, [("inspect", {"key": "fifo"}), ("stop", {"keys": ["fifo"]})])
    assert not inspect["ok"] and inspect["error"]["code"] == "op_failed"
    assert inspect["error"]["message"] == not_regular(paths["fifo"], "a FIFO")
    [outcome] = value(stop)["results"]
    assert outcome["stopped"] is False and outcome["outcome"].startswith("error: ")
    assert "not a regular file (a FIFO)" in outcome["outcome"]
    [rm] = batch(agent, [("rm", {"keys": ["fifo"], "server": True})])
    assert value(rm) and not os.path.lexists(paths["fifo"])


@pytest.mark.parametrize("args", [{}, {"tail": 10}, {"offset": 0}])
def test_logs_of_a_fifo_or_a_device_link_is_an_error(agent, args):
    odd_folder(agent["base"])
    fifo, zero = batch(agent, [("logs", {"key": "fifo", **args}), ("logs", {"key": "zero", **args})])
    assert not fifo["ok"] and fifo["error"]["code"] == "op_failed"
    assert fifo["error"]["message"] == "could not read log of 'fifo': not a regular file (a FIFO)"
    assert not zero["ok"]
    assert zero["error"]["message"] == "could not read log of 'zero': not a regular file (a character device)"


def test_clear_running_check_passes_a_fifo_by(agent, tmp_path):
    odd_folder(agent["base"])
    data = tmp_path / "data" / "buffers" / "proj"
    data.mkdir(parents=True)
    (data / HS).write_bytes(b"")
    (data / "ab").write_bytes(b"x" * 10)
    [cleared] = batch(agent, [("clear", {"path": str(data), "key": "fifo"})], deadline=DEADLINE + 20)
    result = value(cleared)
    assert result["ok"] and result["removed"] == 1
    assert sorted(os.listdir(data)) == [HS]


def test_dev_zero_links_do_not_grow_the_agent(agent):
    server = agent["base"] / "server"
    for n in range(20):  # the old code read 1 MiB of NULs from each (the cap of issue 8)
        (server / f"zero{n}.json").symlink_to("/dev/zero")
    pid = agent["proc"].pid
    value(batch(agent, [("ps", {})])[0])  # imports and caches warmed up
    before = proc_status(pid, "VmHWM")
    for _ in range(3):
        (server / "touch.json").write_text("{}")  # a change: every row is rebuilt
        rows = value(batch(agent, [("ps", {}), ("wait", {"timeout": 0})])[0])["rows"]
        odd = [row for row in rows if row["key"].startswith("zero")]
        assert len(odd) == 20  # refused unread (the old code read each, then said "malformed JSON")
        assert all(row["error"].endswith("not a regular file (a character device)") for row in odd)
    grown_kib = proc_status(pid, "VmHWM") - before
    assert grown_kib < 8 * 1024, f"agent grew by {grown_kib} KiB"


def test_no_thread_is_left_behind_and_the_agent_still_exits_when_idle(tmp_path):
    agent = start_test_agent(tmp_path, "--idle-timeout", "2")
    try:
        odd_folder(agent["base"])
        pid = agent["proc"].pid
        threads = proc_status(pid, "Threads")
        batch(agent, [("ps", {}), ("ps", {"side": "client"}), ("wait", {"timeout": 0}),
                      ("logs", {"key": "fifo"}), ("inspect", {"key": "fifo"})])
        time.sleep(0.3)  # the connection's thread ends after the client closes
        assert proc_status(pid, "Threads") <= threads
        # the idle exit: 2 s after the last connection closed
        assert agent["proc"].wait(15) == 0
    finally:
        end_agent(agent["proc"])


# -- the shared reader, in-process ------------------------------------------------------

def test_read_regular_refuses_fifos_and_devices_without_blocking(tmp_path):
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    with pytest.raises(safe_read.NotRegularFile, match=r"^not a regular file \(a FIFO\)$"):
        safe_read.read_regular(fifo, 100)  # the old open() would block here for good
    with pytest.raises(safe_read.NotRegularFile, match="a character device"):
        safe_read.read_regular("/dev/zero", 100)
    with pytest.raises(IsADirectoryError):
        safe_read.read_regular(tmp_path, 100)
    with pytest.raises(FileNotFoundError):
        safe_read.read_regular(tmp_path / "missing", 100)


def test_read_regular_follows_a_link_to_a_regular_file_as_the_helpers_do(tmp_path):
    target = tmp_path / "real.json"
    target.write_bytes(b'{"a": 1}')
    (tmp_path / "link.json").symlink_to(target)
    assert safe_read.read_regular(tmp_path / "link.json", 100) == b'{"a": 1}'


def test_read_regular_caps_the_size(tmp_path):
    path = tmp_path / "big"
    path.write_bytes(b"x" * (MAX_STATE_BYTES + 1))
    with pytest.raises(safe_read.FileTooLarge) as info:
        safe_read.read_regular(path, MAX_STATE_BYTES)
    assert info.value.size == MAX_STATE_BYTES + 1
    path.write_bytes(b"x" * MAX_STATE_BYTES)
    assert len(safe_read.read_regular(path, MAX_STATE_BYTES)) == MAX_STATE_BYTES
