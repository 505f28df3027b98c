"""The load generator of ``make bench``: one scenario against one server, result as JSON.

It speaks RFC 6455 over raw asyncio sockets (``asyncio.Protocol`` callbacks, frames
masked once before the run) instead of using aiohttp's client: the client is not what
is measured, and the less it spends per message the less it can become the bottleneck
that hides a difference between two servers. Every echoed frame is checked against the
exact opcode and payload sent, in order; anything else counts as an error. It offers no
extensions, so neither server compresses (both would offer permessage-deflate).

Frames and the upgrade request come from ``harness.frames``, the encoder the tests' raw
peer uses too. Run by ``bench.run`` as ``python -m bench.client '<json parameters>'``; it
reads the server's CPU time and memory from ``/proc/<server pid>`` at the edges of the
measured window and prints one JSON object.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import resource
import socket
import struct
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from echo.eventloop import loop_factory
from harness import frames
from harness.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    accept_value,
    encode_frame,
)

KEY = base64.b64encode(b"echo-bench-key16").decode()
ACCEPT = accept_value(KEY).encode()
MASK = b"\x37\xfa\x21\x3d"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
CONNECT_TIMEOUT = 30.0


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A complete masked client frame (FIN set), with the one fixed key."""
    return encode_frame(opcode, payload, key=MASK)


def upgrade_request(port: int) -> bytes:
    return frames.upgrade_request("127.0.0.1", port, origin=f"http://127.0.0.1:{port}", key=KEY)


