"""The tunnel keeper: real keeper processes on real unix sockets.

Most tests swap the CLI main for the hook module below (SEAMLESS_SERVICE_DAEMON_MAIN,
test-only), so a "run" can print its cwd/env, wait, raise or watch for cancellation.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from seamless_service import __version__
from seamless_service.client.keeper import client, framing
from seamless_service.client.transport.pool import TransportPool, default_pool
from tests.support.keeper import KeeperPlace, keeper_pids, raw_connect, thin_client, wait_for
from tests.support.other_user import unused_uid
from tests.support.processes import alive, gone



# -- helpers shared with test_entry.py -----------------------------------------------------


@pytest.fixture
def place(monkeypatch):
    p = KeeperPlace(monkeypatch, hooks=True)
    yield p
    p.cleanup()


def run(argv, cwd=None, env=None, start=True):
    out, err = io.StringIO(), io.StringIO()
    code = client.run(argv, stdout=out, stderr=err, cwd=cwd, env=env, start=start)
    return code, out.getvalue(), err.getvalue()


# -- framing -------------------------------------------------------------------------------


def test_frames_round_trip_and_end_cleanly():
    a, b = socket.socketpair()
    with a, b:
        framing.send(a, {"cmd": "ping", "n": [1, 2, {"x": b"\x00"}]})
        framing.send(a, {"second": "é"})
        assert framing.recv(b) == {"cmd": "ping", "n": [1, 2, {"x": b"\x00"}]}
        assert framing.recv(b) == {"second": "é"}
        a.shutdown(socket.SHUT_WR)
        assert framing.recv(b) is None


@pytest.mark.parametrize("data, error, message", [
    (struct.pack(">I", 10) + b"abc", framing.FrameTruncated, "after 3 of 10 bytes"),
    (b"\x00\x00", framing.FrameTruncated, "frame header"),
    (struct.pack(">I", framing.MAX_FRAME + 1), framing.FrameTooLarge, "exceeds the limit"),
    (struct.pack(">I", 3) + b"\xc1\xc1\xc1", framing.FrameError, "unknown tag 0xc1 at byte 0"),
    (struct.pack(">I", 5) + b"l\0\0\0\0", framing.FrameError, "frame is a list, not a map"),
    (struct.pack(">I", 5) + b"d\0\0\0\1", framing.FrameError, "runs past its end"),
    (struct.pack(">I", 10) + b"d\0\0\0\1i\0\0\0\0", framing.FrameError, "map key that is not a str"),
    (struct.pack(">I", 11) + b"d\0\0\0\1s\0\0\0\1\xff", framing.FrameError, "not UTF-8"),
    (struct.pack(">I", 6) + b"d\0\0\0\0N", framing.FrameError, "1 bytes after the map"),
    (struct.pack(">I", 13) + b"d\0\0\0\1s\0\0\0\1xf\x01", framing.FrameError, "runs past its end (byte 13 of 13)"),
    (struct.pack(">I", 14) + b"d\0\0\0\1s\0\0\0\1xf\x01z", framing.FrameError, "not a float at byte 11"),
    (struct.pack(">I", 0), framing.FrameError, "empty body"),
    # a str key with a str value (the decoder's fast path) that is broken
    (struct.pack(">I", 17) + b"d\0\0\0\1s\0\0\0\1xs\0\0\0\1\xff", framing.FrameError, "not UTF-8 at byte 16"),
    (struct.pack(">I", 18) + b"d\0\0\0\1s\0\0\0\1xs\0\0\0\5ab", framing.FrameError, "runs past its end (byte 16 of 18)"),
    (struct.pack(">I", 12) + b"d\0\0\0\1s\0\0\0\7xs", framing.FrameError, "runs past its end (byte 10 of 12)"),
])
def test_bad_frames_raise_one_line_errors(data, error, message):
    a, b = socket.socketpair()
    with a, b:
        a.sendall(data)
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(error) as info:
            framing.recv(b)
        assert message in str(info.value)
        assert "\n" not in str(info.value)


# -- pool ----------------------------------------------------------------------------------


@pytest.fixture
def clean_pool():
    pool = TransportPool()
    yield pool
    pool.close_all()


class Closable:
    def __init__(self):
        self.closed = 0

    def close(self):
        self.closed += 1

    def describe(self):
        return {"state": "open"}


def test_pool_creates_one_object_per_name_under_concurrency(clean_pool):
    made = []
    barrier = threading.Barrier(16)

    def factory():
        time.sleep(0.05)   # a slow connect widens any race
        obj = Closable()
        made.append(obj)
        return obj

    results = []

    def worker():
        barrier.wait()
        results.append(clean_pool.lease("host-a", factory))

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 1
    assert len(results) == 16 and all(r is made[0] for r in results)


def test_pool_creates_different_names_in_parallel(clean_pool):
    both = threading.Barrier(2, timeout=5)   # breaks if creation were serialised across names

    def factory():
        both.wait()
        return Closable()

    results = {}
    threads = [threading.Thread(target=lambda n=n: results.__setitem__(n, clean_pool.lease(n, factory)))
               for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(results) == {"a", "b"} and results["a"] is not results["b"]


def test_pool_drop_describe_close_all(clean_pool):
    pool = clean_pool

    def failing():
        raise OSError("unreachable")

    with pytest.raises(OSError):
        pool.lease("bad", failing)
    assert pool.peek("bad") is None          # a failed factory leaves nothing behind
    a = pool.lease("a", Closable)
    b = pool.lease("b", Closable)
    rows = pool.describe()
    assert [r["name"] for r in rows] == ["a", "b"]
    assert rows[0]["details"] == {"state": "open"} and rows[0]["created"] <= rows[0]["last_used"]
    assert pool.drop("a") is True and a.closed == 1
    assert pool.drop("a") is False
    assert pool.lease("a", Closable) is not a
    pool.close_all()
    assert b.closed == 1 and pool.names() == []
    assert pool.in_keeper is False and pool.cancelled() is False
    assert default_pool.in_keeper is False   # only the keeper's main() puts it in keeper mode


def test_pool_in_keeper_mode_shows_the_keepers_cancel_flag(clean_pool):
    """The flag is the keeper's: the pool only reads the event it was handed."""
    flag = threading.Event()
    clean_pool.keep_between_commands(flag)
    assert clean_pool.in_keeper and not clean_pool.cancelled()
    flag.set()
    assert clean_pool.cancelled() and clean_pool.wait_cancelled(5.0)
    flag.clear()
    assert clean_pool.wait_cancelled(0.01) is False


