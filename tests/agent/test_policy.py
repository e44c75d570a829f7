"""The agent's path policy decides exactly as the installed rhl-guard (plus the helpers' own checks).

Every case runs the real `rhl-guard <policy flags>` with SSH_ORIGINAL_COMMAND set to
`rhl-clear <path>` and `rhl-ps-persistent <path>`, in an environment whose HOME is a
temporary directory. The guard's console script is copied next to two stub "helpers"
that only print a token, so an accepted command shows that token instead of touching
anything (the guard execs the sibling of its own absolute argv[0]). The helpers' own
`validate_clearable_path` (the second line of defence on the guard path) is the real,
installed function, called in-process.

The guard is asked ~650 times (a few seconds). A mutation run (tools/mutate.py) re-runs
these tests for every mutant, so it sets SEAMLESS_GUARD_ANSWERS to a JSON file in its temp
copy: the first run records the guard's answers there, keyed by the installed
remote-http-launcher version, and later runs read them. Without that variable (the normal
suite, CI) the real guard is asked every time.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from seamless_service.agent.policy import (
    PathPolicy,
    check_path,
    default_policy,
    parse_policy,
)
from seamless_service.protocol import ErrorCode, ProtocolError
from ssh_guard._state import validate_clearable_path

ACCEPTED = "GUARD-ACCEPTED"
GUARD = Path(sys.executable).parent / "rhl-guard"
HELPERS = ("rhl-clear", "rhl-ps-persistent")
CUSTOM = ".rhl-clearable"

# (mode name, guard flags builder, agent spec builder)
MODES = {
    "seamless": (lambda w: ["--clear-policy", "seamless"], lambda w: "seamless"),
    "marker": (lambda w: ["--clear-policy", f"marker:{CUSTOM}"], lambda w: f"marker:{CUSTOM}"),
    "permissive": (lambda w: ["--permissive-paths"], lambda w: "permissive"),
    "data_roots": (lambda w: ["--data-roots", str(w.roots_file)], lambda w: f"data-roots:{w.roots_file}"),
}

# {T}: the test tree; {H}: $HOME (inside {T}). Absolute and relative, ~, .., dot
# segments, system roots, $HOME and ancestors, symlinks in and out of roots, markers.
PATHS = [
    "{T}/data/buf", "{T}/data/buf/", "{T}/data/./buf", "{T}/data/buf/STAGE-x", "{T}/data/db",
    "{T}/data/plain", "{T}/data/custom", "{T}/data/dbdir-marker", "{T}/data/linkmarker",
    "{T}/data/dangling", "{T}/data/with space", "{T}/data/ünï", "{T}/data/file.txt",
    "{T}/data/missing", "{T}/data/missing/deeper", "{T}/data", "{T}/data/link_in_root",
    "{T}/data/link_out", "{T}/data/link_etc", "{T}/data/link_dot", "{T}/data/link_home",
    "{T}/data/loop1", "{T}/data/link_root", "{T}/outside/buf", "{T}/outside/link_into_root",
    "{T}/.hidden/buf", "{T}/data/../data/buf", "{T}/data/buf/..", "{T}/data-other/buf",
    "{T}/rootlink/buf", "{T}/linked-root/buf", "{T}/data/.cache", "{T}/data/buf/.HASHSERVER_PREFIX",
    "{T}", "{H}", "{H}/", "{H}/..", "~", "~/", "~/data/buf", "~/data/plain", "~/.ssh",
    "~/data/../data/buf", "~nosuchuser-seamless/buf", "~root", "data/buf", "buf", ".", "..", "",
    "/", "/etc", "/etc/", "//etc", "/usr", "/var", "/var/tmp", "/etc/ssh", "/bin", "/lib",
    "/usr/bin", "/proc", "/tmp", "/home", "/opt/", "/tmp/../etc", "/root",
    "/nonexistent-seamless-xyz/abc", "/boot", "/sys", "/run", "/sbin", "/lib64", "/opt", "/proc/",
]

# Every system root the guard and the helpers refuse, written out: dropping one from the
# agent's table must fail a test (each is refused raw, and again once resolved).
SYSTEM_ROOTS = ["/", "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib64", "/boot", "/sys", "/proc",
                "/run", "/var", "/opt"]


class World:
    def __init__(self, top: Path):
        self.top = top
        self.home = top / "home"
        self.bin = top / "guardbin"

    def path(self, template: str) -> str:
        return template.replace("{T}", str(self.top)).replace("{H}", str(self.home))

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["HOME"] = str(self.home)
        env.pop("REMOTE_HTTP_LAUNCHER_DIR", None)
        return env


def _marker(directory: Path, name: str = ".HASHSERVER_PREFIX") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text("")
    return directory


def _build(top: Path) -> World:
    w = World(top)
    data = top / "data"
    _marker(w.home / "data" / "buf")
    (w.home / "data" / "plain").mkdir(parents=True)
    _marker(data / "buf")
    _marker(data / "buf" / "STAGE-x")
    _marker(data / "db", "seamless.db")
    (data / "plain").mkdir()
    _marker(data / "custom", CUSTOM)
    (data / "dbdir-marker" / "seamless.db").mkdir(parents=True)      # a directory is no marker
    (data / "linkmarker").mkdir()
    (data / "linkmarker" / "seamless.db").symlink_to(data / "db" / "seamless.db")  # followed
    (data / "dangling").mkdir()
    (data / "dangling" / ".HASHSERVER_PREFIX").symlink_to(top / "nowhere")
    _marker(data / "with space")
    _marker(data / "ünï")
    (data / "file.txt").write_text("x")
    (data / "link_in_root").symlink_to(data / "buf")
    _marker(top / "outside" / "buf")
    (data / "link_out").symlink_to(top / "outside" / "buf")
    (data / "link_etc").symlink_to("/etc")
    _marker(top / ".hidden" / "buf")
    (data / "link_dot").symlink_to(top / ".hidden" / "buf")
    (data / "link_home").symlink_to(w.home)
    (data / "link_root").symlink_to("/")
    (data / "loop1").symlink_to(data / "loop2")
    (data / "loop2").symlink_to(data / "loop1")
    (top / "outside" / "link_into_root").symlink_to(data / "buf")
    _marker(top / "data-other" / "buf")
    _marker(top / "linked-root" / "buf")
    (top / "rootlink").symlink_to(top / "linked-root")
    w.roots_file = top / "roots.txt"
    w.roots_file.write_text(f"# data roots\n\n   {data}   \n~/data\n{top / 'rootlink'}\n")
    # the installed guard script, beside stub helpers that only say they were reached
    w.bin.mkdir()
    shutil.copy2(GUARD, w.bin / "rhl-guard")
    for helper in HELPERS:
        stub = w.bin / helper
        stub.write_text(f"#!/bin/sh\necho {ACCEPTED}\n")
        stub.chmod(0o755)
    return w


def run_guard(w: World, flags: list[str], command: str) -> tuple[bool, str]:
    """(accepted, rejection message) from the real rhl-guard."""
    env = w.env()
    env["SSH_ORIGINAL_COMMAND"] = command
    proc = subprocess.run([str(w.bin / "rhl-guard"), *flags], env=env, cwd=w.top,
                          capture_output=True, text=True, timeout=60)
    if proc.returncode == 0 and proc.stdout.strip() == ACCEPTED:
        return True, ""
    assert proc.returncode == 1, (command, proc.returncode, proc.stderr)
    prefix = "rhl-guard: rejected: "
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith(prefix)]
    if lines:
        return False, lines[0][len(prefix):]
    # ~unknown-user and symlink loops crash the guard (RuntimeError): a refusal as well
    assert "Traceback" in proc.stderr and "RuntimeError" in proc.stderr, proc.stderr
    return False, "<guard crashed>"


def helper_accepts(path: str) -> bool:
    """The helpers' own validation (rhl-clear, rhl-ps-persistent), the installed function."""
    try:
        validate_clearable_path(str(Path(path).expanduser()))
    except (SystemExit, RuntimeError):
        return False
    return True


