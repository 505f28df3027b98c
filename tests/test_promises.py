"""Promises bare aiohttp keeps, kept under hostile and merely slow peers (issue 13).

- **Order**: every echo comes back in the order sent, also when the client pauses its
  reading now and then, so that the server's writes back up and its queue fills.
- **Bounded control replies**: a peer that floods pings (or pongs, or close frames,
  or pings between messages) and never reads cannot grow the server's memory by more than
  :data:`MEMORY_BOUND_MIB`, and a bystander keeps being served.
- **Fairness**: a peer streaming small frames (or pings) and reading the replies gets
  no bigger share of the server than bare aiohttp gives it, counted in its echoes per
  echo of a bystander, measured against ``bench.reference`` in the same test.

Every test runs a real server process over loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from tests.reliability.conftest import rss_kib
from tests.reliability.probes import echo_rtt
from tests.support import ServerProcess, free_port
from tests.wsraw import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    RawWebSocket,
    close_payload,
    encode_frame,
)

MIB = 1 << 20

# -- order ------------------------------------------------------------------------------

# Sizes that cross every frame-length encoding and the server's buffer limits.
SIZES = (0, 1, 7, 125, 126, 1000, 65535, 65536, 70_000, 300_000)


def numbered(i: int) -> bytes | str:
    """Message ``i``: its number in every byte it has room for, so an echo out of place
    never matches the one expected; even numbers binary, odd numbers text."""
    size = SIZES[i % len(SIZES)] if i % 3 == 0 else (i * 37) % 200
    stamp = f"{i:08d}|".encode()
    body = (stamp * (size // len(stamp) + 1))[:size]
    return body if i % 2 == 0 else body.decode()


def shown(data: bytes | str) -> str:
    """The number an echo carries (its first stamp), for the failure message."""
    text = data.decode(errors="replace") if isinstance(data, bytes) else str(data)
    return text[:8] or "(empty)"


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
                    if msg.data != numbered(i):
                        wrong.append((i, shown(msg.data)))
                        if len(wrong) >= 5:
                            break
                if not wrong:
                    await asyncio.wait_for(sender, 30)
            finally:
                sender.cancel()
    assert not wrong, f"echoes out of order (expected number, got): {wrong}"


# -- bounded control replies --------------------------------------------------------------

# What one peer that never reads may cost the server. The server holds about 1 MiB for
# it at most (aiohttp's queue pauses reading at 128 KiB, the parser's unparsed tail is
# one socket read, the transport's buffer pauses writes at 64 KiB); the rest is room
# for the allocator's noise. Without the bound a ping flood grew it by 100s of MiB.
MEMORY_BOUND_MIB = 16
STALL = 3.0  # a write that cannot drain for this long: the server stopped reading
FLOOD = 64 * MIB


async def flood(raw: RawWebSocket, frame: bytes, total: int) -> tuple[int, str]:
    """Write ``frame`` over and over, ``total`` bytes at most, never reading;
    (bytes sent, how it ended)."""
    batch = frame * (65536 // len(frame) + 1)
    sent = 0
    try:
        while sent < total:
            raw.writer.write(batch)
            await asyncio.wait_for(raw.writer.drain(), STALL)
            sent += len(batch)
    except TimeoutError:
        return sent, "backpressure"
    except ConnectionError:
        return sent, "dropped"
    return sent, "all sent"


def hostile_stream(control: str) -> bytes:
    """What a peer that never reads sends, over and over."""
    if control == "ping":
        return encode_frame(OP_PING, b"p" * 125)
    if control == "pong":
        return encode_frame(OP_PONG, b"p" * 125)
    if control == "close":
        return encode_frame(OP_CLOSE, close_payload(1000) + b"c" * 100)
    # Pings between small messages: echoes and pongs fill the way back, then pings
    # come while the server holds messages it cannot echo.
    return encode_frame(OP_BINARY, b"d" * 1024) + encode_frame(OP_PING, b"p" * 125) * 2000


@pytest.mark.parametrize("control", ["ping", "pong", "close", "pings-between-messages"])
async def test_a_peer_that_never_reads_cannot_grow_the_server(
    server_process: Callable[..., ServerProcess], control: str
) -> None:
    """Each ping asks for a pong, each close frame for a close reply; a pong asks for
    nothing. None of them may make the server buffer replies the peer does not read."""
    proc = server_process(MAX_MESSAGE_SIZE=str(64 * 1024))
    pid = proc.proc.pid
    before = peak = rss_kib(pid)
    raw = await RawWebSocket.connect("127.0.0.1", proc.port)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(proc.url) as bystander:
                flooding = asyncio.create_task(flood(raw, hostile_stream(control), FLOOD))
                rtts: list[float] = []
                while not flooding.done() and len(rtts) < 2000:
                    rtts.append(await echo_rtt(bystander))
                    peak = max(peak, rss_kib(pid))
                    await asyncio.sleep(0.02)
                sent, outcome = await flooding
                for _ in range(20):  # and once the flood has stopped
                    rtts.append(await echo_rtt(bystander))
                    peak = max(peak, rss_kib(pid))
    finally:
        raw.abort()
    growth = (peak - before) / 1024
    print(
        f"{control}: {sent / MIB:.1f} MiB sent ({outcome}), server RSS +{growth:.1f} MiB,"
        f" bystander {len(rtts)} echoes, median {statistics.median(rtts) * 1000:.1f} ms"
    )
    assert growth < MEMORY_BOUND_MIB, f"server RSS grew by {growth:.1f} MiB"
    if control == "close":  # the first one is answered and the connection closed
        assert outcome in ("backpressure", "dropped"), f"{sent / MIB:.1f} MiB accepted"
    elif control != "pong":  # pongs ask for nothing: the server may read them all
        assert outcome == "backpressure", f"{sent / MIB:.1f} MiB accepted without pushback"


# -- fairness -----------------------------------------------------------------------------

HOG_FRAME = 125  # the largest control frame; data frames of the same size
HOG_REPLY = 2 + HOG_FRAME  # the server's unmasked reply: a 2-byte header and the payload
BYSTANDER_ECHOES = 20
HOG_ECHOES_CAP = 400_000  # ends a run where the bystander is starved
FAIRNESS_FACTOR = 4  # how much more than bare aiohttp's share the hog may get


@dataclass
class Share:
    """One run: the hog's echoes and the bystander's, with the bystander's round trips."""

    hog: int
    bystander: int
    rtts: list[float]

    @property
    def per_bystander_echo(self) -> float:
        """Echoes the hog got for every echo the bystander got."""
        return self.hog / max(self.bystander, 1)

    def __str__(self) -> str:
        worst = max(self.rtts, default=0) * 1000
        return (
            f"{self.hog} hog echoes, {self.bystander} bystander echoes"
            f" ({self.per_bystander_echo:,.0f} per bystander echo; worst {worst:.0f} ms)"
        )


