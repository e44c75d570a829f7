"""Threads the tunnel keeper reuses between commands instead of starting new ones.

Every warm command used to start two threads in the keeper (one for its connection, one to
flush its output and notice its client leaving) and join one: ~0.5-1 ms of a ~6 ms command
on a 2-core machine, most of it Thread.start() waiting for the new thread to get the GIL
and say it runs (py-spy of a keeper serving 400 warm `ps`, benchmarks/profile_warm.py).
Here a connection is handed to a worker that is already waiting, and one ticker serves
every run at once.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable, Protocol

WORKER_IDLE = 60.0    # an idle worker exits after this long (a burst leaves no threads behind)


class Workers:
    """Run each submitted call in a thread of its own, reusing threads that finished one.

    As many calls run at once as are submitted (a connection blocks its thread while its
    command runs or waits): a call never waits for a free worker, an idle one is reused
    when there is one, else a new thread starts."""

    def __init__(self, name: str, idle: float = WORKER_IDLE):
        self.name = name
        self.idle_timeout = idle
        self._tasks: queue.SimpleQueue[tuple[Callable[..., Any], tuple]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0          # workers blocked in get(): each owes one task it was promised
        self.started = 0        # threads started in all (tests, status)

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        with self._lock:
            if self._idle:
                # Promised to exactly one idle worker: put while holding the lock, so a
                # worker timing out (which takes the lock) finds the task instead of leaving.
                self._idle -= 1
                self._tasks.put((fn, args))
                return
            self.started += 1
        threading.Thread(target=self._work, args=(fn, args), name=self.name, daemon=True).start()

    def _work(self, fn: Callable[..., Any], args: tuple) -> None:
        while True:
            try:
                fn(*args)
            except BaseException:  # noqa: BLE001 - the submitted call handles its own errors
                pass
            fn = args = None  # type: ignore[assignment]  # no reference kept while idle
            with self._lock:
                self._idle += 1
            try:
                fn, args = self._tasks.get(timeout=self.idle_timeout)
            except queue.Empty:
                with self._lock:
                    try:
                        fn, args = self._tasks.get_nowait()   # promised just before we timed out
                    except queue.Empty:
                        self._idle -= 1
                        return

    @property
    def idle(self) -> int:
        with self._lock:
            return self._idle


class Tickable(Protocol):
    def tick(self) -> None: ...


class Ticker:
    """One thread calling tick() on every registered run every `interval` seconds; asleep
    while none is registered (an idle keeper wakes for nothing)."""

    def __init__(self, interval: float, name: str = "run-ticker"):
        self.interval = interval
        self.name = name
        self._runs: set[Tickable] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, run: Tickable) -> None:
        with self._lock:
            self._runs.add(run)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()
        self._wake.set()

    def remove(self, run: Tickable) -> None:
        with self._lock:
            self._runs.discard(run)

    def _loop(self) -> None:
        while True:
            with self._lock:
                idle = not self._runs
                if idle:
                    self._wake.clear()
            if idle:
                self._wake.wait()
                continue
            # The interval first: a run registers as it starts and needs its first tick later.
            time.sleep(self.interval)
            with self._lock:
                runs = list(self._runs)
            for run in runs:
                try:
                    run.tick()
                except Exception:  # noqa: BLE001 - one run's failure must not stop the others' ticks
                    pass
