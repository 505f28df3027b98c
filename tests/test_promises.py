"""Promises bare aiohttp keeps, kept under hostile and merely slow peers (issue 13).

- **Order**: every echo comes back in the order sent, also when the client pauses its
  reading now and then, so that the server's writes back up and its queue fills.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp

from tests.support import ServerProcess

# Sizes that cross every frame-length encoding and the server's buffer limits.
SIZES = (0, 1, 7, 125, 126, 1000, 65535, 65536, 70_000, 300_000)


def numbered(i: int) -> bytes | str:
    """Message ``i``: its number in every byte it has room for, so an echo out of place
    never matches the one expected; even numbers binary, odd numbers text."""
    size = SIZES[i % len(SIZES)] if i % 3 == 0 else (i * 37) % 200
    stamp = f"{i:08d}|".encode()
    body = (stamp * (size // len(stamp) + 1))[:size]
    return body if i % 2 == 0 else body.decode()


async def test_echoes_stay_in_order_when_the_reader_pauses(
    server_process: Callable[..., ServerProcess],
) -> None:
    count = 4000
    every = 200  # echoes between two pauses of the reader
    proc = server_process()
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(proc.url, compress=0, max_msg_size=0) as ws:

            async def send_all() -> None:
                for i in range(count):
                    message = numbered(i)
                    if isinstance(message, str):
                        await ws.send_str(message)
                    else:
                        await ws.send_bytes(message)

            sender = asyncio.create_task(send_all())
            wrong: list[tuple[int, str]] = []
            try:
                for i in range(count):
                    if i % every == every - 1:
                        await asyncio.sleep(0.05)  # stop reading: the server's writes back up
                    msg = await ws.receive(timeout=30)
                    expected = numbered(i)
                    if msg.data != expected:
                        wrong.append((i, str(msg.data)[:9]))
                        if len(wrong) >= 5:
                            break
                if not wrong:
                    await asyncio.wait_for(sender, 30)
            finally:
                sender.cancel()
    assert not wrong, f"echoes out of order (expected number, got): {wrong}"