def ask_guard(w: World) -> dict[tuple[str, str, str], tuple[bool, str]]:
    """(mode, helper, path template) -> the real guard's answer."""
    jobs = {}
    with ThreadPoolExecutor(max_workers=4) as pool:
        for mode, (flags, _) in MODES.items():
            for helper in HELPERS:
                for template in PATHS:
                    command = f"{helper} {shlex.quote(w.path(template))}"
                    jobs[(mode, helper, template)] = pool.submit(run_guard, w, flags(w), command)
    return {k: f.result() for k, f in jobs.items()}


RECORDED = os.environ.get("SEAMLESS_GUARD_ANSWERS")  # set by tools/mutate.py only (module doc)


def _templated(w: World, text: str) -> str:
    return text.replace(str(w.home), "{H}").replace(str(w.top), "{T}")


def recorded_guard(w: World) -> dict[tuple[str, str, str], tuple[bool, str]]:
    """ask_guard's answers, recorded to RECORDED once per remote-http-launcher version (the
    messages with the test tree's paths as {T}/{H}, which differ from run to run)."""
    version = importlib.metadata.version("remote-http-launcher")
    file = Path(RECORDED)
    try:
        stored = json.loads(file.read_text())
    except (OSError, ValueError):
        stored = {}
    answers = stored.get("answers", {}) if stored.get("version") == version else {}
    wanted = ["|".join((mode, helper, t)) for mode in MODES for helper in HELPERS for t in PATHS]
    if not all(k in answers for k in wanted):
        answers = {"|".join(k): [ok, _templated(w, msg)] for k, (ok, msg) in ask_guard(w).items()}
        file.write_text(json.dumps({"version": version, "answers": answers}))
    return {tuple(k.split("|", 2)): (ok, w.path(msg)) for k, (ok, msg) in answers.items()}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = _build(tmp_path_factory.mktemp("policy"))
    w.guard = recorded_guard(w) if RECORDED else ask_guard(w)
    return w