# -- the keeper ----------------------------------------------------------------------------


def test_started_on_demand_with_private_folder_and_socket(place):
    place.folder.mkdir(mode=0o755)
    os.chmod(place.folder, 0o755)           # too loose: must be tightened, not used as is
    assert client.ping() is None            # nothing runs, and ping does not start one
    info = client.ensure_keeper()
    assert info["ok"] and info["version"] == __version__ and alive(info["pid"])
    assert info["idle_timeout"] == 60
    assert stat.S_IMODE(place.folder.stat().st_mode) == 0o700
    assert stat.S_ISSOCK(place.sock.stat().st_mode)
    assert stat.S_IMODE(place.sock.stat().st_mode) == 0o600
    for name in ("daemon.log", "daemon.lock"):
        assert stat.S_IMODE((place.folder / name).stat().st_mode) == 0o600
    assert client.ensure_keeper()["pid"] == info["pid"]


def test_run_applies_cwd_env_argv_per_call_and_restores(place):
    one, two = place.work / "one", place.work / "two"
    one.mkdir()
    two.mkdir()
    code, out, err = run(["env"], cwd=str(one), env={**os.environ, "SSD_VAR": "first"})
    assert (code, err) == (0, "")
    seen = json.loads(out)
    assert seen == {"cwd": str(one), "var": "first", "argv": ["seamless-service", "env"],
                    "in_keeper": True, "tty": False}
    env = dict(os.environ)
    env.pop("SSD_VAR", None)
    code, out, _ = run(["env"], cwd=str(two), env=env)
    seen = json.loads(out)
    assert code == 0 and seen["cwd"] == str(two) and seen["var"] is None   # nothing leaked


def test_each_command_sees_exactly_its_callers_environment(place):
    # The keeper changes only what differs from its own environment and puts that back
    # after the command: added, removed and changed variables, and whatever the command
    # itself changed, must all be exact for the next caller.
    def environ(env):
        code, out, err = run(["environ"], env=env)
        assert (code, err) == (0, "")
        return json.loads(out)

    base = {k: v for k, v in os.environ.items() if not k.startswith("SSD_")}
    first = {**base, "SSD_A": "1", "SSD_B": "2", "SSD_EMPTY": ""}
    assert environ(first) == first
    second = {k: v for k, v in base.items() if k not in ("HOME", "PATH")}
    second.update({"SSD_A": "changed", "SSD_C": "new", "SSD_ODD": "caf\udce9 = x"})
    assert environ(second) == second                      # removed, changed and added
    assert run(["setenv", "SSD_SET=by the command", "-SSD_A", "-HOME", "PATH=/nowhere"], env=first)[0] == 0
    assert environ(first) == first                        # nothing of that command's changes
    assert environ(base) == base
    assert environ({}) == {}
    assert environ(first) == first


