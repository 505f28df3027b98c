"""Fixtures: in-process apps on loopback and real server subprocesses.

Both run the engine that ENGINE in the test process's environment names (auto, the
default, plain or fast), so ``ENGINE=plain make test`` runs every suite on the plain
engine. Tests that only make sense on one engine are marked ``only_engine("fast")``
(or "plain") and skipped on the other, with the reason shown.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from echo.engine import ENGINE_KEY
from echo.listeners import Listeners, runner_options, start
from echo.server import create_app
from tests.support import (
    TEST_SETTINGS,
    ServerFactory,
    ServerProcess,
    clean_env,
    engine_under_test,
    free_port,
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "only_engine(name, reason): run only where the server runs engine NAME",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    engine = engine_under_test()
    for item in items:
        marker = item.get_closest_marker("only_engine")
        if marker is not None and marker.args[0] != engine:
            why = marker.args[1] if len(marker.args) > 1 else ""
            item.add_marker(
                pytest.mark.skip(reason=f"{marker.args[0]} engine only ({engine} runs): {why}")
            )


class AppServer:
    """``create_app(settings)`` served in-process as production serves it: the engine's
    runner behind echo.listeners on 127.0.0.1."""

    def __init__(self, app: web.Application, runner: web.AppRunner, listeners: Listeners) -> None:
        self.app = app
        self.runner = runner
        self.listeners = listeners
        self.host = "127.0.0.1"
        self.port = int(listeners.addresses[0][1])

    @property
    def engine(self) -> str:
        return str(self.app[ENGINE_KEY].name)

    def make_url(self, path: str) -> URL:
        return URL(f"http://{self.host}:{self.port}").join(URL(path))

    async def close(self) -> None:
        self.listeners.close()
        await self.runner.cleanup()
        # The transports closed by the cleanup finish closing in callbacks of the next
        # loop iteration; let them run before the test's loop is closed.
        await asyncio.sleep(0)
        await asyncio.sleep(0)


@pytest.fixture
async def start_app() -> AsyncIterator[ServerFactory]:
    """Start ``create_app(settings)`` in-process on 127.0.0.1 as production runs it.

    ``plain_runner=True`` serves it with aiohttp's own TestServer (runner and sites)
    instead, as adev's development server does: no listeners of ours, no gate.
    """
    servers: list[AppServer | TestServer] = []

    async def start_server(*, plain_runner: bool = False, **changes: Any) -> Any:
        settings = replace(TEST_SETTINGS, engine=engine_under_test(), **changes)
        app = create_app(settings)
        if plain_runner:
            test_server = TestServer(app, host="127.0.0.1")
            await test_server.start_server(**runner_options(settings))
            servers.append(test_server)
            return test_server
        runner, listeners = await start(app, settings)
        server = AppServer(app, runner, listeners)
        servers.append(server)
        return server

    yield start_server
    while servers:
        await servers.pop().close()


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Factory: start a real server subprocess with the given settings (as env strings)."""
    started: list[ServerProcess] = []

    def start_process(ready: bool = True, **variables: str) -> ServerProcess:
        env = clean_env(
            HOST="127.0.0.1",
            PORT=str(free_port()),
            ALLOWED_ORIGINS="*",
            ALLOW_MISSING_ORIGIN="true",
            ENGINE=os.environ.get("ENGINE", "auto"),
        )
        env.update(variables)
        proc = ServerProcess(env, tmp_path, tmp_path / f"server-{len(started)}.log")
        started.append(proc)
        if ready:
            proc.wait_ready()
        return proc

    yield start_process
    for proc in started:
        proc.stop()
