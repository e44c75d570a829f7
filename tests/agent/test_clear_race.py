"""Issue 9 item 2: another local user who can write a group-shared buffer directory
swaps a directory the agent's `clear` checked as allowed for a symlink to the owner's
private directory, between the check and the deletion. The clear must never follow it:
the owner's 0700 directory keeps its files, and the clear either refuses or clears only
the directory it checked.

The attacker is a real second uid (in the shared group) working against a real agent.
It does not rely on luck: it watches (inotify) the directories the clear works in and
the `rhl-clear` helper, and swaps right after the k-th open among them, for k = 1, 2, ...
until the clear no longer opens that many: every stretch of the clear between two opens
gets a swap. (Today's code fell at the first open for the top-level variant, and at the
helper's start for the nested one: the helper resolves the path again ~30 ms later.)
"""

from __future__ import annotations

import json
import os
import select
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from seamless_service.agent.helpers import find_helper
from seamless_service.agent.ops import clear as clear_op
from seamless_service.client.transport.agent_conn import AgentConnection
from seamless_service.protocol import ErrorCode, ProtocolError
from tests.support.agent import end_agent, spawn_agent
from tests.support.inotify import IN_OPEN, Watcher
from tests.support.other_user import OTHER_UID, HeldChild, as_user, needs_root
from tests.support.trees import HS, put_file, tree

SHARED_GID = OTHER_UID          # the buffer directory's group; the attacker's only group
STAGE = "STAGE-s1"
MAX_OPENS = 40                  # far more than one clear of these trees opens
VICTIM_FILES = {"keys.txt": b"private key", "a/f1": b"one", "a/b/f2": b"two", "notes/n.txt": b"notes"}


@pytest.fixture(scope="module", autouse=True)
def _in_empty_cwd(empty_cwd):
    """A clear that lost its descriptor empties the current folder: let it be an empty one."""


@pytest.fixture(scope="module")
def place() -> Iterator[Path]:
    """A root the other user can traverse, with a group-shared buffer folder (setgid,
    group-writable, as such folders are) and the owner's home with a private folder."""
    needs_root()
    root = Path(tempfile.mkdtemp(prefix="ssclr-", dir="/tmp"))
    os.chmod(root, 0o711)
    shared = root / "shared"
    shared.mkdir()
    os.chown(shared, 0, SHARED_GID)
    os.chmod(shared, 0o2775)
    (root / "home").mkdir(mode=0o711)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def agent(place: Path) -> Iterator[dict[str, Any]]:
    base = place / "rhl"
    (base / "server").mkdir(parents=True)
    proc, info = spawn_agent(base, "--path-policy", "seamless")
    info["secret"] = (base / "agent" / "secret").read_text().strip()
    yield info
    end_agent(proc)


def build(place: Path, n: int) -> tuple[Path, Path]:
    """A hashserver buffer dir in the shared folder (group-writable) and a 0700 victim."""
    data = place / "shared" / f"proj{n}"
    put_file(data / HS, b"")
    put_file(data / "f0", b"0")
    put_file(data / STAGE / HS, b"")
    put_file(data / STAGE / "a" / "f", b"1")
    put_file(data / STAGE / "a" / "b" / "f", b"2")
    for path in [data, *[p for p in data.rglob("*") if p.is_dir()]]:
        os.chown(path, 0, SHARED_GID)
        os.chmod(path, 0o2775)
    victim = place / "home" / f"private{n}"
    victim.mkdir(mode=0o700)
    for name, content in VICTIM_FILES.items():
        put_file(victim / name, content)
    os.chmod(victim, 0o700)
    return data, victim


def victim_intact(victim: Path) -> bool:
    return (tree(victim) == {"keys.txt", "a", "a/f1", "a/b", "a/b/f2", "notes", "notes/n.txt"}
            and all((victim / name).read_bytes() == content for name, content in VICTIM_FILES.items()))


def swapper(watch: list[str], k: int, target: str, aside: str, victim: str) -> Callable[[int, int], dict]:
    """The attacker: after the k-th open of a watched path, move `target` aside and put a
    symlink to `victim` in its place."""
    def body(status_w: int, release_r: int) -> dict:
        watcher = Watcher(watch)
        os.write(status_w, b"ready\n")
        opens = 0
        while True:
            ready, _, _ = select.select([watcher.fd, release_r], [], [], 60)
            if watcher.fd in ready:
                for path, mask, _name in watcher.events():
                    if mask & IN_OPEN:
                        opens += 1
                        if opens == k:
                            try:
                                os.rename(target, aside)
                            except FileNotFoundError:  # already cleared away: too late to swap
                                return {"swapped": False, "too_late": True, "opens": opens}
                            os.symlink(victim, target)
                            return {"swapped": True, "after": f"open #{k}: {path}"}
            if release_r in ready or not ready:
                return {"swapped": False, "opens": opens}
    return body


