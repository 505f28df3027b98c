"""What the echo client sends: the original app's random numbers, or sized payloads."""

from __future__ import annotations

import base64
import random

from echo.client.tracker import Kind


class Payloads:
    """Makes each message's payload.

    Without a ``size``, a random number as text, like the original app. With one,
    ``size`` random bytes (binary) or ``size`` random ASCII letters and digits (text),
    so each message is distinct and a reordered or stale echo cannot pass for the
    right one.
    """

    def __init__(self, size: int | None, binary: bool, rng: random.Random | None = None) -> None:
        self.size = size
        self.kind = Kind.BINARY if binary else Kind.TEXT
        self._rng = rng or random.Random()

    @property
    def largest(self) -> int:
        """An upper bound on a payload's length in bytes."""
        return self.size if self.size is not None else 32

    def make(self) -> bytes:
        if self.size is None:
            return repr(self._rng.random()).encode("ascii")
        if self.kind is Kind.BINARY:
            return self._rng.randbytes(self.size)
        raw = self._rng.randbytes(self.size * 3 // 4 + 3)
        return base64.b64encode(raw, altchars=b"-_")[: self.size]
