"""What this agent last sent on one connection, per slot: the agent half of conditional
replies (protocol/conditional.py).

For each slot (op + canonical arguments) the connection asked about with a `held` entry,
the agent remembers (tag, value, digest of the value's msgpack bytes). When the op's new
value would be sent as exactly the same bytes and the client named that tag, the reply
is `{"ok": true, "same": tag}` instead of the value.

"Exactly the same bytes" is decided on the actual value, never on a guess:
* `provably_same` walks the new and the remembered value and accepts only what is sure:
  identical objects (for ops whose values are built from objects never changed once
  made: ps's kept rows and StateCache's parsed files), and scalars of the same type and
  value (msgpack writes 1, 1.0 and True differently, so Python's `==` alone would not do).
  Cheap: a poll of 1,000 unchanged ps rows costs 1,000 identity checks, no packing.
* otherwise the value is packed (it is needed to send it anyway) and the digest of those
  bytes compared with the digest of the bytes sent under the tag.

Bounded: at most MAX_SLOTS slots (least recently used dropped first), values packed to
at most MAX_VALUE_BYTES, at most MAX_TOTAL_BYTES of packed values per connection.
"""

from __future__ import annotations

import hashlib
import operator
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import msgpack

MAX_SLOTS = 32
MAX_VALUE_BYTES = 2 << 20      # a logs answer of the default 1 MiB fits; bigger ones are sent each time
MAX_TOTAL_BYTES = 4 << 20       # ~20 answers of 1,000 ps rows; their objects may take ~5x that
# Ops whose values hold only objects that are never changed once made (ps.py _KeptRows,
# statefiles' "cached objects are never mutated"): an identical object is an unchanged
# one. For other ops an identical object proves nothing (a cache could have changed it).
IDENTITY_OPS = frozenset({"ps"})
# Non-identical containers the walk looks into before it leaves the proof to the bytes.
WALK_BUDGET = 64
# Scalars whose type and == decide their msgpack bytes (not float: 0.0 == -0.0, NaN).
_EXACT = (str, int, bool, bytes, type(None))


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()  # sha256: ~0.1 ms per 200 KB here (SHA-NI)


def provably_same(new: Any, old: Any, *, trust_identity: bool, budget: int = WALK_BUDGET) -> bool:
    """True only if msgpack would write `new` exactly as it wrote `old`. False means
    "not proved here" (the caller compares the packed bytes)."""
    left = [budget]
    return _same(new, old, trust_identity, left)


def _same(new: Any, old: Any, trust: bool, left: list[int]) -> bool:
    kind = type(new)
    if kind is not type(old):
        return False
    if kind in _EXACT:
        return new == old
    if new is old:  # the very object sent: unchanged only where objects never change
        return trust
    left[0] -= 1
    if left[0] < 0:
        return False
    if kind is list:
        if len(new) != len(old):
            return False
        if trust and all(map(operator.is_, new, old)):  # kept rows: C speed, no packing
            return True
        return all(_same(a, b, trust, left) for a, b in zip(new, old))
    if kind is dict:
        # msgpack writes a map's pairs in insertion order: other order, other bytes
        return len(new) == len(old) and all(
            type(ka) is type(kb) and ka == kb and _same(va, vb, trust, left)
            for (ka, va), (kb, vb) in zip(new.items(), old.items()))
    return False  # float, tuple, anything else: the packed bytes decide


@dataclass
class _Slot:
    tag: str
    value: Any
    digest: bytes
    size: int


@dataclass
class Pending:
    """A reply piece's effect on the memory, applied only once the piece is in the reply
    (dispatch's size budget may still replace it by a too_large error). `tag` None: the
    value went untagged (too big to remember), so the slot is forgotten."""
    slot: bytes
    tag: str | None
    value: Any = None
    digest: bytes = b""
    size: int = 0
    same: bool = False


class SentValues:
    """Per connection. Thread-safe (rpyc serves one connection's calls in turn, but the
    lock costs nothing and keeps that an assumption nobody has to check)."""

    def __init__(self) -> None:
        self._slots: OrderedDict[bytes, _Slot] = OrderedDict()
        self._total = 0
        self._counter = 0
        self._lock = threading.Lock()
        self.same_sent = 0      # "same" answers sent: read by tests and benchmarks
        self.values_sent = 0    # tagged full values sent

    def __len__(self) -> int:
        return len(self._slots)

    def answer(self, op: str, slot: bytes, held: str | None, value: Any) -> tuple[bytes, Pending] | None:
        """(the packed result, its Pending) for an ok value of a conditional op, or None
        when the value cannot be packed as it is (the caller sends it the usual way)."""
        with self._lock:
            known = self._slots.get(slot)
        if known is not None and held == known.tag and provably_same(
                value, known.value, trust_identity=op in IDENTITY_OPS):
            return _same_piece(held), Pending(slot, held, value, known.digest, known.size, same=True)
        try:
            data = msgpack.packb(value, use_bin_type=True)
        except Exception:  # noqa: BLE001 - make_sendable's path (dispatch.run_packed) takes it
            return None
        if len(data) > MAX_VALUE_BYTES:  # not remembered, so not tagged: the client keeps nothing
            return _value_piece(data, None), Pending(slot, None)
        sent = digest(data)
        if known is not None and held == known.tag and sent == known.digest:
            return _same_piece(held), Pending(slot, held, value, sent, len(data), same=True)
        with self._lock:
            self._counter += 1
            tag = format(self._counter, "x")
        return _value_piece(data, tag), Pending(slot, tag, value, sent, len(data))

    def commit(self, pending: Pending) -> None:
        """The piece went into the reply: remember what the client now holds."""
        with self._lock:
            self._drop(pending.slot)
            if pending.tag is None:
                return
            if pending.same:
                self.same_sent += 1
            else:
                self.values_sent += 1
            # the newest value: ps rows built again but equal become the identical objects
            # of the next poll
            self._slots[pending.slot] = _Slot(pending.tag, pending.value, pending.digest, pending.size)
            self._total += pending.size
            while len(self._slots) > MAX_SLOTS or self._total > MAX_TOTAL_BYTES:
                self._drop(next(iter(self._slots)))

    def forget(self, slot: bytes) -> None:
        """The op failed, or its result did not fit: nothing of it is held any more."""
        with self._lock:
            self._drop(slot)

    def _drop(self, slot: bytes) -> None:
        old = self._slots.pop(slot, None)
        if old is not None:
            self._total -= old.size


def _same_piece(tag: str) -> bytes:
    return msgpack.packb({"ok": True, "same": tag}, use_bin_type=True)


def _value_piece(data: bytes, tag: str | None) -> bytes:
    """`{"ok": true, "value": <data>, "tag": tag}` packed (no "tag" when None), around the
    value's bytes as they are (msgpack is context-free: the value is not packed twice)."""
    packer = msgpack.Packer(use_bin_type=True)
    parts = [packer.pack_map_header(2 if tag is None else 3), packer.pack("ok"), packer.pack(True),
             packer.pack("value"), data]
    if tag is not None:
        parts += [packer.pack("tag"), packer.pack(tag)]
    return b"".join(parts)