@pytest.fixture
def home(world, monkeypatch):
    monkeypatch.setenv("HOME", str(world.home))
    return world.home


def agent_decision(w: World, mode: str, template: str, kind: str) -> tuple[bool, str]:
    policy = parse_policy(MODES[mode][1](w))
    try:
        check_path(policy, w.path(template), kind)
    except ProtocolError as exc:
        assert exc.code == ErrorCode.POLICY_REFUSED
        return False, exc.message
    return True, ""


def test_table_is_large_enough():
    assert len(PATHS) >= 50
    assert len(set(PATHS)) == len(PATHS)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("template", PATHS)
def test_clear_kind_equals_guard(world, home, mode, template):
    w = world
    by_clear = w.guard[(mode, "rhl-clear", template)]
    by_ps = w.guard[(mode, "rhl-ps-persistent", template)]
    assert by_clear == by_ps  # the guard treats both helpers' paths alike ("clear" kind)
    guard_ok, guard_msg = by_clear
    end_to_end = guard_ok and helper_accepts(w.path(template))
    ok, msg = agent_decision(w, mode, template, "clear")
    assert ok == end_to_end, (template, mode, guard_msg, msg)
    if not guard_ok and guard_msg != "<guard crashed>":
        assert msg == guard_msg
    if guard_ok and not end_to_end:
        # only a raw system root the guard resolved away (/bin -> /usr/bin) gets here
        assert msg.startswith("refusing system-root directory"), msg


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("template", PATHS)
def test_persistent_kind_equals_guard_except_marker_walks(world, home, mode, template):
    w = world
    guard_ok, guard_msg = w.guard[(mode, "rhl-ps-persistent", template)]
    end_to_end = guard_ok and helper_accepts(w.path(template))
    ok, msg = agent_decision(w, mode, template, "persistent")
    if guard_msg.startswith("path does not contain required marker file"):
        # deliberate (policy.py): absent paths and marker-less directories may be walked
        # (the helpers' own checks still apply: /bin is refused although /usr/bin is a dir)
        resolved = Path(w.path(template)).expanduser().resolve()
        walkable = not resolved.exists() or resolved.is_dir()
        assert ok == (walkable and helper_accepts(w.path(template))), (template, mode, msg)
        if not ok:
            assert msg == guard_msg if not walkable else msg.startswith("refusing system-root"), msg
        return
    assert ok == end_to_end, (template, mode, guard_msg, msg)
    if not guard_ok and guard_msg != "<guard crashed>":
        assert msg == guard_msg


