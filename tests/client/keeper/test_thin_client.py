"""The thin client's warm path (issue 13): the `seamless-service` command as installed (a
script file, not a console_scripts wrapper), what it imports when a keeper answers
(builtin modules and ours only), and the frames it exchanges with the keeper (the keeper's
side of malformed frames is in test_keeper.py)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seamless_service.client.cli.toplevel_help import TOP_HELP
from seamless_service.client.keeper import client, framing
from seamless_service.deploy import wheels
from tests.support.keeper import KeeperPlace
from tests.support.packaging import ROOT
from tests.support.services import VENV_BIN

LAUNCHER = VENV_BIN / "seamless-service"

# What a warm command may import beyond what the interpreter imports to start: our own
# modules on the path, and the C socket module. Everything else costs milliseconds.
WARM_PATH = {
    "_socket", "seamless_service", "seamless_service.client", "seamless_service.client.entry",
    "seamless_service.client.errors", "seamless_service.client.keeper",
    "seamless_service.client.keeper.client", "seamless_service.client.keeper.framing",
}


@pytest.fixture
def place(monkeypatch):
    p = KeeperPlace(monkeypatch, hooks=True)
    yield p
    p.cleanup()


def imported_modules(args: list[str]) -> tuple[subprocess.CompletedProcess, list[str]]:
    """The process's result and the modules `-X importtime` saw it import, in order."""
    result = subprocess.run([sys.executable, "-X", "importtime", *args], capture_output=True,
                            text=True, timeout=60)
    names = [line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines()
             if line.startswith("import time:") and not line.endswith("imported package")]
    return result, names


def test_a_warm_command_imports_only_builtin_modules_and_ours(place):
    client.ensure_keeper()
    _, startup = imported_modules(["-c", "pass"])
    result, names = imported_modules([str(LAUNCHER), "exit", "3"])
    assert result.returncode == 3 and result.stdout == "to stdout\n"   # it ran in the keeper
    extra = [name for name in names if name not in startup]
    assert "seamless_service.client.keeper.client" in extra           # the list is seen at all
    for costly in ("re", "enum", "msgpack", "datetime", "pathlib", "argparse", "typing",
                   "struct", "__future__", "socket", "json"):
        assert costly not in extra
    assert set(extra) <= WARM_PATH, sorted(set(extra) - WARM_PATH)


