"""One background thread working through a bounded queue of keys (directory paths).

The sizer (du-like walks) and the listing cache (relisting large directories) both need
the same thing: a poll asks for work and never waits for it; a key is queued at most
once; the queue is bounded (when full, the poll answers from what it has and asks again
next time); the thread starts on first use and stops on close(); tests and shutdown can
wait until nothing is pending.

The owner passes its own lock: it decides under that lock whether a key is pending
(`key in worker.queued`) together with its cache, and the worker commits each result
under it too, in the same step that marks the key done.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable

# job(key, stop) does the slow part without the lock and returns a commit() that the worker
# runs under the owner's lock (store the result), or None (nothing to store).
Job = Callable[[str, threading.Event], "Callable[[], None] | None"]


class WorkerStopped(Exception):
    """Raised by a job that noticed `stop`: the work is abandoned and the worker ends."""


class KeyedWorker:
    def __init__(self, name: str, lock: threading.Lock, job: Job, *, max_queue: int):
        self.name = name
        self.queued: set[str] = set()       # queued or being worked on (read under `lock`)
        self.stop = threading.Event()
        self._lock = lock
        self._idle = threading.Condition(lock)
        self._job = job
        self._queue: queue.Queue[str | None] = queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None

    def submit_locked(self, key: str) -> bool:
        """Queue `key` (the caller holds the owner's lock). True if it is queued now or was
        already; False if closing or the queue is full."""
        if key in self.queued:
            return True
        if self.stop.is_set():
            return False
        try:
            self._queue.put_nowait(key)
        except queue.Full:
            return False
        self.queued.add(key)
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
            self._thread.start()
        return True

    def wait_idle(self, timeout: float) -> bool:
        """Block until nothing is queued or being worked on; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: not self.queued, timeout)

    def close(self) -> None:
        """Stop the thread (an unfinished job is abandoned)."""
        self.stop.set()
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass  # the worker sees the stop flag after its current item
        thread = self._thread
        if thread is not None:
            thread.join(timeout=10)
        with self._idle:
            self.queued.clear()
            self._idle.notify_all()

    def _work(self) -> None:
        while not self.stop.is_set():
            key = self._queue.get()
            if key is None or self.stop.is_set():
                break
            try:
                commit = self._job(key, self.stop)
            except WorkerStopped:
                break
            with self._idle:
                if commit is not None:
                    commit()
                self.queued.discard(key)
                self._idle.notify_all()
