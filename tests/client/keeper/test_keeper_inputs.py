"""The tunnel keeper answers every caller with the caller's own inputs (issue 8, item 1).

One real keeper process (tests/support/keeper.py KeeperPlace, with the real CLI)
serves callers whose environment differs (HOME, REMOTE_HTTP_LAUNCHER_DIR) and whose files
change between commands (agent config.yaml and its data-roots file, clusters.yaml,
seamless.yaml, ~/.ssh/config). Launcher state is real (services launched through
remote-http-launcher); remote hosts are the real sshd servers of tests/client/conftest.py.
Every command goes through the keeper: client.run raises if it cannot reach one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from seamless_service.client.keeper import client
from seamless_service.client.transport.pool import MAX_VARIANTS, TransportPool
from seamless_service.client.transport.inputs import FileSnapshot
from tests.support.remote_state import RUNNING_KEYS
from tests.support.sshd import require_sshd
from tests.support.keeper import ssh_home, through_keeper
from tests.support.cli import ndjson
from tests.support.world import World
from tests.support.services import LauncherSandbox


def keys_of(env: dict[str, str], cwd: Path, *argv: str) -> set[str]:
    code, out, err = through_keeper([*argv, "--json"], env, cwd)
    assert code == 0, err
    return {row["key"] for row in ndjson(out)}


def pool_entries() -> list[dict]:
    info = client.keeper_status()
    assert info is not None
    return info["pool"]


# ------------------------------------------------------------------ this machine


def test_ps_shows_each_callers_own_launcher_state(keeper, tmp_path):
    """Two HOMEs, then one HOME with REMOTE_HTTP_LAUNCHER_DIR pointing at the other's
    state: server rows (ps --local) and client rows (ps) are always the caller's own."""
    a, b = LauncherSandbox(tmp_path / "a"), LauncherSandbox(tmp_path / "b")
    try:
        a.launch("hashserver-alpha-rw-p")
        b.launch("hashserver-beta-rw-p")
        b.write_state("database-beta-ro-q", {"status": "failed", "pid": 4_000_000, "workdir": "/tmp"})
        for box, want_server, want_client in (
                (a, {"hashserver-alpha-rw-p"}, {"hashserver-alpha-rw-p"}),
                (b, {"hashserver-beta-rw-p", "database-beta-ro-q"}, {"hashserver-beta-rw-p"}),
                (a, {"hashserver-alpha-rw-p"}, {"hashserver-alpha-rw-p"})):
            assert keys_of(box.env(), tmp_path, "ps", "--local") == want_server
            assert keys_of(box.env(), tmp_path, "ps") == want_client
        # A's HOME, B's launcher folder: B's state
        mixed = {**a.env(), "REMOTE_HTTP_LAUNCHER_DIR": str(b.base)}
        assert keys_of(mixed, tmp_path, "ps", "--local") == {"hashserver-beta-rw-p", "database-beta-ro-q"}
        # `tunnel status` shows the local transports by launcher folder: one per folder and
        # HOME (HOME matters too: `~` in a data-roots policy)
        bases = sorted(e["details"]["base"] for e in pool_entries() if e.get("family") == "transport:local")
        assert bases == sorted([str(a.base), str(b.base), str(b.base)])
    finally:
        a.kill_all()
        b.kill_all()