def test_exit_codes_exceptions_and_bytes_output(place):
    assert run(["exit", "7"]) == (7, "to stdout\n", "to stderr\n")
    code, out, err = run(["raise"])
    assert code == 1 and out == ""
    assert err == "seamless-service: internal error: RuntimeError: boom\n"
    assert run(["sysexit", "4"])[0] == 4
    assert run(["sysexit", "bad thing"]) == (1, "", "bad thing\n")
    assert run(["bytes"]) == (0, "héllo\n", "")
    code, _, err = run(["exit", "0"], cwd=str(place.work / "gone"))
    assert code == 1 and "cannot enter working directory" in err
    assert run(["exit", "0"])[0] == 0       # still serving after all that


def test_unstreamed_reply_carries_all_output(place):
    client.ensure_keeper()
    with raw_connect(place.sock) as s:
        framing.send(s, {"cmd": "run", "argv": ["exit", "5"], "cwd": "/", "env": {"A": "b"}})
        assert framing.recv(s) == {"ok": True, "exit": 5, "stdout": "to stdout\n", "stderr": "to stderr\n"}
    with raw_connect(place.sock) as s:
        framing.send(s, {"cmd": "run", "argv": ["big", str(300_000)], "cwd": "/", "env": {}, "stream": True})
        frames = []
        while True:
            frame = framing.recv(s)
            frames.append(frame)
            if "stream" not in frame:
                break
    assert frames[-1] == {"ok": True, "exit": 0}
    assert "".join(f["data"] for f in frames[:-1]) == "x" * 300_000
    assert len(frames) > 2                  # big output comes in several frames


def test_streamed_run_ends_with_its_output_then_the_exit_code(place):
    # The output still buffered at the end goes out with the final reply: stdout's, then
    # stderr's, then the exit code, and nothing after it.
    client.ensure_keeper()
    for argv, expected in ((["exit", "3"], [{"stream": "stdout", "data": "to stdout\n"},
                                            {"stream": "stderr", "data": "to stderr\n"}, {"ok": True, "exit": 3}]),
                           (["exit", "0"], [{"stream": "stdout", "data": "to stdout\n"},
                                            {"stream": "stderr", "data": "to stderr\n"}, {"ok": True, "exit": 0}]),
                           (["sysexit", "4"], [{"ok": True, "exit": 4}])):
        with raw_connect(place.sock) as s:
            framing.send(s, {"cmd": "run", "argv": argv, "cwd": "/", "env": {}, "stream": True})
            frames = []
            while (frame := framing.recv(s)) is not None:
                frames.append(frame)
        assert frames == expected
    with raw_connect(place.sock) as s:
        framing.send(s, {"cmd": "run", "argv": ["big", str(200_000)], "cwd": "/", "env": {}, "stream": True})
        frames = []
        while (frame := framing.recv(s)) is not None:
            frames.append(frame)
    assert frames[-1] == {"ok": True, "exit": 0} and all("stream" in f for f in frames[:-1])
    assert "".join(f["data"] for f in frames[:-1]) == "x" * 200_000


def test_malformed_requests_get_errors_and_keeper_keeps_serving(place):
    pid = client.ensure_keeper()["pid"]
    with raw_connect(place.sock) as s:
        s.sendall(struct.pack(">I", 4) + b"\xc1\xc1\xc1\xc1")
        reply = framing.recv(s)
        assert reply == {"ok": False, "error": "frame is malformed: unknown tag 0xc1 at byte 0"}
        s.sendall(struct.pack(">I", 5) + b"l\0\0\0\0")
        assert "not a map" in framing.recv(s)["error"]
        framing.send(s, {"cmd": "frobnicate"})
        assert framing.recv(s) == {"ok": False, "error": "unknown cmd 'frobnicate'"}
        framing.send(s, {"cmd": "ping"})      # same connection, still in sync
        assert framing.recv(s)["pid"] == pid
    for bad in ({"cmd": "run", "argv": "ps", "cwd": "/", "env": {}},
                {"cmd": "run", "argv": [], "cwd": "relative", "env": {}},
                {"cmd": "run", "argv": [], "cwd": "/", "env": {"A": 1}}):
        with raw_connect(place.sock) as s:
            framing.send(s, bad)
            reply = framing.recv(s)
            assert reply["ok"] is False and reply["error"].startswith("run: ")
    with raw_connect(place.sock) as s:
        s.sendall(struct.pack(">I", 0xFFFFFFFF))
        assert "exceeds the limit" in framing.recv(s)["error"]
        assert framing.recv(s) is None        # cannot resync: connection closed
    with raw_connect(place.sock) as s:
        s.sendall(struct.pack(">I", 100) + b"\x81")   # half a frame, then gone
    assert client.ping()["pid"] == pid
    assert run(["exit", "0"])[0] == 0


