"""Fixtures shared by the agent's op tests."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import pytest

from seamless_service.agent import procinfo
from seamless_service.agent.context import AgentContext
from seamless_service.agent.policy import parse_policy
from tests.support.agent import end_agent, start_test_agent


@pytest.fixture
def agent(tmp_path):
    """A real agent process on a throwaway launcher folder (a module may define its own)."""
    info = start_test_agent(tmp_path)
    yield info
    end_agent(info["proc"])


@pytest.fixture
def make_ctx(sandbox):
    made = []

    def make(spec: str = "seamless") -> AgentContext:
        ctx = AgentContext(base=sandbox.base, policy=parse_policy(spec))
        made.append(ctx)
        return ctx

    yield make
    for ctx in made:
        ctx.close()


@pytest.fixture(scope="module")
def empty_cwd(tmp_path_factory):
    """Run the module (and the agents it starts, which inherit the folder) in an empty
    folder of its own: a `clear` that lost its directory descriptor (dir_fd=None) works
    on the current folder, and must find nothing there to delete but this one (a mutation
    run planted exactly that and emptied the checkout the tests ran in)."""
    saved = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(saved)


@pytest.fixture
def sleeper():
    """Start `sleep` children, each the leader of its own process group (as the launcher
    starts services: start_new_session), to stand for a service's pid. Each is reaped as
    soon as it ends (a zombie would still look alive to rhl-stop), and its group killed
    afterwards while it still has members. Only these children and their groups are ever
    signalled."""
    started: list[subprocess.Popen] = []

    def start(seconds: int = 300, *, shell: str | None = None, **kw) -> subprocess.Popen:
        argv = ["bash", "-c", shell] if shell else ["sleep", str(seconds)]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True, **kw)
        started.append(proc)
        threading.Thread(target=proc.wait, daemon=True).start()
        return proc

    yield start
    for proc in started:
        # a group id stays ours while any member lives: Linux reuses no pid in use as one
        if proc.poll() is None or procinfo.group_members(proc.pid):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def zombie():
    """Pids of finished children of ours left unreaped until the test ends: dead to every
    check (a zombie counts as gone), yet their numbers cannot be handed to another
    process meanwhile, so whatever signals them reaches nothing but them."""
    made: list[subprocess.Popen] = []

    def make() -> int:
        proc = subprocess.Popen(["true"], stdin=subprocess.DEVNULL, start_new_session=True)
        made.append(proc)
        deadline = time.monotonic() + 10
        while (info := procinfo.read_proc(proc.pid)) is not None and not info.zombie:
            assert time.monotonic() < deadline, "the child did not finish"
            time.sleep(0.005)
        return proc.pid

    yield make
    for proc in made:
        proc.wait()