def test_stop_and_rm_act_on_the_callers_own_state(keeper, tmp_path):
    """The same key runs under two HOMEs. Through one keeper, warmed by A, B's stop and
    rm reach B's service and files only; A's service keeps running, its files untouched."""
    worlds = {name: World.build(tmp_path / name, dead_cluster=False) for name in ("a", "b")}
    try:
        keys = {name: world.launch("hs", "hashserver") for name, world in worlds.items()}
        assert keys["a"] == keys["b"]
        key = keys["a"]
        a, b = worlds["a"], worlds["b"]
        files_a = {p: p.read_bytes() for p in (a.box.server_dir / f"{key}.json", a.box.client_dir / f"{key}.json")}
        pid_a = json.loads((a.box.server_dir / f"{key}.json").read_text())["pid"]

        assert keys_of(a.env(), a.proj, "ps", "--local") == {key}   # the keeper now holds A's transport
        code, out, err = through_keeper(["stop", "--service", "hashserver"], b.env(), b.proj)
        assert code == 0, err
        assert out.strip() == f"{key}: stopped"
        assert json.loads((b.box.server_dir / f"{key}.json").read_text())["status"] != "running"
        assert json.loads((b.box.client_dir / f"{key}.json").read_text())["status"] == "stale"

        code, out, err = through_keeper(["rm", "--client", "--service", "hashserver"], b.env(), b.proj)
        assert code == 0, err
        assert not (b.box.client_dir / f"{key}.json").exists()
        code, out, err = through_keeper(["rm", "--server", "--service", "hashserver"], b.env(), b.proj)
        assert code == 0, err
        assert not (b.box.server_dir / f"{key}.json").exists()

        assert {p: p.read_bytes() for p in files_a} == files_a
        os.kill(pid_a, 0)  # still there
        assert [r["process"] for r in ndjson(through_keeper(["ps", "--local", "--json"], a.env(), a.proj)[1])] \
            == ["running"]
    finally:
        for world in worlds.values():
            world.box.kill_all()


def test_agent_config_and_its_data_roots_file_apply_on_the_next_command(keeper, tmp_path):
    """`<launcher dir>/agent/config.yaml` (the path policy) and the data-roots file it
    names are read again as soon as they change, not when the keeper happens to restart."""
    box = LauncherSandbox(tmp_path / "a")
    box.write_state("database-x-rw-p", {"status": "failed", "pid": 4_000_000, "workdir": "/tmp"})
    env = box.env()
    config = box.base / "agent" / "config.yaml"
    config.parent.mkdir(parents=True, mode=0o700)

    def ps() -> tuple[int, str, str]:
        return through_keeper(["ps", "--local", "--json"], env, tmp_path)

    assert ps()[0] == 0
    config.write_text("path_policy: nonsense\n")
    code, out, err = ps()
    assert code == 2 and "path policy" in err and out == "", (code, err)
    roots = tmp_path / "roots.txt"
    roots.write_text(f"{tmp_path}\n")
    config.write_text(f"path_policy: data-roots:{roots}\n")
    code, out, err = ps()
    assert code == 0, err
    assert [r["key"] for r in ndjson(out)] == ["database-x-rw-p"]
    roots.write_text("# no roots any more\n")
    code, out, err = ps()
    assert code == 2 and "does not contain any usable roots" in err, (code, err)
    config.unlink()
    assert ps()[0] == 0


def test_clusters_and_seamless_yaml_edits_apply_on_the_next_command(keeper, tmp_path):
    """Resolution reads clusters.yaml and seamless.yaml for every command in the keeper."""
    world = World.build(tmp_path / "w", dead_cluster=False)
    env = world.env()
    resolve = ["resolve", "--service", "hashserver", "--workdir", "."]

    def resolved() -> dict:
        code, out, err = through_keeper(resolve, env, world.proj)
        assert code == 0, err
        return json.loads(out)

    first = resolved()
    assert first["project"] == "myproj" and first["workdir"].startswith(str(world.buf))
    (world.proj / "seamless.yaml").write_text(yaml.safe_dump([{"project": "otherproj"}, {"cluster": "loc"}]))
    assert resolved()["project"] == "otherproj"
    world.buf = tmp_path / "elsewhere"
    world.write_clusters(dead=False)
    assert resolved()["workdir"].startswith(str(tmp_path / "elsewhere"))


# ------------------------------------------------------------------ remote hosts


