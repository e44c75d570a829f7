"""`ps --watch`: a live table, redrawn when the agent says the launcher state changed.

No timer re-runs everything: each host has one thread that sends ONE batch
`[wait(token, SECONDS), ps, persistent..., health]`. The agent's `wait` returns as soon as
a state file or a pid's liveness changes (or after SECONDS), and the rows that follow in
the same batch are already the new ones; the token for the next round comes back in that
reply. So a change shows within one round trip, with one request in flight per host, and
the table is redrawn at least every SECONDS (sizes and error states change without the
launcher state changing). The main thread redraws whenever any host answers.

Output:
* stdout is a terminal: the screen is cleared (ANSI) and the frame redrawn in place, with a
  header line (interval, command, time) as watch(1) does; host errors are part of the frame.
* otherwise (pipe, file, --json): a frame is printed only when it differs from the last
  one, after a blank line and a timestamp line (NDJSON: a blank line only); host errors go
  to stderr when they change.
Ctrl-C (or, inside the tunnel keeper, the thin client going away: `cancelled()`, by default
the keeper's flag as the transport pool has it) ends the watch with exit code 0.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable, TextIO

from ..transport.pool import default_pool
from .ps import HostQuery, Opener, Outcome, run_one

CLEAR = "\x1b[H\x1b[2J"
POLL = 0.2            # how often the main thread looks at the cancellation flag
COALESCE = 0.05       # answers arriving this close together are drawn as one frame

Frame = Callable[[list[Outcome]], tuple[str, list[str]]]


class Watch:
    def __init__(self, queries: list[HostQuery], opener: Opener, frame: Frame, *, interval: float,
                 title: str, out: TextIO, err: TextIO, json_mode: bool = False,
                 cancelled: Callable[[], bool] = default_pool.cancelled):
        self.queries = queries
        self.opener = opener
        self.frame = frame
        self.interval = interval
        self.title = title
        self.out = out
        self.err = err
        self.json_mode = json_mode
        self.cancelled = cancelled
        self.tty = _isatty(out) and not json_mode
        self._answers: queue.Queue[tuple[int, Outcome]] = queue.Queue()
        self._stop = threading.Event()      # host threads: stop asking
        self._halt = threading.Event()      # main loop: return (stop(), from any thread)
        self._last: tuple[str, tuple[str, ...]] | None = None
        self._last_errors: tuple[str, ...] = ()

    def run(self) -> int:
        """Watch until Ctrl-C or cancellation; always exit code 0."""
        try:
            for index, query in enumerate(self.queries):
                threading.Thread(target=self._host_loop, args=(index, query), daemon=True,
                                 name=f"watch-{query.host or 'local'}").start()
            self._main_loop()
        except KeyboardInterrupt:
            pass
        finally:
            # Host threads notice on their next answer (at most SECONDS later); they hold
            # nothing the process needs, and in the keeper they end by themselves.
            self._stop.set()
        if self.tty:
            self._write("\n")
        return 0

    def stop(self) -> None:
        """End run() from another thread (what Ctrl-C does in the main thread)."""
        self._halt.set()

    # -- threads ---------------------------------------------------------------------------

    def _host_loop(self, index: int, query: HostQuery) -> None:
        token: str | None = None
        long_poll = True
        first = True
        while not self._stop.is_set():
            try:
                # the first round may wait for an in-process sizer, so no frame says "pending"
                outcome = run_one(query, self.opener, settle=first,
                                  wait=(token, self.interval) if long_poll else None)
            except Exception as exc:  # noqa: BLE001 - a thread must not die with a traceback
                outcome = Outcome(query, errors=[query.error(f"{type(exc).__name__}: {exc}")], failed=True)
            first = False
            if self._stop.is_set():
                return
            self._answers.put((index, outcome))
            long_poll = long_poll and not outcome.wait_failed
            token = outcome.token
            if outcome.failed or not long_poll or token is None:
                # unreachable host, or no long-poll there: ask again after SECONDS
                if self._stop.wait(self.interval):
                    return

    def _main_loop(self) -> None:
        latest: list[Outcome | None] = [None] * len(self.queries)
        first_deadline = time.monotonic() + self.interval
        drawn = False
        while not self._cancelled():
            try:
                index, outcome = self._answers.get(timeout=POLL)
            except queue.Empty:
                if not drawn and time.monotonic() >= first_deadline and any(latest):
                    self._draw(latest)  # a slow host must not keep the first frame back
                    drawn = True
                continue
            latest[index] = outcome
            deadline = time.monotonic() + COALESCE
            while True:  # more answers arriving right now belong to the same frame
                try:
                    index, outcome = self._answers.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                latest[index] = outcome
            if drawn or all(o is not None for o in latest) or time.monotonic() >= first_deadline:
                self._draw(latest)
                drawn = True

    def _cancelled(self) -> bool:
        return self._halt.is_set() or self.cancelled()

    # -- output ----------------------------------------------------------------------------

    def _draw(self, latest: list[Outcome | None]) -> None:
        text, errors = self.frame([o for o in latest if o is not None])
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        if self.tty:
            header = f"Every {self.interval:g}s: {self.title}"
            lines = [header + "  " + stamp, "", text]
            lines += [f"seamless-service: {line}" for line in errors]
            self._write(CLEAR + "\n".join(lines) + "\n")
            return
        key = (text, tuple(errors))
        if key == self._last:
            return
        separator = "" if self._last is None else "\n"
        self._last = key
        if self.json_mode:
            self._write(separator + (text + "\n" if text else ""))
        else:
            self._write(f"{separator}{stamp}\n{text}\n")
        if tuple(errors) != self._last_errors:
            self._last_errors = tuple(errors)
            for line in errors:
                self.err.write(f"seamless-service: {line}\n")
            self.err.flush()

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False
