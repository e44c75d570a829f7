"""What the msgpack codec can carry, and how to make a value carriable.

The agent answers with data it did not make: state files written by anyone (a pid of
99999999999999999999, a `"\\ud800"` escape, arrays nested 600 deep) and file names in
any bytes (Python hands undecodable bytes over as lone surrogates). msgpack refuses
integers outside [-2**63, 2**64), strings that are not UTF-8 (lone surrogates) and
nesting beyond its stack, and one such value would fail the whole op. So:

* `display_text(s)` is `s` as sendable text: undecodable file-name bytes show as
  `\\xNN`, other lone surrogates as `\\udNNN`;
* `unsendable(value)` names the first value the codec cannot carry (None: all fine);
  readers of untrusted data turn a file that holds one into an error row for that file;
* `make_sendable(value)` replaces each such value by text (an integer by its digits,
  a string by its `display_text`, a too-deep container by a note) and says what it
  replaced, for answers that show a file as it is (`inspect`).
"""

from __future__ import annotations

from typing import Any

INT_MIN = -(1 << 63)
INT_MAX = (1 << 64) - 1
# Data from files may nest this deep inside a reply. The reply wraps it in a few levels
# of its own (envelope, results, value, rows, row), far below msgpack's packer limit of
# 511 and its unpacker's stack; real state files nest 3 levels.
MAX_DATA_NESTING = 32


def display_text(text: str) -> str:
    """`text` as UTF-8-encodable text (unchanged when it already is)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        # surrogateescape'd bytes (file names) back to their bytes, shown as \xNN
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _text_ok(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _where(path: tuple[Any, ...]) -> str:
    if not path:
        return "the top level"
    return "".join(f"[{p}]" if isinstance(p, int) else f".{display_text(p)}" for p in path)


def _problem(value: Any) -> str | None:
    """Why this scalar cannot be sent, or None."""
    if isinstance(value, bool) or value is None or isinstance(value, (float, bytes)):
        return None
    if isinstance(value, int):
        if INT_MIN <= value <= INT_MAX:
            return None
        return "an integer beyond the 64-bit range"
    if isinstance(value, str):
        return None if _text_ok(value) else "text that is not valid UTF-8 (a lone surrogate)"
    if isinstance(value, (dict, list)):
        return None
    return f"a value of type {type(value).__name__}"


def _int_text(value: int) -> str:
    try:
        return str(value)
    except ValueError:  # beyond Python's int-to-text digit limit
        return f"<integer of {value.bit_length()} bits>"


def unsendable(value: Any, max_depth: int = MAX_DATA_NESTING) -> str | None:
    """'<where>: <why>' for the first value the codec cannot carry, or None.

    Iterative: a deeply nested value cannot exhaust the Python stack."""
    stack: list[tuple[Any, tuple[Any, ...], int]] = [(value, (), 1)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, dict):
            if depth > max_depth:
                return f"{_where(path)}: nesting deeper than {max_depth} levels"
            for key, sub in item.items():
                if not isinstance(key, str) or not _text_ok(key):
                    shown = display_text(key) if isinstance(key, str) else repr(key)
                    return f"{_where(path)}: a key that is not valid UTF-8 text ({shown!r})"
                stack.append((sub, path + (key,), depth + 1))
        elif isinstance(item, list):
            if depth > max_depth:
                return f"{_where(path)}: nesting deeper than {max_depth} levels"
            stack.extend((sub, path + (index,), depth + 1) for index, sub in enumerate(item))
        else:
            why = _problem(item)
            if why is not None:
                return f"{_where(path)}: {why}"
    return None


def make_sendable(value: Any, max_depth: int = MAX_DATA_NESTING) -> tuple[Any, list[str]]:
    """(`value` with every unsendable part replaced by text, '<where>: <what>' notes)."""
    notes: list[str] = []

    def fix(item: Any, path: tuple[Any, ...], depth: int) -> Any:
        if isinstance(item, (dict, list)) and depth > max_depth:
            notes.append(f"{_where(path)}: nesting deeper than {max_depth} levels, left out")
            return f"<nested deeper than {max_depth} levels>"
        if isinstance(item, dict):
            out = {}
            for key, sub in item.items():
                shown = display_text(key) if isinstance(key, str) else str(key)
                if shown != key:
                    notes.append(f"{_where(path)}: key {shown!r} was not valid UTF-8 text, shown escaped")
                out.setdefault(shown, fix(sub, path + (shown,), depth + 1))
            return out
        if isinstance(item, list):
            return [fix(sub, path + (index,), depth + 1) for index, sub in enumerate(item)]
        why = _problem(item)
        if why is None:
            return item
        if isinstance(item, str):
            notes.append(f"{_where(path)}: {why}, shown escaped")
            return display_text(item)
        notes.append(f"{_where(path)}: {why}, sent as text")
        return _int_text(item) if isinstance(item, int) else repr(item)

    # Recursion is bounded by max_depth (+1), so it cannot exhaust the stack.
    return fix(value, (), 1), notes