@contextlib.asynccontextmanager
async def hog(port: int, opcode: int) -> AsyncIterator[Callable[[], int]]:
    """A peer streaming 125-byte frames as fast as the server takes them and reading
    every reply; yields a function that counts the replies so far."""
    raw = await RawWebSocket.connect("127.0.0.1", port)
    payload = b"x" * HOG_FRAME
    batch = b"".join(encode_frame(opcode, payload) for _ in range(1000))
    received = 0

    async def write() -> None:
        while True:
            raw.writer.write(batch)
            await raw.writer.drain()

    async def read() -> None:
        nonlocal received
        while data := await raw.reader.read(1 << 18):
            received += len(data)

    tasks = [asyncio.create_task(write()), asyncio.create_task(read())]
    try:
        yield lambda: received // HOG_REPLY
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raw.abort()


async def share(port: int, opcode: int) -> Share:
    """Run the hog and a bystander doing one echo at a time, until the bystander has
    had BYSTANDER_ECHOES echoes or the hog HOG_ECHOES_CAP (a safety bound on time
    too); count both from when the hog is going at full speed."""
    async with hog(port, opcode) as hog_echoes, aiohttp.ClientSession() as session:
        async with session.ws_connect(f"ws://127.0.0.1:{port}/", compress=0) as bystander:
            deadline = time.monotonic() + 60
            while hog_echoes() < 20_000:  # warmed up
                assert time.monotonic() < deadline, "the hog is not being served"
                await asyncio.sleep(0.01)
            start = hog_echoes()
            rtts: list[float] = []
            while len(rtts) < BYSTANDER_ECHOES and hog_echoes() - start < HOG_ECHOES_CAP:
                assert time.monotonic() < deadline, "run did not end in time"
                rtts.append(await echo_rtt(bystander))
            return Share(hog_echoes() - start, len(rtts), rtts)


@pytest.fixture
def reference(tmp_path: Path) -> Iterator[ServerProcess]:
    """Bare aiohttp's echo (the benchmark's reference) as a subprocess."""
    env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(free_port())}
    proc = ServerProcess(env, tmp_path, tmp_path / "reference.log", module="bench.reference")
    try:
        proc.wait_ready(healthz=False)
        yield proc
    finally:
        proc.stop()


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_PING], ids=["text", "ping"])
async def test_a_streaming_peer_gets_no_bigger_share_than_on_bare_aiohttp(
    server_process: Callable[..., ServerProcess], reference: ServerProcess, opcode: int
) -> None:
    ours = await share(server_process().port, opcode)
    bare = await share(reference.port, opcode)
    print(f"ours: {ours}\nbare aiohttp: {bare}")
    assert ours.per_bystander_echo <= FAIRNESS_FACTOR * bare.per_bystander_echo, (
        f"the hog held the loop: ours {ours}; bare aiohttp {bare}"
    )
