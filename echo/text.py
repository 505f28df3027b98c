"""Safe rendering of untrusted text for log lines and error messages."""

from __future__ import annotations


def preview(value: str | bytes, limit: int = 120) -> str:
    """Quote ``value`` with control and non-ASCII characters escaped, cut to ``limit`` chars.

    The result is a single printable line whatever the input holds, so peer-controlled
    bytes (origins, paths, message previews) can never forge or break a log line.
    """
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value[: limit + 1])
        text = repr(raw)
    else:
        text = repr(value[: limit + 1]).encode("ascii", "backslashreplace").decode("ascii")
    # Escapes can make even a short value ten times longer; the cut applies to the result.
    if len(value) > limit or len(text) > limit + 2:
        return f"{text[: limit + 2]}...({len(value)} total)"
    return text


_CONTROLS = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F)}


def escape(text: str) -> str:
    """``text`` as printable ASCII: control and non-ASCII characters as backslash escapes
    (``\\x1b``, ``\\u202e``), everything else as it is (no quotes added, unlike
    :func:`preview`). For whole log lines, whoever wrote them."""
    if text.isascii() and text.isprintable():
        return text
    return text.translate(_CONTROLS).encode("ascii", "backslashreplace").decode("ascii")


def cut(text: str, limit: int, *, keep_end: bool = False) -> str:
    """``text`` cut to at most ``limit`` characters, the cut marked ``...(N total)``;
    ``keep_end`` keeps its end instead of its start (for tracebacks)."""
    if len(text) <= limit:
        return text
    marker = f"...({len(text)} total)"
    room = max(limit - len(marker), 0)
    return marker + text[len(text) - room :] if keep_end else text[:room] + marker
