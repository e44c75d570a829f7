"""The client half of conditional replies (protocol/conditional.py): per agent connection,
per slot (op + canonical arguments), the tag and value the agent last sent.

A request names, per op, the tag held for its slot; the agent answers `{"ok": true,
"same": tag}` when its new value is exactly that one, and this module puts an independent
copy of the held value in its place. Callers may mutate what they get: the held value is
kept frozen (marshal bytes), so no caller can change the next answer.

Why marshal: for a 1,000-row ps value (180 KB of msgpack) on this machine, thawing took
~1.4 ms against ~3.7 ms for a recursive dict/list copy, ~10.6 ms for copy.deepcopy and
~2.9 ms for unpacking the msgpack bytes again (freezing a new value: ~0.6 ms, once). It
round-trips exactly what msgpack decodes to (dict, list, str, bytes, int, float, bool,
None; key order kept); anything else (an ext type) is simply not held.

Trust: a "same" is accepted only for the very tag this request sent for that op, resolved
against the (tag, frozen value) pair read when the request was built (another thread may
replace the slot meanwhile). Any other "same" clears everything held on the connection and
fails the call: a wrong answer is never returned.
"""

from __future__ import annotations

import marshal
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Sequence

from ...protocol.conditional import MAX_TAG_LEN, slot_key
from ...protocol.errors import ErrorCode, ProtocolError

MAX_SLOTS = 32  # as the agent's memory (agent/sent.py): a few dozen answers per connection
MAX_TOTAL_BYTES = 16 << 20  # frozen bytes held per connection (the agent tags values up to 2 MiB)


def freeze(value: Any) -> bytes:
    """An immutable snapshot of a decoded value; ValueError if it holds other types."""
    return marshal.dumps(value)


def thaw(frozen: bytes) -> Any:
    """A new, independent copy of the frozen value (no object shared with any other copy)."""
    return marshal.loads(frozen)


@dataclass
class Asked:
    """What one request said it holds: per op, the slot (None: not conditional), and the
    (tag, frozen value) it named (None: it named none)."""
    held: list[str | None] = field(default_factory=list)
    slots: list[bytes | None] = field(default_factory=list)
    kept: list[tuple[str, bytes] | None] = field(default_factory=list)

    @property
    def conditional(self) -> bool:
        return any(slot is not None for slot in self.slots)


class HeldValues:
    """One agent connection's held answers. Thread-safe."""

    def __init__(self, ops: frozenset[str], *, max_slots: int = MAX_SLOTS, max_bytes: int = MAX_TOTAL_BYTES):
        self.ops = ops
        self.max_slots = max_slots
        self.max_bytes = max_bytes
        self._slots: OrderedDict[bytes, tuple[str, bytes]] = OrderedDict()
        self._total = 0
        self._lock = threading.Lock()
        self.same_received = 0     # answers given from what was held (tests, benchmarks)
        self.values_received = 0   # tagged values received and held

    def __len__(self) -> int:
        return len(self._slots)

    def ask(self, ops: Sequence[tuple[str, dict[str, Any]]]) -> Asked:
        asked = Asked()
        with self._lock:
            for name, args in ops:
                slot = slot_key(name, args) if name in self.ops else None
                kept = self._slots.get(slot) if slot is not None else None
                asked.slots.append(slot)
                asked.kept.append(kept)
                asked.held.append(kept[0] if kept is not None else None)
        return asked

    def resolve(self, asked: Asked, results: list[dict]) -> list[dict]:
        """The results with every "same" replaced by a copy of the held value and every
        "tag" taken off (and its value held). ProtocolError for a "same" not asked for."""
        out = []
        for slot, kept, result in zip(asked.slots, asked.kept, results):
            if "same" in result:
                tag = result["same"]
                if slot is None or kept is None or tag != kept[0] or result.get("ok") is not True:
                    self.clear()
                    raise ProtocolError(ErrorCode.MALFORMED, (
                        f"the agent answered 'same as {str(tag)[:MAX_TAG_LEN]!r}' for a value this "
                        "connection does not hold; everything held was dropped"))
                with self._lock:
                    self.same_received += 1
                    if self._slots.get(slot) == kept:
                        self._slots.move_to_end(slot)
                out.append({"ok": True, "value": thaw(kept[1])})
                continue
            if slot is not None:
                result = self._take(slot, result)
            out.append(result)
        return out

    def _take(self, slot: bytes, result: dict) -> dict:
        """Hold a tagged value; forget the slot on anything else (an error, an untagged value)."""
        tag = result.get("tag")
        frozen = None
        if result.get("ok") is True and "value" in result and isinstance(tag, str) and 0 < len(tag) <= MAX_TAG_LEN:
            try:
                frozen = freeze(result["value"])
            except ValueError:  # not a plain msgpack value (an ext type): not held
                frozen = None
        with self._lock:
            self._pop(slot)
            if frozen is not None:
                self.values_received += 1
                self._slots[slot] = (tag, frozen)
                self._total += len(frozen)
                while len(self._slots) > self.max_slots or self._total > self.max_bytes:
                    self._pop(next(iter(self._slots)))
        if "tag" in result:
            result = {k: v for k, v in result.items() if k != "tag"}
        return result

    def clear(self) -> None:
        with self._lock:
            self._slots.clear()
            self._total = 0

    def _pop(self, slot: bytes) -> None:
        old = self._slots.pop(slot, None)
        if old is not None:
            self._total -= len(old[1])
