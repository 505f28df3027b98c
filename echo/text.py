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
