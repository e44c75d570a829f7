"""The keeper's reused threads (keeper/threads.py): a connection goes to a waiting worker,
one ticker serves every run. Real threads; and a real keeper serving sequential commands."""

from __future__ import annotations

import threading
import time

from seamless_service.client.keeper import client
from seamless_service.client.keeper.threads import Ticker, Workers
from tests.support.keeper import KeeperPlace, wait_for

import pytest


def test_sequential_calls_reuse_one_worker():
    workers = Workers("t")
    seen = []
    for i in range(20):
        done = threading.Event()
        workers.submit(lambda i=i, d=done: (seen.append((i, threading.get_ident())), d.set()))
        assert done.wait(5)
        assert wait_for(lambda: workers.idle == 1)
    assert [i for i, _ in seen] == list(range(20))
    assert len({ident for _, ident in seen}) == 1
    assert workers.started == 1


def test_concurrent_calls_never_wait_for_a_free_worker():
    workers = Workers("t")
    gate = threading.Event()
    running = threading.Semaphore(0)

    def block():
        running.release()
        gate.wait(10)

    for _ in range(5):
        workers.submit(block)
    for _ in range(5):  # all five run at once: none waits behind another
        assert running.acquire(timeout=5)
    assert workers.started == 5 and workers.idle == 0
    gate.set()
    assert wait_for(lambda: workers.idle == 5)
    workers.submit(block)   # an idle one takes it
    assert running.acquire(timeout=5)
    assert workers.started == 5


def test_a_failing_call_leaves_its_worker_usable():
    workers = Workers("t")
    workers.submit(lambda: 1 / 0)
    assert wait_for(lambda: workers.idle == 1)
    done = threading.Event()
    workers.submit(done.set)
    assert done.wait(5) and workers.started == 1


def test_idle_workers_exit_and_a_task_promised_at_the_timeout_still_runs():
    workers = Workers("short-lived", idle=0.05)   # a name no other test's threads carry
    done = threading.Event()
    workers.submit(lambda: None)
    assert wait_for(lambda: workers.idle == 1)
    assert wait_for(lambda: not [t for t in threading.enumerate() if t.name == "short-lived"])
    assert workers.idle == 0
    # many submissions racing the idle timeout: every one runs exactly once
    count = []
    lock = threading.Lock()
    for _ in range(200):
        workers.submit(lambda: (lock.acquire(), count.append(1), lock.release()))
        time.sleep(0.0005)
    workers.submit(done.set)
    assert done.wait(5)
    assert wait_for(lambda: len(count) == 200)


class _Run:
    def __init__(self):
        self.ticks = 0

    def tick(self):
        self.ticks += 1


def test_ticker_ticks_registered_runs_only():
    ticker = Ticker(0.01)
    a, b = _Run(), _Run()
    ticker.add(a)
    ticker.add(b)
    assert wait_for(lambda: a.ticks >= 3 and b.ticks >= 3)
    ticker.remove(a)
    time.sleep(0.05)
    frozen = a.ticks
    before_b = b.ticks
    time.sleep(0.1)
    assert a.ticks == frozen and b.ticks > before_b
    ticker.remove(b)
    time.sleep(0.05)
    frozen_b = b.ticks
    time.sleep(0.1)
    assert b.ticks == frozen_b          # nothing registered: it sleeps
    ticker.add(a)                       # and wakes for the next run
    assert wait_for(lambda: a.ticks > frozen)


def test_ticker_survives_a_failing_run():
    ticker = Ticker(0.01)

    class Bad:
        def tick(self):
            raise RuntimeError("boom")

    good = _Run()
    ticker.add(Bad())
    ticker.add(good)
    assert wait_for(lambda: good.ticks >= 3)


@pytest.fixture
def place(monkeypatch):
    p = KeeperPlace(monkeypatch, hooks=True)
    yield p
    p.cleanup()


def test_a_keeper_serving_sequential_commands_reuses_its_threads(place):
    import io

    for _ in range(25):
        out = io.StringIO()
        assert client.run(["env"], stdout=out, stderr=io.StringIO(), cwd=str(place.work)) == 0
        assert '"cwd"' in out.getvalue()
    threads = client.keeper_status()["threads"]
    # one connection per command: started per command before, a handful now (a command's
    # connection may arrive just before the previous worker is back waiting)
    assert threads["started"] <= 5, threads