def test_version_mismatch_is_refused_and_client_replaces_keeper(place, monkeypatch):
    pid = client.ensure_keeper()["pid"]
    with raw_connect(place.sock) as s:
        framing.send(s, {"cmd": "run", "argv": [], "cwd": "/", "env": {}, "version": "0.0.0"})
        reply = framing.recv(s)
    assert reply["ok"] is False and reply["code"] == "version"
    monkeypatch.setattr(client, "__version__", "0.0.0")
    # Every keeper it starts runs the real version, so this client can never be served:
    # it must give up (and let the caller run in-process) rather than loop forever.
    with pytest.raises(client.KeeperUnavailable):
        run(["exit", "0"])
    assert wait_for(lambda: gone(pid))


def test_a_client_of_the_same_installation_through_a_symlink_is_served(place, tmp_path):
    # The thin client sends its package folder as imported, unresolved; the keeper resolves
    # it when it differs from its own.
    from seamless_service.client.keeper import INSTALL_DIR

    pid = client.ensure_keeper()["pid"]
    link = tmp_path / "link"
    link.symlink_to(INSTALL_DIR)
    request = {"cmd": "run", "argv": ["exit", "5"], "cwd": "/", "env": {}, "version": __version__}
    for install, served in ((str(link), True), (INSTALL_DIR, True), (str(tmp_path), False), ("/nowhere", False)):
        with raw_connect(place.sock) as s:
            framing.send(s, {**request, "install": install})
            reply = framing.recv(s)
        if served:
            assert reply == {"ok": True, "exit": 5, "stdout": "to stdout\n", "stderr": "to stderr\n"}
        else:
            assert reply["ok"] is False and reply["code"] == "version" and install in reply["error"]
    assert client.ping()["pid"] == pid


def test_concurrent_clients_each_see_their_own_cwd_and_env(place):
    client.ensure_keeper()
    dirs = []
    for i in range(8):
        d = place.work / f"c{i}"
        d.mkdir()
        dirs.append(d)
    results = {}

    def one(i):
        results[i] = run(["env"], cwd=str(dirs[i]), env={**os.environ, "SSD_VAR": str(i)})

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == list(range(8))
    for i, (code, out, _) in results.items():
        seen = json.loads(out)
        assert code == 0 and seen["cwd"] == str(dirs[i]) and seen["var"] == str(i)


def test_ping_and_status_answer_while_a_command_runs(place):
    gate = place.work / "gate"
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("r", run(["wait-file", str(gate)])))
    t.start()
    assert wait_for(lambda: (client.keeper_status() or {}).get("current") == ["wait-file", str(gate)])
    assert client.ping()["ok"]
    gate.touch()
    t.join(20)
    assert box["r"] == (0, "first\nsecond\n", "")


def test_status_lists_pool_entries_and_stop_closes_them(place):
    marker = place.work / "closed"
    assert run(["pool", "hostA", str(marker)])[0] == 0
    status = client.keeper_status()
    assert [e["name"] for e in status["pool"]] == ["hostA"]
    assert status["pool"][0]["details"] == {"kind": "thing"}
    text = client.format_status(status)
    assert f"pid {status['pid']}" in text and "hostA" in text and "kind=thing" in text
    info = client.keeper_stop()
    assert info["pid"] == status["pid"]
    assert not place.sock.exists()
    assert marker.read_text() == "closed"
    assert wait_for(lambda: gone(status["pid"]))
    assert client.keeper_stop() is None and client.keeper_status() is None


def test_sigterm_exits_cleanly_removing_socket(place):
    marker = place.work / "closed"
    run(["pool", "h", str(marker)])
    pid = place.pid()
    os.kill(pid, signal.SIGTERM)
    assert wait_for(lambda: gone(pid))
    assert not place.sock.exists() and marker.read_text() == "closed"
    assert "exiting: SIGTERM" in place.log.read_text()


def test_idle_exit_removes_socket_but_a_long_command_counts_as_activity(monkeypatch):
    place = KeeperPlace(monkeypatch, hooks=True, idle=0.5)
    try:
        pid = client.ensure_keeper()["pid"]
        gate = place.work / "gate"
        threading.Timer(1.5, gate.touch).start()     # the command outlives the idle time
        assert run(["wait-file", str(gate)]) == (0, "first\nsecond\n", "")
        assert wait_for(lambda: not place.sock.exists() and gone(pid))
        assert "exiting: idle" in place.log.read_text()
    finally:
        place.cleanup()


