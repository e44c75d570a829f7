"""`seamless-service tunnel status` (issue 10): one readable line per kept connection, a
`--json` form with the same summary, and idle times that are the time since the last use,
not since this status request.

A real keeper (the real CLI behind it) holds three connections: the agent of a real sshd
server (tests/client/conftest.py `remote`), the ssh fallback to the same server, and this
machine's launcher state (a sandbox with a service launched through remote-http-launcher).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from seamless_service.client.keeper.status_view import ago, connection_lines, summary
from tests.support.remote_state import RUNNING_KEYS
from tests.support.sshd import require_sshd
from tests.support.keeper import ssh_home, through_keeper
from tests.support.cli import ndjson
from tests.support.services import LauncherSandbox

ALIAS = "statushost"
PAUSE = 2.2   # seconds nobody uses the keeper before asking its status


def tunnel(*args: str) -> subprocess.CompletedProcess:
    """`seamless-service tunnel ARGS` as a user types it (the thin client, its own process)."""
    return subprocess.run([sys.executable, "-m", "seamless_service.client.entry", "tunnel", *args],
                          capture_output=True, text=True, timeout=30)


def seconds(text: str) -> int:
    """The inverse of status_view.ago: 5s, 2m05s, 1h10m."""
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    assert match and text, text
    h, m, s = (int(g or 0) for g in match.groups())
    return h * 3600 + m * 60 + s


def connection_table(stdout: str) -> dict[tuple[str, str], dict[str, str]]:
    """The connection lines of `tunnel status`, by (host, transport)."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("HOST "))
    header = lines[start]
    names = header.split()
    starts = [header.index(name) for name in names]     # aligned columns ("this machine")
    table = {}
    for line in lines[start + 1:]:
        cells = [line[a:b].strip() for a, b in zip(starts, starts[1:] + [len(line)])]
        row = dict(zip(names, cells))
        table[(row["HOST"], row["TRANSPORT"])] = row
    return table


def test_status_shows_one_line_per_connection_with_the_idle_time_before_it(keeper, tmp_path, remote):
    require_sshd()
    env = ssh_home(tmp_path / "remote-home", remote.server, ALIAS)
    box = LauncherSandbox(tmp_path / "local")
    try:
        box.launch("hashserver-here-rw-p")
        for argv, home in ((["ps", "--cluster", "clu", "--server"], env),
                           # OpenSSH reads the passwd entry's ~/.ssh/config, not $HOME's
                           (["ps", "--cluster", "clu", "--server", "--transport", "ssh", "--ssh-config",
                             str(Path(env["HOME"]) / ".ssh" / "config")], env),
                           (["ps", "--local"], box.env())):
            code, out, err = through_keeper([*argv, "--json"], home, tmp_path)
            assert code == 0, err
            assert ndjson(out)
        time.sleep(PAUSE)

        status = tunnel("status")
        assert status.returncode == 0, status.stderr
        text = status.stdout
        assert "{" not in text and "}" not in text, text          # no Python dict repr
        idle = re.search(r"idle (\S+) since its last command", text)
        assert idle and seconds(idle.group(1)) >= 2, text          # not this request's 0 s
        assert "connections: 3" in text
        table = connection_table(text)
        assert set(table) == {(ALIAS, "agent"), (ALIAS, "ssh"), ("this machine", "local")}, text
        agent = table[(ALIAS, "agent")]
        assert agent["STATE"] == "connected" and int(agent["CALLS"]) >= 1
        assert seconds(agent["IDLE"]) >= 2 and seconds(agent["AGE"]) >= seconds(agent["IDLE"])
        assert re.match(r"agent pid \d+, version \S+, via channel", agent["DETAIL"]), agent
        assert table[(ALIAS, "ssh")]["STATE"] == "per-call"
        local = table[("this machine", "local")]
        assert (local["STATE"], local["DETAIL"]) == ("in-process", str(box.base))
        assert seconds(local["IDLE"]) >= 2

        as_json = json.loads(tunnel("status", "--json").stdout)
        assert as_json["running"] is True and as_json["idle_for"] >= PAUSE
        entries = {(e["host"], e["transport"]): e for e in as_json["pool"]}
        agent_entry = entries[(ALIAS, "agent")]
        assert agent_entry["state"] == "connected" and agent_entry["idle"] >= PAUSE
        assert agent_entry["details"]["tunnel"]["alive"] is True      # the details are all there
        assert agent_entry["calls"] == agent_entry["details"]["calls"]

        # a command using the agent connection: its idle time starts again, the others' not
        code, out, err = through_keeper(["ps", "--cluster", "clu", "--server", "--json"], env, tmp_path)
        assert code == 0 and {r["key"] for r in ndjson(out)} >= set(RUNNING_KEYS), err
        again = json.loads(tunnel("status", "--json").stdout)
        entries = {(e["host"], e["transport"]): e for e in again["pool"]}
        assert entries[(ALIAS, "agent")]["idle"] < 1.5 < entries[("this machine", "local")]["idle"]
        assert again["idle_for"] < 1.5
        assert entries[(ALIAS, "agent")]["calls"] > agent_entry["calls"]
    finally:
        box.kill_all()


def test_lines_of_several_environments_and_unknown_objects():
    """Pure formatting: two environments' connections to one host are told apart by their
    tag; an object the view does not know shows its own flat details; a disconnected agent
    and its last error are said."""
    now = 1000.0
    entries = [
        {"name": "transport:agent:h1#aaaa", "created": 900.0, "last_used": 990.0,
         "details": {"transport": "agent", "host": "h1", "connected": False, "calls": 3,
                     "last_error": "connection reset", "agent_pid": 7, "via": "channel"}},
        {"name": "transport:agent:h1|/cfg#bbbb", "created": 400.0, "last_used": 400.0,
         "details": {"transport": "agent", "host": "h1", "connected": True, "calls": 1,
                     "tunnel": {"alive": True}}},
        {"name": "thing", "created": 999.0, "last_used": 999.0, "details": {"kind": "thing", "nested": {}}},
    ]
    lines = connection_lines(entries, now)
    assert lines[0].split() == ["HOST", "TRANSPORT", "AGE", "IDLE", "STATE", "CALLS", "DETAIL"]
    first, second, third = (line.split(None, 6) for line in lines[1:])
    assert first == ["h1", "agent", "1m40s", "10s", "disconnected", "3",
                     "env aaaa, agent pid 7, via channel, last error: connection reset"]
    assert second[:6] == ["h1", "agent", "10m", "10m", "connected", "1"] and second[6] == "env bbbb"
    assert third == ["thing", "-", "1s", "1s", "-", "-", "kind=thing"]
    assert all(line == line.rstrip() for line in lines)
    assert summary(entries[0], now)["idle"] == 10.0 and ago(3725) == "1h02m"


def test_a_lease_marks_its_connection_used_when_its_call_ends():
    """A long call (a watch's `wait`) leaves the connection used at its end, not at the
    start of the command that leased it."""
    from seamless_service.client.transport.base import Transport
    from seamless_service.client.transport.pool import TransportPool
    from seamless_service.client.transport.pooled import PooledTransport

    class Slow(Transport):
        name, host = "slow", "h"

        def batch(self, ops):
            time.sleep(0.3)
            return []

    pool = TransportPool()
    try:
        name = "transport:slow:h#t"
        lease = PooledTransport(name, pool.lease(name, Slow), pool=pool)
        lease.batch([("hello", {})])
        [entry] = pool.describe()
        assert entry["last_used"] - entry["created"] >= 0.3
    finally:
        pool.close_all()
