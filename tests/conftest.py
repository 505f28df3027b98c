"""Fixtures: in-process apps on loopback and real server subprocesses."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from echo.server import create_app, runner_options
from tests.support import TEST_SETTINGS, ServerFactory, ServerProcess, clean_env, free_port


@pytest.fixture
def start_app(aiohttp_server: Any) -> ServerFactory:
    """Start ``create_app(settings)`` in-process on 127.0.0.1 with the production runner options."""

    async def start(**changes: Any) -> TestServer:
        settings = replace(TEST_SETTINGS, **changes)
        server: TestServer = await aiohttp_server(create_app(settings), **runner_options(settings))
        return server

    return start


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