def test_the_installed_command_is_the_script_file_and_prints_the_help():
    text = LAUNCHER.read_text()
    assert text.splitlines()[0].startswith("#!/") and "python" in text.splitlines()[0]
    source = (ROOT / "seamless_service" / "scripts" / "seamless-service").read_text()
    assert text.partition("\n")[2] == source.partition("\n")[2]
    result = subprocess.run([str(LAUNCHER), "--help"], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (0, TOP_HELP, "")
    module = subprocess.run([sys.executable, "-m", "seamless_service", "--help"], capture_output=True,
                            text=True, timeout=60)
    assert module.returncode == 0 and module.stdout.startswith("usage: seamless-service")


def test_the_command_does_not_import_from_its_own_folder(tmp_path):
    # The script drops its folder (a venv's bin) from sys.path before importing: a
    # `seamless_service` there is never found. With -P that entry is not there to drop.
    folder = tmp_path / "bin"
    (folder / "seamless_service").mkdir(parents=True)
    (folder / "seamless_service" / "__init__.py").write_text("raise SystemExit('the decoy was imported')\n")
    script = folder / "seamless-service"
    script.write_text((ROOT / "seamless_service" / "scripts" / "seamless-service").read_text())
    for flags in ([], ["-P"]):
        result = subprocess.run([sys.executable, *flags, str(script), "--help"], capture_output=True, text=True,
                                timeout=60)
        assert (result.returncode, result.stdout, result.stderr) == (0, TOP_HELP, "")


def test_the_wheel_installs_the_command_as_a_script_not_an_entry_point(tmp_path):
    wheel = wheels.build_wheel(ROOT, tmp_path)
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        script = next(n for n in names if n.endswith(".data/scripts/seamless-service"))
        assert zf.read(script).startswith(b"#!python\n")   # the installer binds it to its python
        entry_points = zf.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "seamless-service-demo =" in entry_points and "seamless-service =" not in entry_points
    assert not [n for n in names if n.startswith("seamless_service/scripts/")]   # no package data


def test_a_repacked_wheel_keeps_the_script(tmp_path):
    wheel = wheels.build_wheel(ROOT, tmp_path / "built")
    target = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(target)], check=True, timeout=120)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(target / "bin" / "python"), "install",
                    "-q", "--no-deps", "--disable-pip-version-check", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    installed = target / "bin" / "seamless-service"
    assert installed.read_text().startswith(f"#!{target / 'bin' / 'python'}")
    # The installed wheel's command runs on its own (--help needs nothing but the package).
    result = subprocess.run([str(installed), "--help"], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (0, TOP_HELP)
    site = next((target / "lib").glob("python*/site-packages"))
    (dist,) = [d for d in importlib.metadata.distributions(path=[str(site)])
               if d.metadata["Name"] == "seamless-service"]
    with zipfile.ZipFile(wheels.repack_distribution(dist, tmp_path / "out")) as zf:
        script = next(n for n in zf.namelist() if n.endswith(".data/scripts/seamless-service"))
        assert zf.read(script) == b"#!python\n" + installed.read_bytes().partition(b"\n")[2]


def test_an_environment_that_is_not_utf8_reaches_the_keeper_unchanged(place):
    client.ensure_keeper()
    env = {**os.environ, "SSD_VAR": "caf\udce9"}   # os.environ's form of the bytes b"caf\xe9"
    result = subprocess.run([os.fsencode(LAUNCHER), b"env"], env={os.fsencode(k): os.fsencode(v) for k, v in env.items()},
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["var"] == "caf\udce9"


# -- how the command ends: os._exit after a keeper's command, flushed first ---------------

# launch() as the script calls it, in an interpreter with an atexit handler: the handler
# runs on a normal exit and not after os._exit, so the file tells which way it ended.
ATEXIT_PROBE = """
import atexit, sys
marker = sys.argv[1]
atexit.register(lambda: open(marker, "w").write("normal exit"))
sys.argv = ["seamless-service", *sys.argv[2:]]
from seamless_service.client.entry import launch
launch()
"""


def buffered_env(**extra: str) -> dict[str, str]:
    """Our environment without PYTHONUNBUFFERED (a CI runner may set it): stdout to a file or
    a pipe is then block-buffered, as for a user, and output left in the buffer would be
    lost by an exit that does not flush."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env.update(extra)
    return env


def probe(marker: Path, *args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", ATEXIT_PROBE, str(marker), *args], capture_output=True,
                          text=True, timeout=60, env=buffered_env(**(env or {})), **kw)


def test_after_a_keeper_command_the_process_ends_at_once_with_its_exit_code(place, tmp_path):
    client.ensure_keeper()
    marker = tmp_path / "atexit"
    result = probe(marker, "exit", "3", cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (3, "to stdout\n", "to stderr\n")
    assert not marker.exists()        # no interpreter finalization: os._exit
    top = probe(marker, "--help", cwd=tmp_path)     # a constant printed here, no keeper asked
    assert (top.returncode, top.stdout) == (0, TOP_HELP) and not marker.exists()


def test_a_command_run_in_this_process_exits_normally(place, tmp_path):
    # The fallback runs the full CLI here (threads, SSH connections, atexit handlers of
    # the libraries it imports): the interpreter must finish those as usual.
    marker = tmp_path / "atexit"
    for args, env in ((["completion", "bash"], None),                           # always here
                      (["ps", "--help"], {"SEAMLESS_SERVICE_NO_DAEMON": "1"})):  # told to
        marker.unlink(missing_ok=True)
        result = probe(marker, *args, env=env, cwd=tmp_path)
        assert result.returncode == 0 and result.stdout.strip(), result.stderr
        assert marker.read_text() == "normal exit"


@pytest.mark.parametrize("args, code, expected", [
    (["exit", "3"], 3, "to stdout\n"),                # through the keeper
    (["big", "300000"], 0, "x" * 300000),             # several frames
    (["--help"], 0, TOP_HELP),                         # written here into the file's buffer
])
def test_output_to_a_file_is_complete_and_the_exit_code_exact(place, tmp_path, args, code, expected):
    client.ensure_keeper()
    out = tmp_path / "out.txt"
    with open(out, "w") as f:
        result = subprocess.run([str(LAUNCHER), *args], stdout=f, stderr=subprocess.PIPE, text=True, timeout=60,
                                env=buffered_env())
    assert result.returncode == code, result.stderr
    assert out.read_text() == expected


def test_output_to_a_pipe_is_complete(place):
    client.ensure_keeper()
    for args, expected in ((["big", "300000"], "x" * 300000), (["--help"], TOP_HELP)):
        result = subprocess.run([str(LAUNCHER), *args], capture_output=True, text=True, timeout=60,
                                env=buffered_env())
        assert (result.returncode, result.stdout) == (0, expected)


@pytest.mark.parametrize("args", [["exit", "3"], ["big", "300000"], ["--help"], ["tunnel", "status"]])
def test_a_reader_that_went_away_ends_the_command_quietly(place, args):
    # `seamless-service ... | head` once head has exited: exit 0, no traceback, no
    # "Exception ignored" from a flush at exit.
    client.ensure_keeper()
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run([str(LAUNCHER), *args], stdout=write_end, stderr=subprocess.PIPE, text=True,
                                timeout=60, env=buffered_env())
    finally:
        os.close(write_end)
    assert result.returncode == 0
    assert "Error" not in result.stderr and "Exception" not in result.stderr


# -- frames ------------------------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers(min_value=-(1 << 600), max_value=1 << 600)
           | st.floats(allow_nan=False) | st.text() | st.binary()
           | st.text(alphabet=st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF)))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                      max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(), values, max_size=6))
def test_any_map_of_the_supported_types_round_trips(obj):
    data = framing.encode(obj)
    assert int.from_bytes(data[:4], "big") == len(data) - 4
    assert framing.decode(data[4:]) == obj


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(), st.text(), min_size=1, max_size=6), st.data())
def test_a_broken_environment_frame_decodes_to_a_map_or_a_frame_error(env, data):
    # str keys with str values take the decoder's fast path: cut or change one byte of
    # such a frame and it still decodes to a map or fails with one line
    body = bytearray(framing.encode({"env": env, "cwd": "/"})[4:])
    at = data.draw(st.integers(0, len(body) - 1))
    if data.draw(st.booleans()):
        del body[at:]
    else:
        body[at] = data.draw(st.integers(0, 255))
    try:
        obj = framing.decode(bytes(body))
    except framing.FrameError as exc:
        assert "\n" not in str(exc)
    else:
        assert isinstance(obj, dict)


def test_special_values_round_trip_exactly():
    obj = {"nan": float("nan"), "inf": float("-inf"), "tiny": 5e-324, "t": (1, [2]), "neg": -(1 << 64)}
    back = framing.decode(framing.encode(obj)[4:])
    assert back["nan"] != back["nan"] and back["inf"] == float("-inf") and back["tiny"] == 5e-324
    assert back["t"] == [1, [2]] and back["neg"] == -(1 << 64)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_decode_to_a_map_or_a_frame_error(body):
    try:
        obj = framing.decode(body)
    except framing.FrameError as exc:
        assert "\n" not in str(exc)
    else:
        assert isinstance(obj, dict)


def test_nesting_is_limited_both_ways():
    deep: dict = {}
    inner = deep
    for _ in range(framing.MAX_DEPTH + 1):
        inner["x"] = {}
        inner = inner["x"]
    with pytest.raises(ValueError, match="nested deeper"):
        framing.encode(deep)
    body = b"d\0\0\0\1s\0\0\0\1x" + b"l\0\0\0\1" * (framing.MAX_DEPTH + 5) + b"N"
    with pytest.raises(framing.FrameError, match="nested deeper than 32 levels"):
        framing.decode(body)


@pytest.mark.parametrize("obj, message", [
    ({"x": object()}, "cannot encode a object"),
    ({1: "x"}, "keys must be str"),
    ({"x": 1 << 3000}, "more than 255 bytes"),
])
def test_what_cannot_be_sent_is_refused_before_sending(obj, message):
    with pytest.raises((TypeError, ValueError), match=message):
        framing.encode(obj)


# -- a keeper of an earlier seamless-service (upgrade in place) --------------------------

# What a keeper started before this framing does on the wire (it spoke length-prefixed
# msgpack and holds the same lock): a frame it cannot decode gets a msgpack refusal and it
# keeps serving; {"cmd": "stop"} gets {"ok": true, "pid"} and it exits, removing its socket.
EARLIER_KEEPER = '''
import fcntl, os, socket, sys
import msgpack
folder = sys.argv[1]
lock = os.open(os.path.join(folder, "daemon.lock"), os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
path = os.path.join(folder, "daemon.sock")
server = socket.socket(socket.AF_UNIX)
server.bind(path)
server.listen()
print("listening", flush=True)
def recv(conn, n):
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data
while True:
    conn, _ = server.accept()
    try:
        body = recv(conn, int.from_bytes(recv(conn, 4), "big"))
    except EOFError:
        conn.close()
        continue
    try:
        request = msgpack.unpackb(body, raw=False)
        assert isinstance(request, dict)
    except Exception:
        reply = {"ok": False, "error": "frame is not valid msgpack (ExtraData)"}
        request = {}
    else:
        reply = {"ok": True, "pid": os.getpid()} if request.get("cmd") == "stop" else {"ok": False, "error": "?"}
    out = msgpack.packb(reply, use_bin_type=True)
    conn.sendall(len(out).to_bytes(4, "big") + out)
    conn.close()
    if request.get("cmd") == "stop":
        os.unlink(path)
        sys.exit(0)
'''


@pytest.fixture
def earlier_keeper(place):
    place.folder.mkdir(mode=0o700, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", EARLIER_KEEPER, str(place.folder)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "listening\n"
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


def test_a_keeper_left_by_an_earlier_version_is_replaced_and_the_command_runs(place, earlier_keeper):
    result = subprocess.run([str(LAUNCHER), "exit", "3"], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (3, "to stdout\n", "to stderr\n")
    assert earlier_keeper.wait(timeout=10) == 0            # stopped through its own framing
    assert client.ping()["pid"] != earlier_keeper.pid      # a keeper of this version answers


def test_tunnel_status_with_an_earlier_keeper_replaces_it(place, earlier_keeper):
    assert client.ping(start=True)["version"]
    assert earlier_keeper.wait(timeout=10) == 0