def test_ssh_config_edits_and_each_callers_own_config_pick_the_host(keeper, tmp_path, remote, second_remote):
    """One alias, `pointer`. HOME A's ~/.ssh/config names the first sshd server, then is
    edited to name the second (another port, user, key and known_hosts); HOME B's names
    the first. Each command reaches the host its caller's config names at that moment."""
    require_sshd()
    env_a = ssh_home(tmp_path / "a", remote.server, "pointer")
    env_b = ssh_home(tmp_path / "b", remote.server, "pointer")
    ps = ("ps", "--cluster", "clu", "--server")
    on_first = set(RUNNING_KEYS)   # running on the first server only

    def peers() -> set[str]:
        return {e["details"]["tunnel"]["peer"] for e in pool_entries()
                if e.get("family", "").startswith("transport:agent:pointer") and "tunnel" in e["details"]}

    assert keys_of(env_a, tmp_path, *ps) >= on_first
    second_remote.server.write_ssh_config(Path(env_a["HOME"]) / ".ssh" / "config", alias="pointer")
    assert not keys_of(env_a, tmp_path, *ps) & on_first       # the very next command
    assert peers() == {f"127.0.0.1:{second_remote.server.port}"}  # the old connection was closed
    assert keys_of(env_b, tmp_path, *ps) >= on_first          # B's own config: the first server
    assert not keys_of(env_a, tmp_path, *ps) & on_first       # and A still its own
    assert peers() == {f"127.0.0.1:{second_remote.server.port}", f"127.0.0.1:{remote.server.port}"}


# ------------------------------------------------------------------ the pieces


class Closable:
    def __init__(self):
        self.closed = 0
        self.is_stale = False

    def stale(self) -> bool:
        return self.is_stale

    def close(self) -> None:
        self.closed += 1


@pytest.fixture
def clean_pool():
    pool = TransportPool()
    yield pool
    pool.close_all()


def test_pool_replaces_stale_entries_and_bounds_variants(clean_pool):
    pool = clean_pool
    first = pool.lease("t#1", Closable, family="t")
    assert pool.lease("t#1", Closable, family="t") is first
    first.is_stale = True
    second = pool.lease("t#1", Closable, family="t")
    assert second is not first and first.closed == 1   # replaced, and the old one closed
    variants = [pool.lease(f"t#{i}", Closable, family="t") for i in range(2, 2 + MAX_VARIANTS)]
    names = pool.names()
    assert len(names) == MAX_VARIANTS and "t#1" not in names   # least recently used went
    assert second.closed == 1 and not any(v.closed for v in variants)
    other = pool.lease("u", Closable)
    assert pool.peek("u") is other and len(pool.names()) == MAX_VARIANTS + 1  # another family
    # a new variant also closes the family's stale ones, which nobody would ask for again
    variants[0].is_stale = True
    pool.lease("t#new", Closable, family="t")
    assert variants[0].closed == 1 and "t#2" not in pool.names()


def test_file_snapshot_sees_edits_creation_and_removal(tmp_path):
    path = tmp_path / "config"
    missing = tmp_path / "not-yet"
    path.write_text("a")
    snap = FileSnapshot([path, missing])
    assert not snap.changed()
    path.write_text("b")
    assert snap.changed()
    snap = FileSnapshot([path, missing])
    missing.write_text("")
    assert snap.changed()
    snap = FileSnapshot([path])
    path.unlink()
    assert snap.changed()


def test_remembered_choices_follow_the_cache_folder_and_other_processes(tmp_path, monkeypatch):
    """transport-choice.json lives under XDG_CACHE_HOME: a caller with another one does not
    see this one's choices, and a `forget` by another process counts at once."""
    from seamless_service.client.transport import choice

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a"))
    choice.remember_choice("somehost", "ssh", reason="only rhl-* helpers", guarded=True)
    assert choice.remembered_choice("somehost")["guarded"] is True
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "b"))
    assert choice.remembered_choice("somehost") is None
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a"))
    path = tmp_path / "a" / "seamless-service" / choice.CHOICE_FILE
    path.write_text("{}")   # as `forget_choice` in another process leaves it
    assert choice.remembered_choice("somehost") is None