def test_killed_keeper_leaves_stale_socket_that_is_replaced(place):
    pid = client.ensure_keeper()["pid"]
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: gone(pid))
    assert place.sock.exists()                      # stale: nobody listens
    assert client.ping() is None
    assert run(["exit", "0"])[0] == 0               # starts a fresh keeper
    new = place.pid()
    assert new != pid and alive(new)


def test_simultaneous_starts_leave_one_keeper(place):
    procs = [subprocess.Popen([sys.executable, "-m", "seamless_service.client.keeper.server"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in range(3)]
    assert wait_for(lambda: client.ping() is not None)
    winner = place.pid()
    losers = [p for p in procs if p.pid != winner]
    for p in losers:
        assert p.wait(15) == 0                      # "already running" is not an error
    assert [p.pid for p in procs].count(winner) == 1
    assert keeper_pids(place.folder) == [winner]
    # A later start while it runs also leaves it alone.
    late = subprocess.run([sys.executable, "-m", "seamless_service.client.keeper.server"],
                          capture_output=True, text=True, timeout=15)
    assert late.returncode == 0 and place.pid() == winner
    assert "another tunnel keeper is already running" in late.stderr


def _connect_as(uid: int, path: Path) -> str:
    """In a forked child running as `uid`: connect and ping; how it went, as a word."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:   # child: no pytest machinery here, just syscalls, then _exit
        result = "?"
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)
            try:
                s.connect(str(path))
                s.sendall(framing.encode({"cmd": "ping"}))
                result = "closed" if s.recv(100) == b"" else "answered"
            except PermissionError:
                result = "denied"
            except (ConnectionResetError, BrokenPipeError):   # dropped before or while we wrote
                result = "closed"
        except BaseException as exc:
            result = f"error {exc!r}"
        os.write(w, result.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        result = f.read()
    os.waitpid(pid, 0)
    return result


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another uid")
def test_other_uid_is_kept_out(place):
    pid = client.ensure_keeper()["pid"]
    uid = unused_uid()
    os.chmod(place.root, 0o711)          # the test's temp root: let the stranger reach d/
    # First wall: the 0700 keeper folder.
    assert _connect_as(uid, place.sock) == "denied"
    # Second wall: with folder and socket opened up, SO_PEERCRED still drops the stranger.
    os.chmod(place.folder, 0o711)
    os.chmod(place.sock, 0o666)
    try:
        assert _connect_as(uid, place.sock) == "closed"
    finally:
        os.chmod(place.root, 0o700)
        os.chmod(place.folder, 0o700)
        os.chmod(place.sock, 0o600)
    assert f"refused a connection from uid {uid}" in place.log.read_text()
    assert client.ping()["pid"] == pid


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")
def test_folder_owned_by_someone_else_is_refused(place):
    place.folder.mkdir(mode=0o700)
    os.chown(place.folder, unused_uid(), -1)
    with pytest.raises(client.KeeperUnavailable) as info:
        client.ensure_keeper()
    assert "owned by uid" in str(info.value) and "\n" not in str(info.value)
    assert not place.sock.exists()


def test_output_streams_while_the_command_runs(place):
    client.ensure_keeper()
    gate = place.work / "gate"
    proc = thin_client("wait-file", str(gate))
    try:
        assert proc.stdout.readline() == "first\n"      # before the command finished
        assert proc.poll() is None
        gate.touch()
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert (proc.returncode, out, err) == (0, "second\n", "")


@pytest.mark.parametrize("mode, marker_text", [("coop", "cancelled"), ("spin", "interrupted")])
def test_ctrl_c_on_thin_client_cancels_command_and_frees_the_keeper(place, mode, marker_text):
    client.ensure_keeper()
    started, marker = place.work / "started", place.work / "marker"
    proc = thin_client(mode, str(started), str(marker))
    try:
        assert wait_for(started.exists, timeout=15)
        proc.send_signal(signal.SIGINT)
        proc.wait(10)
    finally:
        proc.kill()
    assert proc.returncode == 130
    # coop: saw pool.cancelled(); spin: got the KeyboardInterrupt the keeper injected.
    assert wait_for(lambda: marker.exists(), timeout=10)
    assert marker.read_text() == marker_text
    assert run(["exit", "0"])[0] == 0                # the run lock was released
    assert client.keeper_status()["current"] is None
