"""The bare aiohttp echo that ``make bench`` measures the real server against.

Deliberately naive: default :class:`aiohttp.web.WebSocketResponse` settings (no
heartbeat, deflate offered, text decoded and re-encoded) and the textbook
``async for msg in ws: await ws.send_*`` loop, on the same event loop (uvloop) and with
the same runner options that matter for speed (no access log, backlog 1024) as
``echo.server``. Usage: ``PORT=8081 python -m bench.reference`` (on 127.0.0.1; HOST
changes the address).
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal

from aiohttp import WSMsgType, web

from echo.eventloop import loop_factory


async def handler(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type is WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type is WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


async def serve(host: str, port: int) -> None:
    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await web.TCPSite(runner, host, port, backlog=1024).start()
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(serve(os.environ.get("HOST", "127.0.0.1"), int(os.environ["PORT"])))


if __name__ == "__main__":
    main()
