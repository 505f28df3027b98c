"""One heartbeat timer per process instead of one per connection.

aiohttp arms a timer (a ``TimerHandle`` on the loop's heap) for every WebSocket with a
heartbeat, pushes it back as data arrives, and cancels it at the close: about 0.6 KiB
per idle connection and a heap insert and removal per handshake (about 3% of the
server's time per handshake when measured). :class:`Heartbeat` keeps the connections
in ``SLOTS`` groups instead and visits one group every ``interval / SLOTS`` seconds,
so each connection is visited once per interval. A connection that received anything
since its last visit is left alone; a silent one gets aiohttp's own heartbeat
(``WebSocketResponse._send_heartbeat``: the ping, and the pong timeout after half the
interval that closes the connection with 1006). A ping thus goes out after between one
and two intervals of silence, as with aiohttp's rescheduling timer, and pings to many
idle connections are spread over the interval rather than sent in one burst.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Protocol

SLOTS = 10


class Beating(Protocol):
    """What the heartbeat needs of a connection (echo.engine.fast.fastpath.EchoResponse)."""

    def beat(self) -> None:
        """Ping if silent since the last beat, else start a new silent period."""


class Heartbeat:
    """The heartbeat of every connection of one app, driven by a single timer."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._slots: list[dict[int, Beating]] = [{} for _ in range(SLOTS)]
        self._next_slot = itertools.cycle(range(SLOTS))
        self._tick = 0
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return sum(map(len, self._slots))

    def add(self, ws: Beating) -> int:
        """Start beating ``ws``; the returned slot is what :meth:`discard` needs."""
        slot = next(self._next_slot)
        self._slots[slot][id(ws)] = ws
        return slot

    def discard(self, ws: Beating, slot: int) -> None:
        self._slots[slot].pop(id(ws), None)

    def start(self) -> None:
        """Begin visiting (from inside the running loop)."""
        if self._timer is None:
            self._schedule(asyncio.get_running_loop())

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = loop.call_later(self.interval / SLOTS, self._visit, loop)

    def _visit(self, loop: asyncio.AbstractEventLoop) -> None:
        self._schedule(loop)
        slot = self._slots[self._tick]
        self._tick = (self._tick + 1) % SLOTS
        for ws in list(slot.values()):  # a beat may end a connection, leaving its slot
            ws.beat()
