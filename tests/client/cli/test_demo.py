"""The newcomer path: `demo start`, `ps --local`, `demo stop`, on real launched services."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from seamless_service.demo import launch, real
from seamless_service.demo.launch import DEMO_KEYS, demo_root
from tests.support.other_user import as_user, local_user, unused_uid
from tests.support.services import skip_without_real_services, without_real_services

def run(sandbox, *argv: str, python: str = sys.executable, env: dict | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(env or sandbox.env())
    env["SEAMLESS_SERVICE_NO_DAEMON"] = "1"
    return subprocess.run([python, "-m", "seamless_service", *argv], env=env, capture_output=True, text=True,
                          timeout=120, cwd=cwd)


@pytest.fixture
def box(sandbox, tmp_path, monkeypatch):
    """The sandbox, with an XDG cache of its own (where the demo records its data folder)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    yield sandbox
    # A failed test must not leave demo services or data behind.
    if any((sandbox.server_dir / f"{key}.json").exists() for key in DEMO_KEYS):
        run(sandbox, "demo", "stop")
    root = demo_root()
    if root is not None:
        shutil.rmtree(root, ignore_errors=True)


def private_dir(path: Path) -> bool:
    st = os.lstat(path)
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) == 0o700


def _started_then_listed(sandbox, python: str = sys.executable, env: dict | None = None):
    """`demo start`, then the `ps --local --persistent --json` rows by key."""
    started = run(sandbox, "demo", "start", python=python, env=env)
    assert started.returncode == 0, started.stderr
    assert all(f"{key}: started" in started.stdout.splitlines() for key in DEMO_KEYS)
    root = demo_root()
    assert root is not None and private_dir(root) and root != _old_predictable_root()
    assert all(private_dir(folder) for folder in (root / "db", root / "db" / "tour", root / "configs"))
    listing = run(sandbox, "ps", "--local", "--persistent", "--json", python=python, env=env)
    assert listing.returncode == 0, listing.stderr
    rows = {row["key"]: row for row in map(json.loads, listing.stdout.splitlines())}
    assert set(rows) == set(DEMO_KEYS)
    assert all(row["process"] == "running" for row in rows.values())
    assert rows["jobserver-demo-rw-tour--STAGE-try"]["stage"] == "try"
    return started, root, rows