def _edit_in_place(path: Path, old: str, new: str) -> None:
    """`old` -> `new` (as long) in the file's own bytes, its mtime put back: the same inode,
    size and mtime_ns; only the content (and the ctime) say it changed."""
    assert len(old) == len(new) and old != new
    text = path.read_text()
    assert old in text
    before = os.stat(path)
    with path.open("r+") as handle:
        handle.write(text.replace(old, new))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)


def test_same_size_edits_of_clusters_seamless_and_profile_apply_on_the_next_command(keeper, tmp_path):
    """The keeper keeps what it parsed of the configuration between commands (issue 13):
    an in-place edit of clusters.yaml, seamless.yaml or seamless.profile.yaml that keeps
    the file's size, inode and mtime still shows in the very next command."""
    world = World.build(tmp_path / "w", dead_cluster=False)
    env = world.env()
    profile = world.proj / "seamless.profile.yaml"
    profile.write_text("- subproject: aaa\n")
    resolve = ["resolve", "--service", "hashserver", "--workdir", "."]

    def resolved() -> dict:
        code, out, err = through_keeper(resolve, env, world.proj)
        assert code == 0, err
        return json.loads(out)

    first = resolved()
    assert (first["project"], first["subproject"]) == ("myproj", "aaa")
    assert first["workdir"] == f"{world.buf}/myproj/aaa"
    assert resolved() == first   # the warm path: nothing changed, the same answer
    _edit_in_place(world.proj / "seamless.yaml", "myproj", "myprok")
    assert resolved()["project"] == "myprok"
    _edit_in_place(profile, "aaa", "aab")
    assert resolved()["subproject"] == "aab"
    moved = str(world.buf)[:-1] + "x"        # .../data/buf -> .../data/bux
    _edit_in_place(world.box.home / ".seamless" / "clusters.yaml", str(world.buf), moved)
    assert resolved()["workdir"] == f"{moved}/myprok/aab"


def test_two_commands_in_a_row_each_get_only_their_own_flags(keeper, tmp_path):
    """The keeper reuses one parser tree for every command (issue 13): the flags, defaults
    and output mode of one command never reach the next."""
    world = World.build(tmp_path / "w", dead_cluster=False)
    env = world.env()

    def run(*argv: str) -> str:
        code, out, err = through_keeper(list(argv), env, world.proj)
        assert code == 0, err
        return out

    resolve = ("resolve", "--service", "hashserver", "--workdir", ".")
    flagged = json.loads(run(*resolve, "--project", "elsewhere", "--subproject", "sub", "--mode", "ro"))
    assert (flagged["project"], flagged["subproject"], flagged["mode"]) == ("elsewhere", "sub", "ro")
    plain = json.loads(run(*resolve))
    assert (plain["project"], plain["subproject"], plain["mode"]) == ("myproj", None, "rw")
    ps = ("ps", "--cluster", "loc", "--persistent")
    rows = ndjson(run(*ps, "--json"))
    assert rows and {row["persistent"] for row in rows} == {"populated"}
    table = run(*ps).splitlines()
    assert len(table) > len(rows) and not any(line.startswith("{") for line in table)
    assert sum("populated" in line for line in table) == len(rows)


def test_file_snapshot_sees_a_same_size_edit_that_keeps_the_mtime(tmp_path):
    """~/.ssh/config reaches the pool as a FileSnapshot (tunnel.py, deploy/ssh.py on_read):
    an in-place edit keeping size, inode and mtime (`Port 22222` -> `Port 22223`) still
    changes the ctime, so the kept connection is replaced on the next command."""
    config = tmp_path / "config"
    config.write_text("Host pointer\n  Port 22222\n")
    snap = FileSnapshot([config])
    _edit_in_place(config, "22222", "22223")
    assert snap.changed()