def clear_under_attack(agent: dict, data: Path, victim: Path, target: Path, k: int) -> tuple[dict, dict]:
    """One clear of `data` by the owner while the attacker waits for its k-th open."""
    aside = target.with_name(target.name + ".moved")
    watch = [data, data / STAGE, data / STAGE / "a", data / STAGE / "a" / "b", find_helper("rhl-clear")]
    attacker = HeldChild(OTHER_UID, SHARED_GID,
                         swapper([str(p) for p in watch], k, str(target), str(aside), str(victim)))
    try:
        assert attacker.status.readline() == b"ready\n"
        with AgentConnection.connect("127.0.0.1", agent["port"], agent["secret"], timeout=60) as conn:
            (reply,) = conn.batch([("clear", {"path": str(data)})])
    finally:
        attacker.release()
    report = json.loads(attacker.status.readline())
    assert "crashed" not in report, report
    return reply, report


def _errors_inside(value: dict, data: Path) -> None:
    """Whatever went wrong is said, and only about paths inside the checked directory."""
    for line in value["stderr"].splitlines():
        assert f"could not remove {data}/" in line, line


@pytest.mark.parametrize("variant", ["top-level", "nested"])
def test_swap_for_a_symlink_never_clears_the_owners_private_dir(place, agent, variant):
    swaps = 0
    for k in range(1, MAX_OPENS + 1):
        data, victim = build(place, len(list((place / "shared").iterdir())))
        target = data if variant == "top-level" else data / STAGE
        reply, report = clear_under_attack(agent, data, victim, target, k)
        assert victim_intact(victim), f"the owner's private directory was cleared ({report['after']}): {reply}"
        if report.get("too_late"):
            continue  # the attacker lagged (a loaded machine): the next k may still land
        if not report["swapped"]:
            break  # the clear opened fewer than k: every stretch of it has had its swap
        swaps += 1
        original = target.with_name(target.name + ".moved")
        if not reply["ok"]:  # a refusal names what changed
            assert reply["error"]["code"] in (ErrorCode.POLICY_REFUSED, ErrorCode.NOT_FOUND), reply
            continue
        value = reply["value"]
        assert value["path"] == str(data)
        _errors_inside(value, data)
        if variant == "top-level":
            # the directory checked (now moved aside) was cleared, marker kept; the
            # attacker's symlink in its place was never followed
            assert value["ok"], value
            assert tree(original) == {HS} and target.is_symlink(), report
        else:
            # a symlink inside the cleared directory is removed as a link, if it was
            # still there to be seen; its target never is
            assert not target.exists() or target.is_symlink(), report
    assert swaps >= 2, "the attacker hardly got to swap: the test proves little"


# -- the pieces: opening without following, deciding on what was opened -----------------

def test_open_refuses_a_symlink_at_any_component(tmp_path):
    real = tmp_path / "real" / "data"
    real.mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "real" / "leaf-link").symlink_to(real)
    for path in (tmp_path / "link" / "data", tmp_path / "real" / "leaf-link"):
        with pytest.raises(ProtocolError) as info:
            os.close(clear_op.open_directory(path))
        assert info.value.code == ErrorCode.POLICY_REFUSED
        assert "symlink" in info.value.message and "nothing was cleared" in info.value.message
    fd = clear_op.open_directory(real)
    try:
        assert os.path.samestat(os.fstat(fd), os.stat(real))
    finally:
        os.close(fd)


def test_open_goes_through_search_only_parents(place):
    """A parent the agent may traverse but not list (0711, like many homes) is fine: the
    walk opens the parents for search only. Run as another uid: root may list anything."""
    data = place / "home" / "listable-by-none" / "data"
    data.mkdir(parents=True)
    os.chmod(data.parent, 0o711)
    os.chmod(place / "home", 0o711)

    def open_it() -> str:
        try:
            os.close(clear_op.open_directory(data))
            return "opened"
        except ProtocolError as exc:
            return exc.message

    assert as_user(OTHER_UID, SHARED_GID, open_it) == "opened"


def test_marker_is_checked_on_the_opened_directory(sandbox, make_ctx, tmp_path):
    """The directory that was opened must itself pass the marker policy: a directory put
    in place of the checked one (not a symlink: a real one, without marker) is refused."""
    ctx = make_ctx("seamless")
    data = tmp_path / "data" / "proj"
    put_file(data / HS, b"")
    put_file(data / "f", b"1")
    fd = clear_op.open_directory(data)
    try:
        clear_op.check_opened(ctx.policy, fd, data)
        os.rename(data / HS, tmp_path / "aside")
        with pytest.raises(ProtocolError) as info:
            clear_op.check_opened(ctx.policy, fd, data)
        assert info.value.code == ErrorCode.POLICY_REFUSED and "marker" in info.value.message
    finally:
        os.close(fd)
    assert stat.S_ISREG(os.stat(data / "f").st_mode)
