"""Readiness (``GET /readyz``) and the drain that comes before shutdown (DRAIN_DELAY).

``/healthz`` says the process is alive; ``/readyz`` says whether it takes new
WebSockets: 200 until a stop signal, 503 from then on. On SIGTERM the server first
turns not ready and keeps serving for DRAIN_DELAY: open WebSockets echo as before, the
page, the HTTP echo and /healthz answer, and new handshakes get 503 with Retry-After,
which the client retries elsewhere or later. That is the time a load balancer or
Kubernetes needs to stop sending new connections here (Kubernetes removes a terminating
pod from its Service's endpoints at the same moment it sends SIGTERM, and proxies learn
it a few seconds later). Only then does the shutdown proper stop listening and close
the WebSockets with 1001.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import hdrs, web

from echo.logs import event

log = logging.getLogger("echo.readiness")


class Readiness:
    """Whether this process takes new WebSockets: ready until it starts draining."""

    def __init__(self) -> None:
        self.draining = False

    async def readyz(self, _request: web.Request) -> web.Response:
        """``GET /readyz``: 200 ``{"status": "ready"}``, or 503 ``{"status": "draining"}``."""
        if self.draining:
            status, text = 503, "draining"
        else:
            status, text = 200, "ready"
        return web.json_response(
            {"status": text}, status=status, headers={hdrs.CACHE_CONTROL: "no-store"}
        )

    async def drain(self, delay: float, cut_short: asyncio.Event | None = None) -> None:
        """Turn not ready, then keep serving for ``delay`` seconds.

        ``cut_short`` (a second stop signal) ends the wait early; a delay of 0 only
        turns the process not ready.
        """
        self.draining = True
        if delay <= 0:
            return
        log.info(
            "draining for %.3f s: /readyz answers 503, new WebSockets are refused",
            delay,
            extra=event("draining", delay=delay),
        )
        if cut_short is None:
            await asyncio.sleep(delay)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(cut_short.wait(), delay)


READINESS_KEY = web.AppKey("echo_readiness", Readiness)  # set by echo.server.create_app