def test_guard_table_covers_both_outcomes_in_every_mode(world):
    for mode in MODES:
        outcomes = {world.guard[(mode, "rhl-clear", t)][0] for t in PATHS}
        assert outcomes == {True, False}, mode


def test_helper_checks_are_implied(world, home):
    """Whatever the helpers' own validate_clearable_path refuses, the agent refuses first."""
    permissive = parse_policy("permissive")
    for template in PATHS:
        path = world.path(template)
        if not helper_accepts(path):
            with pytest.raises(ProtocolError) as info:
                check_path(permissive, path, "clear")
            assert info.value.code == ErrorCode.POLICY_REFUSED


def test_check_path_returns_resolved_path(world, home):
    policy = parse_policy("seamless")
    data = world.top / "data"
    assert check_path(policy, str(data / "link_in_root"), "clear") == (data / "buf").resolve()
    assert check_path(policy, "~/data/buf", "clear") == (world.home / "data" / "buf").resolve()
    assert check_path(parse_policy("permissive"), str(data / "missing"), "clear") == data.resolve() / "missing"


def test_persistent_kind_in_marker_mode(world, home):
    policy = default_policy()
    data = world.top / "data"
    assert check_path(policy, str(data / "missing"), "persistent") == data.resolve() / "missing"
    assert check_path(policy, str(data / "plain"), "persistent") == data.resolve() / "plain"
    with pytest.raises(ProtocolError, match="required marker file"):
        check_path(policy, str(data / "file.txt"), "persistent")
    with pytest.raises(ProtocolError, match="required marker file"):
        check_path(policy, str(data / "plain"), "clear")
    # heuristics and data roots still apply to walks
    with pytest.raises(ProtocolError, match="dot-prefixed"):
        check_path(policy, str(world.top / ".hidden" / "nothing"), "persistent")
    roots = parse_policy(f"data-roots:{world.roots_file}")
    with pytest.raises(ProtocolError, match="outside configured --data-roots"):
        check_path(roots, str(world.top / "outside" / "missing"), "persistent")
    assert not policy.authorises(data / "plain") and policy.authorises(data / "buf")
    assert roots.authorises(data / "plain")


def test_unknown_kind_is_a_bug():
    with pytest.raises(ValueError):
        check_path(default_policy(), "/srv/x", "bogus")  # type: ignore[arg-type]


def test_workdir_kind_is_the_guards_rule_for_launches():
    """rhl-guard checks `rhl-launch-service --workdir` with the heuristics only (no marker;
    a first launch creates the directory), and under data-roots inside a root."""
    assert check_path(default_policy(), "/srv/not-yet-there", "workdir") == Path("/srv/not-yet-there")
    for refused in ("/etc", "relative", "~", "/srv/.hidden/x"):
        with pytest.raises(ProtocolError):
            check_path(default_policy(), refused, "workdir")


def test_describe_and_default(world, home):
    assert default_policy() == parse_policy("seamless") == parse_policy("  seamless ")
    assert default_policy().describe() == {
        "mode": "marker", "markers": ["seamless.db", ".HASHSERVER_PREFIX"], "roots": []}
    assert parse_policy("permissive").describe() == {"mode": "permissive", "markers": [], "roots": []}
    assert parse_policy("marker:KEEP").describe()["markers"] == ["KEEP"]
    roots = parse_policy(f"data-roots:{world.roots_file}").describe()
    assert roots["mode"] == "data_roots"
    assert roots["roots"] == [str((world.top / "data").resolve()), str((world.home / "data").resolve()),
                              str((world.top / "linked-root").resolve())]
    assert isinstance(parse_policy("permissive"), PathPolicy)