def server_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` from /proc (clock-tick resolution)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def server_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


@dataclass(slots=True)
class Stats:
    """Counters shared by every connection of one run."""

    measuring: bool = False
    running: bool = True
    messages: int = 0
    errors: int = 0
    rtts: list[float] = field(default_factory=list)
    first_error: str = ""

    def error(self, what: str) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = what


@dataclass(frozen=True, slots=True)
class Plan:
    """What each connection sends, cycled: masked frames and the payloads expected back."""

    frames: list[bytes]
    opcode: int
    payloads: list[bytes]


class WsClient(asyncio.Protocol):
    """One WebSocket connection: upgrade, then keep ``in_flight`` echoes outstanding."""

    def __init__(self, port: int, stats: Stats, plan: Plan | None, in_flight: int) -> None:
        self.port = port
        self.stats = stats
        self.plan = plan
        self.in_flight = in_flight
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.upgraded = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.got_close = False
        self.closing = False
        self.next_send = 0
        self.next_expect = 0
        self.sent_at: deque[float] = deque()

    # -- asyncio callbacks ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        transport.write(upgrade_request(self.port))  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"connection lost before upgrade: {exc}"))
        elif self.stats.running and not self.closing:
            self.stats.error(f"connection lost during run: {exc}")
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.upgraded:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[: end + 4]).lower()
            del self.buf[: end + 4]
            if not head.startswith(b"http/1.1 101") or ACCEPT.lower() not in head:
                self.ready.set_exception(ConnectionError(f"bad upgrade: {head[:40]!r}"))
                self.abort()
                return
            self.upgraded = True
            self.ready.set_result(None)
        self.read_frames()

    # -- frames -----------------------------------------------------------------------

    def read_frames(self) -> None:
        buf = self.buf
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            b0 = buf[pos]
            n = buf[pos + 1]
            start = pos + 2
            if n & 0x80:
                self.fail("server frame is masked")
                return
            if n == 126:
                if end - start < 2:
                    break
                n = (buf[start] << 8) | buf[start + 1]
                start += 2
            elif n == 127:
                if end - start < 8:
                    break
                n = int.from_bytes(buf[start : start + 8], "big")
                start += 8
            if end - start < n:
                break
            pos = start + n
            if not self.on_frame(b0, buf, start, pos):
                return
        if pos:
            del buf[:pos]

    def on_frame(self, b0: int, buf: bytearray, start: int, stop: int) -> bool:
        opcode = b0 & 0x0F
        plan = self.plan
        if b0 & 0x70 or not b0 & 0x80:
            return self.fail(f"unexpected frame flags {b0:#x}")
        if opcode == OP_PING:
            assert self.transport is not None
            self.transport.write(client_frame(OP_PONG, bytes(buf[start:stop])))
            return True
        if opcode == OP_CLOSE:
            self.got_close = True
            if self.stats.running and not self.closing:
                return self.fail("server closed during run")
            self.abort()
            return False
        if plan is None or opcode != plan.opcode:
            return self.fail(f"unexpected opcode {opcode}")
        i = self.next_expect
        if buf[start:stop] != plan.payloads[i]:
            return self.fail("echoed payload differs from the one sent (bytes or order)")
        self.next_expect = (i + 1) % len(plan.payloads)
        sent = self.sent_at.popleft()
        stats = self.stats
        if stats.measuring:
            stats.messages += 1
            stats.rtts.append(time.perf_counter() - sent)
        if stats.running:
            self.send_next()
        return True

    def send_next(self) -> None:
        plan = self.plan
        assert plan is not None
        assert self.transport is not None
        i = self.next_send
        self.next_send = (i + 1) % len(plan.frames)
        self.sent_at.append(time.perf_counter())
        self.transport.write(plan.frames[i])

    def start(self) -> None:
        for _ in range(self.in_flight):
            self.send_next()

    def fail(self, what: str) -> bool:
        self.stats.error(what)
        self.abort()
        return False

    def close(self, code: int = 1000) -> None:
        self.closing = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(OP_CLOSE, struct.pack("!H", code)))

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    @property
    def drained(self) -> bool:
        return not self.sent_at


async def connect(port: int, stats: Stats, plan: Plan | None, in_flight: int) -> WsClient:
    loop = asyncio.get_running_loop()
    _transport, client = await loop.create_connection(
        lambda: WsClient(port, stats, plan, in_flight), "127.0.0.1", port
    )
    try:
        await asyncio.wait_for(asyncio.shield(client.ready), CONNECT_TIMEOUT)
    except BaseException:
        client.abort()
        raise
    sock = client.transport.get_extra_info("socket") if client.transport else None
    if sock is not None:  # close with RST: no TIME_WAIT left behind by a benchmark
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return client


async def connect_many(
    port: int, count: int, stats: Stats, plan: Plan | None, in_flight: int, parallel: int = 100
) -> list[WsClient]:
    gate = asyncio.Semaphore(parallel)

    async def one() -> WsClient:
        async with gate:
            return await connect(port, stats, plan, in_flight)

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def shut(clients: list[WsClient], stats: Stats) -> None:
    """Stop sending, let the in-flight echoes arrive, close, wait for the ends (bounded)."""
    stats.running = False
    for _ in range(1000):  # at most ten seconds
        if all(c.drained for c in clients):
            break
        await asyncio.sleep(0.01)
    for c in clients:
        c.close()
    if clients:
        await asyncio.wait([c.closed for c in clients], timeout=5)
    for c in clients:
        c.abort()


def percentiles(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    values.sort()
    last = len(values) - 1
    return values[round(0.50 * last)], values[round(0.99 * last)]


def make_plan(kind: str, size: int) -> Plan:
    """A cycle of distinct payloads, so a reordered or repeated echo is noticed."""
    if kind == "text":
        payloads = [f"{i:06d}".encode().ljust(size, b"x")[:size] for i in range(1024)]
        opcode = OP_TEXT
    else:
        payloads = [os.urandom(size) for _ in range(4)]
        opcode = OP_BINARY
    return Plan([client_frame(opcode, p) for p in payloads], opcode, payloads)


async def run_echo(p: dict[str, Any]) -> dict[str, Any]:
    stats = Stats()
    plan = make_plan(p["kind"], p["size"])
    clients = await connect_many(p["port"], p["connections"], stats, plan, p["in_flight"])
    for c in clients:
        c.start()
    await asyncio.sleep(p["warmup"])
    pid = p["server_pid"]
    cpu0, t0, own0 = server_cpu_seconds(pid), time.perf_counter(), own_cpu_seconds()
    stats.measuring = True
    await asyncio.sleep(p["duration"])
    stats.measuring = False
    cpu1, t1, own1 = server_cpu_seconds(pid), time.perf_counter(), own_cpu_seconds()
    await shut(clients, stats)
    p50, p99 = percentiles(stats.rtts)
    n = stats.messages
    return {
        "msgs_per_s": n / (t1 - t0),
        "rtt_p50_us": None if p50 is None else p50 * 1e6,
        "rtt_p99_us": None if p99 is None else p99 * 1e6,
        "cpu_s_per_1k": (cpu1 - cpu0) / n * 1000 if n else None,
        "server_cpu_pct": (cpu1 - cpu0) / (t1 - t0) * 100,
        "client_cpu_pct": (own1 - own0) / (t1 - t0) * 100,
        "messages": n,
        "errors": stats.errors,
        "first_error": stats.first_error,
    }


async def run_idle(p: dict[str, Any]) -> dict[str, Any]:
    stats = Stats()
    pid = p["server_pid"]
    warm = await connect_many(p["port"], 50, stats, make_plan("text", 32), 1)
    for c in warm:
        c.start()
    await asyncio.sleep(0.3)
    await shut(warm, stats)
    await asyncio.sleep(0.5)
    stats = Stats()
    rss0 = server_rss_bytes(pid)
    t0 = time.perf_counter()
    clients = await connect_many(p["port"], p["connections"], stats, None, 0)
    t1 = time.perf_counter()
    await asyncio.sleep(p["duration"])
    rss1 = server_rss_bytes(pid)
    stats.running = False
    for c in clients:
        c.abort()
    return {
        "rss_per_conn_kib": (rss1 - rss0) / len(clients) / 1024,
        "connections": len(clients),
        "rss_before_mib": rss0 / 2**20,
        "rss_after_mib": rss1 / 2**20,
        "connect_s": t1 - t0,
        "errors": stats.errors,
        "first_error": stats.first_error,
    }


async def run_handshakes(p: dict[str, Any]) -> dict[str, Any]:
    """Workers open, upgrade and close connections back to back."""
    stats = Stats()
    port = p["port"]

    async def worker() -> None:
        while stats.running:
            began = time.perf_counter()
            try:
                client = await connect(port, stats, None, 0)
            except (TimeoutError, OSError) as error:
                stats.error(f"handshake failed: {error!r}")
                continue
            upgraded = time.perf_counter()
            client.close()
            try:
                await asyncio.wait_for(asyncio.shield(client.closed), CONNECT_TIMEOUT)
            except TimeoutError:
                stats.error("no close after handshake")
            client.abort()
            if stats.measuring:
                stats.messages += 1
                stats.rtts.append(upgraded - began)

    workers = [asyncio.ensure_future(worker()) for _ in range(p["connections"])]
    await asyncio.sleep(p["warmup"])
    pid = p["server_pid"]
    cpu0, t0, own0 = server_cpu_seconds(pid), time.perf_counter(), own_cpu_seconds()
    stats.measuring = True
    await asyncio.sleep(p["duration"])
    stats.measuring = False
    cpu1, t1, own1 = server_cpu_seconds(pid), time.perf_counter(), own_cpu_seconds()
    stats.running = False
    await asyncio.wait(workers, timeout=CONNECT_TIMEOUT + 5)
    p50, p99 = percentiles(stats.rtts)
    n = stats.messages
    return {
        "handshakes_per_s": n / (t1 - t0),
        "rtt_p50_us": None if p50 is None else p50 * 1e6,
        "rtt_p99_us": None if p99 is None else p99 * 1e6,
        "cpu_s_per_1k": (cpu1 - cpu0) / n * 1000 if n else None,
        "server_cpu_pct": (cpu1 - cpu0) / (t1 - t0) * 100,
        "client_cpu_pct": (own1 - own0) / (t1 - t0) * 100,
        "handshakes": n,
        "errors": stats.errors,
        "first_error": stats.first_error,
    }


class Hog(asyncio.Protocol):
    """A peer streaming 125-byte frames as fast as the server reads them and reading
    every reply: what one greedy connection may cost the others. Replies are counted
    by their bytes (each is 127: a 2-byte header and the payload), not parsed, so the
    hog costs its load generator little."""

    REPLY = 127

    def __init__(self, port: int, opcode: int) -> None:
        self.port = port
        self.batch = client_frame(opcode, b"x" * 125) * 1000
        self.transport: asyncio.Transport | None = None
        self.head = bytearray()
        self.upgraded = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.received = 0
        self.paused = False
        self.running = True

    @property
    def replies(self) -> int:
        return self.received // self.REPLY

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        transport.write(upgrade_request(self.port))  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.running = False
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"connection lost before upgrade: {exc}"))

    def data_received(self, data: bytes) -> None:
        if self.upgraded:
            self.received += len(data)
            return
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            return
        if not self.head.lower().startswith(b"http/1.1 101"):
            self.ready.set_exception(ConnectionError(f"bad upgrade: {self.head[:40]!r}"))
            self.stop()
            return
        self.received = len(self.head) - end - 4
        self.upgraded = True
        self.ready.set_result(None)
        self.pump()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.pump()

    def pump(self) -> None:
        """Write until the transport pushes back (a few batches per loop turn)."""
        transport = self.transport
        if not self.running or transport is None or transport.is_closing():
            return
        for _ in range(8):
            if self.paused:
                return
            transport.write(self.batch)
        asyncio.get_running_loop().call_soon(self.pump)

    def stop(self) -> None:
        self.running = False
        if self.transport is not None:
            self.transport.abort()


async def run_fairness(p: dict[str, Any]) -> dict[str, Any]:
    """One bystander echoing 32 B, one message in flight, while a :class:`Hog` streams
    125-byte text messages (``kind`` text) or pings (``kind`` ping) and reads every
    reply: the bystander's round trips say how long the hog holds the server's loop."""
    stats = Stats()
    port = p["port"]
    bystander = await connect(port, stats, make_plan("text", 32), 1)
    loop = asyncio.get_running_loop()
    opcode = OP_PING if p["kind"] == "ping" else OP_TEXT
    _transport, hog = await loop.create_connection(lambda: Hog(port, opcode), "127.0.0.1", port)
    try:
        await asyncio.wait_for(asyncio.shield(hog.ready), CONNECT_TIMEOUT)
        bystander.start()
        await asyncio.sleep(p["warmup"])
        pid = p["server_pid"]
        cpu0, t0, hog0 = server_cpu_seconds(pid), time.perf_counter(), hog.replies
        stats.measuring = True
        await asyncio.sleep(p["duration"])
        stats.measuring = False
        cpu1, t1, hog1 = server_cpu_seconds(pid), time.perf_counter(), hog.replies
        # An echo still awaited at the end has waited at least this long (a starved
        # bystander may see none come back in the window).
        waiting = [t1 - bystander.sent_at[0]] if bystander.sent_at else []
        if not hog.running:
            stats.error("the hog's connection ended during the run")
    finally:
        hog.stop()
    await shut([bystander], stats)
    p50, p99 = percentiles(stats.rtts)
    n = stats.messages
    return {
        "rtt_max_ms": max(stats.rtts + waiting) * 1000 if stats.rtts or waiting else None,
        "rtt_p99_us": None if p99 is None else p99 * 1e6,
        "rtt_p50_us": None if p50 is None else p50 * 1e6,
        "hog_msgs_per_s": (hog1 - hog0) / (t1 - t0),
        "hog_per_bystander": (hog1 - hog0) / max(n, 1),
        "server_cpu_pct": (cpu1 - cpu0) / (t1 - t0) * 100,
        "messages": n,
        "errors": stats.errors,
        "first_error": stats.first_error,
    }


RUNNERS = {
    "echo": run_echo,
    "idle": run_idle,
    "handshake": run_handshakes,
    "fairness": run_fairness,
}


def main() -> None:
    params: dict[str, Any] = json.loads(sys.argv[1])
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        try:
            result = runner.run(RUNNERS[params["mode"]](params))
        except Exception as error:  # reported, not raised: the run goes on
            result = {"errors": 1, "first_error": f"load generator failed: {error!r}"}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