def _health_then_stop(sandbox, root: Path, python: str = sys.executable, env: dict | None = None) -> None:
    """Every demo service answers its health check; `demo stop` leaves no process, no
    state, no data."""
    pids = [json.loads((sandbox.server_dir / f"{key}.json").read_text())["pid"] for key in DEMO_KEYS]
    table = run(sandbox, "ps", "--local", "--health", python=python, env=env)
    assert table.stdout.splitlines()[0].split() == [
        "SERVICE", "PROJECT", "STAGE", "PROCESS", "PORT", "PERSISTENT", "SIZE", "HEALTH"]
    assert table.stdout.count(" ok") == 3

    stopped = run(sandbox, "demo", "stop", python=python, env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.count(": stopped") == 3
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    assert not any((sandbox.server_dir / f"{key}.json").exists() for key in DEMO_KEYS)
    assert not root.exists() and demo_root() is None
    empty = run(sandbox, "ps", "--local", "--json", python=python, env=env)
    assert empty.returncode == 0 and empty.stdout == ""


def test_demo_start_ps_stop_with_the_real_services(box):
    """With the [services] extra: a real hashserver holding real buffers (put through its
    HTTP API) and a real seamless-database with its seamless.db, launched as Seamless would."""
    skip_without_real_services()
    started, root, rows = _started_then_listed(box)
    assert started.stdout.count("services: the real hashserver and seamless-database;") == 1
    states = {key: json.loads((box.server_dir / f"{key}.json").read_text()) for key in launch.REAL_KEYS}
    assert [state["command"].split()[0] for state in states.values()] == ["hashserver", "seamless-database"]

    buffers = real.demo_buffers()
    hashserver = rows["hashserver-demo-rw-tour"]
    assert hashserver["persistent"] == "populated" and hashserver["size"] >= sum(map(len, buffers))
    port = states["hashserver-demo-rw-tour"]["port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/{real.checksum(buffers[3])}", timeout=10) as got:
        assert got.read() == buffers[3]      # served back by the real hashserver

    database = rows["database-demo-rw-tour"]
    db_file = root / "db" / "tour" / "seamless.db"
    assert database["persistent"] == "populated" and database["size"] >= db_file.stat().st_size > 0
    with contextlib.closing(sqlite3.connect(f"file:{db_file}?mode=ro", uri=True)) as db:
        assert db.execute("select count(*) from buffer_info").fetchone() == (len(buffers),)
        assert db.execute("select result from transformation").fetchall() == [(real.checksum(buffers[0]),)]

    again = run(box, "demo", "start")      # a second start puts nothing new, fails nothing
    assert again.returncode == 0, again.stderr
    assert run(box, "ps", "--local", "--persistent", "--json").stdout.count('"populated"') == 2
    _health_then_stop(box, root)


def test_demo_without_the_real_services_runs_the_built_in_one(box, tmp_path):
    """Without the [services] extra (no hashserver, no seamless-database next to Python or on
    PATH), the built-in service stands in for all three, with stand-in data files."""
    python, env = without_real_services(tmp_path / "venv", box.env())
    started, root, rows = _started_then_listed(box, python, env)
    assert started.stdout.count("services: the built-in demo service (pip install 'seamless-service[services]'") == 1
    assert all(json.loads((box.server_dir / f"{key}.json").read_text())["command"].startswith("seamless-service-demo ")
               for key in DEMO_KEYS)
    assert stat.S_IMODE(os.stat(root / "db" / "tour" / "seamless.db").st_mode) == 0o600
    hashserver = rows["hashserver-demo-rw-tour"]
    assert hashserver["persistent"] == "populated" and hashserver["size"] > 40_000  # real bytes
    assert rows["database-demo-rw-tour"]["size"] > 20_000
    _health_then_stop(box, root, python, env)


def test_demo_data_is_per_home(box, tmp_path, monkeypatch):
    """Two sandboxes of one user (one XDG cache, different HOME) never share demo data."""
    monkeypatch.setenv("HOME", str(tmp_path / "a"))
    first = launch._prepare()
    monkeypatch.setenv("HOME", str(tmp_path / "b"))
    second = launch._prepare()
    assert first != second and first.parent == second.parent
    assert str(os.getuid()) in first.name
    assert launch._remove_root(print) == 0 and not second.exists() and demo_root() is None
    monkeypatch.setenv("HOME", str(tmp_path / "a"))
    assert demo_root() == first and (first / "db" / "tour" / "seamless.db").is_file()
    assert launch._remove_root(print) == 0 and not first.exists()


def test_a_link_in_our_own_data_folder_is_replaced_not_written_through(box, tmp_path):
    victim = tmp_path / "precious.txt"
    victim.write_bytes(b"keep me\n")
    root = launch._prepare()
    db = root / "db" / "tour" / "seamless.db"
    db.unlink()
    db.symlink_to(victim)
    assert launch._prepare() == root                     # the same folder, reused
    assert victim.read_bytes() == b"keep me\n" and not db.is_symlink() and db.stat().st_size > 20_000
    shutil.rmtree(root / "configs")
    (root / "configs").symlink_to(tmp_path)               # a linked folder is refused, not entered
    lines = []
    assert launch.start(echo=lambda *a, **k: lines.append(a[0])) == 1
    assert lines == [f"seamless-service demo: cannot use {root / 'configs'}: it is a symbolic link; "
                     "'seamless-service demo stop' forgets that folder, then start again"]
    assert launch._remove_root(print) == 0 and not root.exists() and tmp_path.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")
def test_a_recorded_folder_that_is_no_longer_ours_is_refused_and_left_alone(box):
    root = launch._prepare()
    stranger = unused_uid()
    os.chown(root, stranger, -1)    # e.g. our folder was cleaned from /tmp and someone took its name
    started = run(box, "demo", "start")
    assert started.returncode == 1 and started.stdout == ""
    assert started.stderr == (f"seamless-service demo: refusing {root}: owned by uid {stranger}, not by you; "
                              "'seamless-service demo stop' forgets that folder, then start again\n")
    stopped = run(box, "demo", "stop")
    assert stopped.returncode == 1
    assert stopped.stderr.splitlines()[-1] == f"seamless-service demo: left {root} alone: refusing {root}: owned by uid {stranger}, not by you"
    assert root.exists() and demo_root() is None        # forgotten, not removed
    os.chown(root, 0, -1)
    shutil.rmtree(root)


def _old_predictable_root() -> Path:
    """Where demo data used to go: a name any local user can compute for any other."""
    import hashlib
    import tempfile

    launcher_dir = str(Path("~/.remote-http-launcher").expanduser())
    tag = hashlib.sha256(launcher_dir.encode()).hexdigest()[:8]
    return Path(tempfile.gettempdir()) / f"seamless-service-demo-{os.getuid()}-{tag}"


def test_a_folder_planted_by_another_user_cannot_redirect_the_demo_data(box, tmp_path):
    """Another user pre-creates the demo folder (0777) with seamless.db a link to one of
    our files: `demo start` must neither write through the link nor use that folder."""
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me\n")
    planted = _old_predictable_root()

    def plant() -> dict:
        os.umask(0)
        (planted / "db" / "tour").mkdir(parents=True, mode=0o777)
        os.symlink(victim, planted / "db" / "tour" / "seamless.db")
        return {"planted": True}

    with local_user() as attacker:
        try:
            assert as_user(attacker.pw_uid, attacker.pw_gid, plant) == {"planted": True}
            started = run(box, "demo", "start")
            stopped = run(box, "demo", "stop")
            assert victim.read_bytes() == b"keep me\n"   # not overwritten through the link
            assert started.returncode == 0, started.stderr
            assert stopped.returncode == 0, stopped.stderr
            assert os.readlink(planted / "db" / "tour" / "seamless.db") == str(victim)  # not ours to remove
        finally:
            shutil.rmtree(planted, ignore_errors=True)


# ---------------------------------------------------------------- after `demo start`


def state(sandbox, key: str) -> dict:
    return json.loads((sandbox.server_dir / f"{key}.json").read_text())


def test_the_next_commands_demo_start_prints_work_verbatim_anywhere(box, tmp_path):
    """Issue 10: after `demo start`, the commands it suggests work as typed, in a folder with
    no seamless.yaml and a HOME with no clusters.yaml (no cluster configuration at all)."""
    sandbox = box
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert not (sandbox.home / ".seamless").exists()
    started = run(sandbox, "demo", "start", cwd=elsewhere)
    assert started.returncode == 0, started.stderr
    lines = started.stdout.splitlines()
    assert lines[:3] == [f"{key}: started" for key in DEMO_KEYS]
    suggested = [line.split("seamless-service ", 1)[1].split("  ")[0].split()
                 for line in lines[3:] if line.startswith("  seamless-service ")]
    assert [words[:2] for words in suggested] == [
        ["ps", "--local"], ["logs", "--local"], ["inspect", "--local"], ["demo", "stop"]]

    ps, logs, inspect = (run(sandbox, *words, cwd=elsewhere) for words in suggested[:3])
    assert ps.returncode == 0 and ps.stdout.count(" ok") == 3, ps.stderr
    expected = sandbox.run_helper("rhl-logs", "hashserver-demo-rw-tour", "--tail", "5", check=True).stdout
    assert (logs.returncode, logs.stdout, logs.stderr) == (0, expected, "")
    assert len(expected.splitlines()) == 5
    assert inspect.returncode == 0, inspect.stderr
    assert json.loads(inspect.stdout) == state(sandbox, "database-demo-rw-tour")

    # the raw key names the same service
    by_key = run(sandbox, "logs", "--key", "hashserver-demo-rw-tour", "--local", "--tail", "5", cwd=elsewhere)
    assert (by_key.returncode, by_key.stdout) == (0, expected)

    again = run(sandbox, "demo", "start", cwd=elsewhere)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[:3] == [f"{key}: already running" for key in DEMO_KEYS]
    assert "started" not in again.stdout
    assert all(state(sandbox, key)["status"] == "running" for key in DEMO_KEYS)


def test_local_selection_of_several_services_lists_them_and_exits_2(box, tmp_path):
    sandbox = box
    assert run(sandbox, "demo", "start").returncode == 0
    stop = run(sandbox, "stop", "--local", "--project", "tour", cwd=tmp_path)
    assert (stop.returncode, stop.stdout) == (2, "")
    first, *listed = stop.stderr.splitlines()
    assert first.startswith("seamless-service: 3 services on this machine match --project tour; narrow ")
    assert "--key KEY" in first
    assert sorted(line.split() for line in listed) == sorted([key, "running"] for key in DEMO_KEYS)
    assert all(state(sandbox, key)["status"] == "running" for key in DEMO_KEYS)   # nothing stopped

    none = run(sandbox, "inspect", "--local", "--service", "jobserver", "--stage", "nosuch", cwd=tmp_path)
    assert (none.returncode, none.stdout) == (1, "")
    assert none.stderr == ("seamless-service: no service on this machine matches --service jobserver "
                           "--stage nosuch (see 'seamless-service ps --local')\n")


def test_stop_rm_clear_local_act_on_the_one_selected_service(box, tmp_path):
    sandbox = box
    assert run(sandbox, "demo", "start").returncode == 0
    job, hs = "jobserver-demo-rw-tour--STAGE-try", "hashserver-demo-rw-tour"
    pid = state(sandbox, job)["pid"]
    stop = run(sandbox, "stop", "--local", "--service", "jobserver", cwd=tmp_path)
    assert (stop.returncode, stop.stdout) == (0, f"{job}: stopped\n"), stop.stderr
    assert state(sandbox, job)["status"] == "stale"
    assert state(sandbox, hs)["status"] == "running"
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    rm = run(sandbox, "rm", "--local", "--key", job, cwd=tmp_path)
    assert rm.returncode == 0, rm.stderr
    assert f"removed {sandbox.server_dir / (job + '.json')}" in rm.stdout.splitlines()
    assert not (sandbox.server_dir / f"{job}.json").exists()

    buffers = Path(state(sandbox, hs)["workdir"])
    # the real hashserver's prefix folders or the built-in service's files, and the marker
    held = sorted(buffers.iterdir())
    assert len(held) > 1 and buffers / ".HASHSERVER_PREFIX" in held
    refused = run(sandbox, "clear", "--local", "--service", "hashserver", "--yes", cwd=tmp_path)
    assert refused.returncode == 1 and "(or pass --force)" in refused.stderr
    assert sorted(buffers.iterdir()) == held
    # by key: the data folder is the one its state file records
    cleared = run(sandbox, "clear", "--local", "--key", hs, "--yes", "--force", cwd=tmp_path)
    assert cleared.returncode == 0, cleared.stderr
    assert [p.name for p in buffers.iterdir()] == [".HASHSERVER_PREFIX"]


@pytest.mark.parametrize("argv,needle", [
    (["inspect", "--key", "hashserver-demo-rw-tour", "--local", "--service", "hashserver"],
     "argument --key: not allowed with --service"),
    (["logs", "--key", "hashserver-demo-rw-tour", "--local", "--stage", "s", "--mode", "rw"],
     "argument --key: not allowed with --stage, --mode"),
    (["stop", "--key", "../../etc", "--local"], "argument --key: invalid key '../../etc'"),
    (["rm", "--key=-h", "--local"], "argument --key: invalid key '-h'"),
    (["clear", "--key", "hashserver-demo-rw-tour", "--yes"], "argument --key: needs --cluster C or --local"),
    (["inspect", "--key", "hashserver-demo-rw-tour", "--local", "--cluster", "demo"],
     "argument --key: give --cluster C or --local, not both"),
])
def test_key_is_checked_before_anything_is_sent(box, tmp_path, argv, needle):
    result = run(box, *argv, cwd=tmp_path)
    assert (result.returncode, result.stdout) == (2, "")
    assert len(result.stderr.splitlines()) == 1 and needle in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_start_restart_of_a_demo_key_say_what_to_do_and_touch_nothing(box, tmp_path):
    """The demo's cluster `demo` is in no clusters.yaml: start/restart cannot resolve its keys
    into a launch configuration. One line says so and what to do instead; that advice works."""
    sandbox = box
    assert run(sandbox, "demo", "start").returncode == 0
    hs = "hashserver-demo-rw-tour"
    before = {key: state(sandbox, key) for key in DEMO_KEYS}

    def refused(*argv: str) -> str:
        result = run(sandbox, *argv, cwd=tmp_path)
        assert (result.returncode, result.stdout) == (2, ""), (result.returncode, result.stdout, result.stderr)
        assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr, result.stderr
        assert {key: state(sandbox, key) for key in DEMO_KEYS} == before   # same pids, nothing stopped
        return result.stderr.strip()

    why = f"seamless-service: cannot start {hs}: start needs the service's configuration, and its key " \
          "does not resolve: unknown cluster 'demo' (no clusters defined in ~/.seamless/clusters.yaml)"
    assert refused("start", "--local", "--key", hs) == f"{why}; it is a demo service: `seamless-service demo start` starts it"
    advice = f"it is a demo service: `seamless-service stop --local --key {hs}`, then `seamless-service demo start`"
    assert refused("restart", "--local", "--key", hs).endswith(advice)
    several = refused("restart", "--local")   # every running service of this machine: none is restarted
    assert several.startswith("seamless-service: cannot restart ") and several.endswith("; nothing was restarted")

    # the advice, followed: the demo hashserver runs again, a new process
    assert run(sandbox, "stop", "--local", "--key", hs, cwd=tmp_path).returncode == 0
    again = run(sandbox, "demo", "start", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"{hs}: started" in again.stdout.splitlines()
    assert state(sandbox, hs)["status"] == "running" and state(sandbox, hs)["pid"] != before[hs]["pid"]
