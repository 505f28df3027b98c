"""What a terminal may be shown of a peer's bytes: escaped, bounded, one line.

A server controls what it sends; written raw to a terminal, escape sequences could
clear the screen, move the cursor, retitle the window or fake the prompt. Text keeps
its printable characters (any script), and everything else (C0 and C1 controls, DEL,
the bidirectional overrides that reorder a line, lone surrogates) is shown as a Python
escape. Binary is shown as hex.
"""

from __future__ import annotations

import time

TEXT_LIMIT = 1000  # characters of a text message shown
BINARY_LIMIT = 32  # bytes of a binary message shown (96 columns of hex)
_BIDI = frozenset(chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F))


_NAMED = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    named = _NAMED.get(char)
    if named is not None:
        return named
    if char.isprintable() and char not in _BIDI:
        return char
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def safe_text(text: str, limit: int = TEXT_LIMIT) -> str:
    """``text`` with anything a terminal would act on escaped, cut to ``limit`` chars."""
    shown = "".join(_escape(c) for c in text[:limit])
    if len(text) > limit:
        shown += f"... ({len(text)} characters)"
    return shown


def show_text(data: bytes, limit: int = TEXT_LIMIT) -> str:
    """A text message's bytes (UTF-8; anything else shown escaped)."""
    return safe_text(data.decode("utf-8", "backslashreplace"), limit)


def show_binary(data: bytes, limit: int = BINARY_LIMIT) -> str:
    """The first ``limit`` bytes in hex, pairs separated by spaces."""
    shown = data[:limit].hex(" ")
    return shown + (" ..." if len(data) > limit else "")


def clock(now: float | None = None) -> str:
    """``HH:MM:SS.mmm`` local time, the prefix of every interactive line."""
    now = time.time() if now is None else now
    return time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"
