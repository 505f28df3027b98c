"""Instructions per handshake of a server, counted exactly: ``python -m bench.callgrind``.

Wall-clock ratios move by about 5% on a shared machine, more than most single changes
to the handshake; instruction counts do not. The server (``python -m echo.server``, or
``--module bench.reference`` for bare aiohttp) runs under valgrind's callgrind, as the
benchmark configures it (fast engine unless ENGINE says otherwise), and is sent FEW,
then in a second run FEW + MANY handshakes, one after the other: connect, the upgrade
request, a close frame, wait for the server's close. The difference of the two totals,
divided by MANY, is what one handshake costs: start-up and shutdown cancel out.
PYTHONHASHSEED is fixed, so repeated runs agree within a few hundred instructions.

Needs valgrind; a run of the defaults takes about a minute. Usage:
``python -m bench.callgrind [--module M] [--few N] [--many N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.client import ACCEPT, client_frame, upgrade_request
from harness.frames import OP_CLOSE
from harness.ports import free_port
from harness.process import child_env

TIMEOUT = 30.0


async def handshakes(port: int, count: int) -> None:
    """``count`` WebSocket handshakes and closes against ``port``, one at a time."""
    close = client_frame(OP_CLOSE, struct.pack("!H", 1000))
    for _ in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(upgrade_request(port))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        if not head.startswith(b"HTTP/1.1 101") or ACCEPT.lower() not in head.lower():
            raise RuntimeError(f"bad upgrade: {head[:60]!r}")
        writer.write(close)
        frame = await asyncio.wait_for(reader.readexactly(4), TIMEOUT)
        if frame[0] != 0x88:
            raise RuntimeError(f"no close frame: {frame!r}")
        await asyncio.wait_for(reader.read(), TIMEOUT)  # the server closes
        writer.transport.abort()


def instructions(module: str, count: int, workdir: Path) -> int:
    """The instructions the server ``module`` ran in all, ``count`` handshakes served."""
    port = free_port()
    out = workdir / f"callgrind-{count}.out"
    env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "ALLOWED_ORIGINS": "*",
        "ALLOW_MISSING_ORIGIN": "true",
        "MAX_CONNECTIONS": "200",
        "LOG_LEVEL": "warning",
        "PYTHONHASHSEED": "0",
    }
    env.setdefault("ENGINE", "fast")
    command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    server = subprocess.Popen(
        [*command, sys.executable, "-m", module],
        env=child_env(env),
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the server did not start") from None
                time.sleep(0.5)
        time.sleep(1)
        asyncio.run(handshakes(port, count))
        time.sleep(0.5)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(120)
    totals = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.MULTILINE)
    if totals is None:
        raise RuntimeError(f"no total in {out}")
    return int(totals.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.callgrind", description=__doc__)
    parser.add_argument("--module", default="echo.server", help="the server module")
    parser.add_argument("--few", type=int, default=300)
    parser.add_argument("--many", type=int, default=1300)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="echo-callgrind-") as tmp:
        few = instructions(args.module, args.few, Path(tmp))
        both = instructions(args.module, args.few + args.many, Path(tmp))
    per = (both - few) / args.many
    print(f"{args.module}: {per / 1000:.1f}k instructions per handshake ({few:,} / {both:,})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
