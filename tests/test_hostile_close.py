"""A peer that never reads cannot hold its slot or descriptor once the server closes.

Each test connects a raw peer with a small receive buffer that sends a large message
and never reads: the echo fills the buffers and the server's transport pauses writing.
Then the server closes the connection for one reason (a test control, a frame past
the size limit, the heartbeat, SIGTERM). Its close frame cannot go out and the peer
never answers, so only the server's own bound (CLOSE_TIMEOUT, then the transport is
aborted) ends it: the connection count of /healthz returns to 0, the process holds no
socket for it, and the close line is logged, each polled with a deadline.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from echo.listeners import CLOSE_TIMEOUT
from harness.frames import OP_BINARY, encode_frame, upgrade_request
from harness.process import ServerProcess

BIG = 4 << 20  # the echo of this cannot fit in the socket buffers
LIMIT = str(8 << 20)
# CLOSE_TIMEOUT and slack for a busy machine; the unbounded paths never end at all.
BOUND = 2 * CLOSE_TIMEOUT + 15


@contextmanager
def stalled_peer(port: int, query: str = "") -> Iterator[socket.socket]:
    """A connection that sent one BIG message and reads nothing from then on."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    try:
        sock.connect(("127.0.0.1", port))
        path = f"/?{query}" if query else "/"
        sock.sendall(upgrade_request("127.0.0.1", port, path=path))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(1)  # byte by byte: no frame bytes read past the head
            assert chunk, "closed during the handshake"
            head += chunk
        assert b" 101 " in head.split(b"\r\n", 1)[0], head
        sock.sendall(encode_frame(OP_BINARY, bytes(BIG)))
        yield sock
    finally:
        sock.close()


def connections(server: ServerProcess) -> int:
    with urllib.request.urlopen(f"{server.http}/healthz", timeout=5) as response:
        return int(json.load(response)["connections"])


def sockets_of(pid: int) -> int:
    """The sockets the process holds open (listeners included)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                count += 1
        except OSError:
            pass  # closed meanwhile
    return count


def poll(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.1)


def close_lines(server: ServerProcess) -> list[str]:
    return re.findall(r"close id=\S+ code=\S+ [^\n]*", server.log())


def assert_released(server: ServerProcess, baseline: int) -> None:
    """The slot, the descriptor and the close line, each within BOUND."""
    poll(lambda: connections(server) == 0, BOUND, "the connection count back to 0")
    poll(lambda: sockets_of(server.pid) <= baseline, BOUND, "the socket closed")
    poll(lambda: close_lines(server), BOUND, "a close line")


def test_a_test_control_close(server_process: Callable[..., ServerProcess]) -> None:
    server = server_process(MAX_MESSAGE_SIZE=LIMIT)
    baseline = sockets_of(server.pid)
    with stalled_peer(server.port, "close_after_ms=300"):
        poll(lambda: connections(server) == 1, 10, "connected")
        assert_released(server, baseline)
    assert "code=1000 sent=1000" in close_lines(server)[0]


def test_a_frame_past_the_limit(server_process: Callable[..., ServerProcess]) -> None:
    server = server_process(MAX_MESSAGE_SIZE=LIMIT)
    baseline = sockets_of(server.pid)
    with stalled_peer(server.port) as sock:
        poll(lambda: connections(server) == 1, 10, "connected")
        # A header that declares more than MAX_MESSAGE_SIZE: the server fails it (1009).
        sock.sendall(b"\x82\xff" + (16 << 20).to_bytes(8, "big") + b"\x00\x00\x00\x00")
        assert_released(server, baseline)
    assert "code=1009 sent=1009" in close_lines(server)[0]


def test_the_heartbeat(server_process: Callable[..., ServerProcess]) -> None:
    server = server_process(MAX_MESSAGE_SIZE=LIMIT, HEARTBEAT_INTERVAL="1000")
    baseline = sockets_of(server.pid)
    with stalled_peer(server.port):
        poll(lambda: connections(server) == 1, 10, "connected")
        assert_released(server, baseline)
    assert "code=1006" in close_lines(server)[0]


def test_sigterm(server_process: Callable[..., ServerProcess]) -> None:
    """The shutdown's own bound (SHUTDOWN_TIMEOUT) is far: CLOSE_TIMEOUT ends it."""
    server = server_process(MAX_MESSAGE_SIZE=LIMIT, SHUTDOWN_TIMEOUT="60000")
    with stalled_peer(server.port):
        poll(lambda: connections(server) == 1, 10, "connected")
        server.signal(signal.SIGTERM)
        poll(lambda: close_lines(server), BOUND, "a close line")
        assert server.wait(BOUND) == 0
    assert "code=1001 sent=1001" in close_lines(server)[0]
