"""Fixtures: in-process apps on loopback and real server subprocesses."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from aiohttp.web_runner import BaseRunner

from echo.engine.fast.runner import EchoRunner
from echo.server import create_app, runner_options
from tests.support import TEST_SETTINGS, ServerFactory, ServerProcess, clean_env, free_port


class EchoTestServer(TestServer):
    """aiohttp's TestServer with the production runner (echo.engine.fast.runner.EchoRunner)."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        return EchoRunner(self.app, **kwargs)


@pytest.fixture
async def start_app() -> AsyncIterator[ServerFactory]:
    """Start ``create_app(settings)`` in-process on 127.0.0.1 as production runs it.

    ``plain_runner=True`` serves it with aiohttp's own runner instead, as adev's
    development server does: WebSockets then stay attached to their handler.
    """
    servers: list[TestServer] = []

    async def start(*, plain_runner: bool = False, **changes: Any) -> TestServer:
        settings = replace(TEST_SETTINGS, **changes)
        kind = TestServer if plain_runner else EchoTestServer
        server = kind(create_app(settings), host="127.0.0.1")
        await server.start_server(**runner_options(settings))
        servers.append(server)
        return server

    yield start
    while servers:
        await servers.pop().close()


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Factory: start a real server subprocess with the given settings (as env strings)."""
    started: list[ServerProcess] = []

    def start(ready: bool = True, **variables: str) -> ServerProcess:
        env = clean_env(
            HOST="127.0.0.1",
            PORT=str(free_port()),
            ALLOWED_ORIGINS="*",
            ALLOW_MISSING_ORIGIN="true",
        )
        env.update(variables)
        proc = ServerProcess(env, tmp_path, tmp_path / f"server-{len(started)}.log")
        started.append(proc)
        if ready:
            proc.wait_ready()
        return proc

    yield start
    for proc in started:
        proc.stop()