def _guard_config_error(w: World, flags: list[str]) -> str:
    env = w.env()
    env["SSH_ORIGINAL_COMMAND"] = "rhl-ps"
    proc = subprocess.run([str(GUARD), *flags], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    prefix = "rhl-guard: configuration error: "
    assert proc.stderr.startswith(prefix), proc.stderr
    return proc.stderr[len(prefix):].strip()


def test_parse_policy_errors_match_guard(world, home):
    top = world.top
    (top / "relative-roots.txt").write_text("# ok\n/srv/data\nsome/relative\n")
    (top / "empty-roots.txt").write_text("# nothing\n\n   \n")
    cases = [
        ("marker:", ["--clear-policy", "marker:"]),
        ("marker:a/b", ["--clear-policy", "marker:a/b"]),
        ("marker:..", ["--clear-policy", "marker:.."]),
        ("marker:.", ["--clear-policy", "marker:."]),
        ("marker:a\\b", ["--clear-policy", "marker:a\\b"]),
        (f"data-roots:{top / 'relative-roots.txt'}", ["--data-roots", str(top / "relative-roots.txt")]),
        (f"data-roots:{top / 'empty-roots.txt'}", ["--data-roots", str(top / "empty-roots.txt")]),
        (f"data-roots:{top / 'no-such-file'}", ["--data-roots", str(top / "no-such-file")]),
    ]
    for spec, flags in cases:
        with pytest.raises(ValueError) as info:
            parse_policy(spec)
        assert str(info.value) == _guard_config_error(world, flags), spec
    for spec in ("bogus", "", "seamless2", "clear-policy seamless", "data-roots:"):
        with pytest.raises(ValueError):
            parse_policy(spec)


@pytest.mark.parametrize("kind", ["clear", "persistent", "workdir"])
@pytest.mark.parametrize("root", SYSTEM_ROOTS)
def test_every_system_root_is_refused_in_every_kind(tmp_path, monkeypatch, root, kind):
    # HOME elsewhere, so that `/` is refused as a system root and not as an ancestor of HOME...
    monkeypatch.setenv("HOME", str(tmp_path))
    for spec in ("permissive", "seamless"):
        with pytest.raises(ProtocolError) as info:
            check_path(parse_policy(spec), root, kind)
        assert info.value.code == ErrorCode.POLICY_REFUSED
        # `/` is refused as HOME's ancestor first (the guard's order); /bin -> /usr/bin under
        # seamless lacks a marker first: the root check is the raw-path one, made last
        if root != "/" and spec == "permissive":
            assert info.value.message == f"refusing system-root directory: {root}", (spec, root)
        # and the helpers agree that it must be refused
        assert not helper_accepts(root)


@pytest.mark.parametrize("root", SYSTEM_ROOTS[1:])
def test_below_a_system_root_is_not_a_system_root(tmp_path, monkeypatch, root):
    monkeypatch.setenv("HOME", str(tmp_path))
    below = f"{root}/seamless-test-not-there"
    assert check_path(parse_policy("permissive"), below, "clear") == Path(below).resolve()


def test_a_symlink_to_a_system_root_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for root in SYSTEM_ROOTS[1:]:
        link = tmp_path / ("link" + root.replace("/", "_"))
        link.symlink_to(root)
        if Path(root).resolve().as_posix() in SYSTEM_ROOTS:  # /sbin -> /usr/sbin is no root itself
            with pytest.raises(ProtocolError, match="refusing system-root directory"):
                check_path(parse_policy("permissive"), str(link), "clear")


# --- what the guard comparison cannot pin (issue 14, mutation survivors) ---

def _refusal_message(policy, path: str, kind: str = "clear") -> str:
    with pytest.raises(ProtocolError) as info:
        check_path(policy, path, kind)
    assert info.value.code == ErrorCode.POLICY_REFUSED
    return info.value.message


def test_refusals_the_guard_crashes_on_say_what_happened(tmp_path, monkeypatch):
    """The guard dies with a traceback on these; the agent says why in one line."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    permissive = parse_policy("permissive")
    assert _refusal_message(permissive, str(tmp_path / "loop1")) == \
        f"could not resolve path (symlink loop?): {tmp_path / 'loop1'}"
    assert _refusal_message(permissive, "~nosuchuser-seamless/buf") == \
        "could not expand ~ in path: ~nosuchuser-seamless/buf"
    nul = _refusal_message(permissive, "/srv/a\0b")
    assert nul.startswith("could not resolve path: ") and "\\x00" in nul


def test_no_policy_means_the_seamless_preset(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    plain = tmp_path / "plain"
    plain.mkdir()
    assert _refusal_message(None, str(plain)) == \
        f"path does not contain required marker file (seamless.db, .HASHSERVER_PREFIX): {plain}"
    (plain / "seamless.db").write_text("")
    assert check_path(None, str(plain), "clear") == plain.resolve()


def test_configuration_mistakes_are_named(tmp_path):
    with pytest.raises(ValueError, match="^unknown path kind 'bogus'$"):
        check_path(default_policy(), "/srv/x", "bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="^unknown policy mode 'bogus'$"):
        check_path(PathPolicy("bogus"), str(tmp_path / "x"), "clear")
    with pytest.raises(ValueError, match="^path policy must be a string$"):
        parse_policy(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError) as info:
        parse_policy("bogus")
    assert str(info.value) == ("path policy must be 'seamless', 'marker:NAME', 'permissive' or "
                               "'data-roots:PATH', not 'bogus'")
    with pytest.raises(ValueError, match="^--data-roots requires a path$"):
        parse_policy("data-roots:")


def test_everything_after_the_first_colon_is_the_name_or_the_file(tmp_path, monkeypatch):
    assert parse_policy("marker:keep:me").describe()["markers"] == ["keep:me"]
    (tmp_path / "data").mkdir()
    roots = tmp_path / "roots:1.txt"
    roots.write_text(f"{tmp_path / 'data'}\n")
    assert parse_policy(f"data-roots:{roots}").describe()["roots"] == [str((tmp_path / "data").resolve())]
    # and a roots file named with ~ is the server user's
    monkeypatch.setenv("HOME", str(tmp_path))
    assert parse_policy("data-roots:~/roots:1.txt").roots == ((tmp_path / "data").resolve(),)


def test_a_roots_file_that_is_not_utf8_is_refused_naming_the_file(world, home):
    bad = world.top / "latin1-roots.txt"
    bad.write_bytes(b"/srv/caf\xe9\n")
    with pytest.raises(ValueError) as info:
        parse_policy(f"data-roots:{bad}")
    # the guard refuses it too, with the codec's words only; ours also say which file
    codec = _guard_config_error(world, ["--data-roots", str(bad)])
    assert codec.startswith("'utf-8' codec can't decode byte 0xe9")
    assert str(info.value) == f"could not read --data-roots file {str(bad)!r}: {codec}"


# The persistent op sizes a row only where a client could ask for it directly
# (size_refusal): its bytes_error names the rule, never the link's target.

HS = ".HASHSERVER_PREFIX"


def _persistent_rows(ctx, root: Path, level: int) -> dict[str, dict]:
    from tests.support.agent import call
    return {r["path"]: r for r in call(ctx, "persistent", paths=[str(root)], level=level)["rows"]}


def test_links_out_of_an_authorised_tree_are_not_sized(sandbox, make_ctx, tmp_path):
    buffers = tmp_path / "data" / "buffers"
    proj = buffers / "proj1"
    (proj / "inside").mkdir(parents=True)
    (proj / HS).touch()
    (tmp_path / "data" / "elsewhere").mkdir()
    (proj / "out").symlink_to(tmp_path / "data" / "elsewhere")
    (proj / "in").symlink_to(proj / "inside")
    (proj / "etc").symlink_to("/etc")
    (proj / "home").symlink_to(sandbox.home)
    (tmp_path / "data" / ".hidden").mkdir()
    (proj / "dot").symlink_to(tmp_path / "data" / ".hidden")
    rows = _persistent_rows(make_ctx("seamless"), buffers, 2)
    why = {name: rows[str(proj / name)].get("bytes_error") for name in ("out", "in", "etc", "home", "dot")}
    assert why == {
        "out": "not sized: not inside a directory holding a marker file (seamless.db, .HASHSERVER_PREFIX)",
        "in": None,
        "etc": "not sized: refusing system-root directory",
        "home": "not sized: path must not be $HOME or an ancestor of $HOME",
        "dot": "not sized: path must not contain dot-prefixed segments",
    }
    assert rows[str(proj / "in")]["bytes_state"] == "pending"
    # under a policy without markers a link out is sized like any allowed directory
    permissive = _persistent_rows(make_ctx("permissive"), buffers, 2)
    assert permissive[str(proj / "out")]["bytes_state"] == "pending"
    assert permissive[str(proj / "etc")]["bytes_error"] == "not sized: refusing system-root directory"


def test_a_link_back_into_the_first_marker_tree_is_sized(sandbox, make_ctx, tmp_path):
    """Past a link into a second marker tree, a link back into the first one stays inside a
    tree the walk was authorised by: sized (any authorising directory will do)."""
    buffers = tmp_path / "data" / "buffers"
    proj = buffers / "proj1"
    (proj / "x").mkdir(parents=True)
    (proj / HS).touch()
    other = tmp_path / "data" / "other"
    other.mkdir()
    (other / HS).touch()
    (proj / "out").symlink_to(other)
    (other / "back").symlink_to(proj / "x")
    rows = _persistent_rows(make_ctx("seamless"), buffers, 3)
    assert rows[str(proj / "out")]["bytes_state"] == "pending"
    back = rows[str(proj / "out" / "back")]
    assert back["bytes_state"] == "pending" and "bytes_error" not in back


def test_a_link_out_of_the_data_roots_is_not_sized(sandbox, make_ctx, tmp_path):
    data, outside = tmp_path / "data", tmp_path / "outside"
    (data / "proj").mkdir(parents=True)
    outside.mkdir()
    (data / "proj" / "out").symlink_to(outside)
    roots = tmp_path / "roots.txt"
    roots.write_text(f"{data}\n")
    rows = _persistent_rows(make_ctx(f"data-roots:{roots}"), data, 2)
    assert rows[str(data / "proj" / "out")]["bytes_error"] == "not sized: path is outside configured --data-roots"
    assert rows[str(data / "proj")]["bytes_state"] == "pending"


def test_a_path_the_agent_cannot_look_into_is_refused_not_walked(tmp_path, monkeypatch):
    """Under a directory the agent's user may not search, whether the path exists cannot be
    told: the marker rule's walk-only leniency (absent or a directory) does not apply."""
    import tempfile
    top = Path(tempfile.mkdtemp(prefix="seamless-policy-perm-"))
    try:
        top.chmod(0o755)
        (top / "locked" / "x").mkdir(parents=True)
        (top / "locked").chmod(0o700)
        (top / "home").mkdir()
        monkeypatch.setenv("HOME", str(top / "home"))
        os.setresuid(65534, 65534, 0)
        try:
            message = _refusal_message(default_policy(), str(top / "locked" / "x"), "persistent")
        finally:
            os.setresuid(0, 0, 0)
        assert message.startswith("path does not contain required marker file")
    finally:
        shutil.rmtree(top)


def test_a_roots_file_is_read_as_utf8_whatever_the_locale(tmp_path, monkeypatch):
    import locale
    if sys.flags.utf8_mode:
        pytest.skip("Python's UTF-8 mode reads every file as UTF-8")
    roots = tmp_path / "roots.txt"
    roots.write_text(f"{tmp_path / 'café'}\n", encoding="utf-8")
    saved = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")
    try:
        assert locale.getpreferredencoding(False).lower() not in ("utf-8", "utf8")
        policy = parse_policy(f"data-roots:{roots}")
    finally:
        locale.setlocale(locale.LC_CTYPE, saved)
    assert policy.roots == ((tmp_path / "café").resolve(),)
