"""Which engine runs (echo.engine.choose): ENGINE=auto|plain|fast, the fallback when the
fast engine is not proven, and where the running one is named."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from echo.engine import EngineUnavailable, choose
from echo.engine.plain import PlainSession
from echo.server import SERVER_KEY
from harness.process import ServerProcess
from tests.support import ServerFactory, clean_env, engine_under_test, free_port, run_server_briefly

# A server started with the fast engine's version check (or one of its self-checks)
# made to fail, as on an aiohttp release it is not tested against.
FORCED = {
    "version": "import echo.engine.fast as fast\nfast.TESTED_AIOHTTP = ('0.0.0',)\n",
    "self-check": (
        "import echo.engine.fast.checks as checks\n"
        "checks._NEEDED = (*checks._NEEDED, (checks.web.WebSocketResponse, '_gone'))\n"
    ),
}
RUN_SERVER = "from echo.server import main\nmain()\n"


def forced_fallback(tmp_path: Path, check: str, **variables: str) -> ServerProcess:
    """A real server process whose fast engine ``check`` fails."""
    (tmp_path / "forced_fallback.py").write_text(FORCED[check] + RUN_SERVER)
    env = clean_env(
        HOST="127.0.0.1", PORT=str(free_port()), ALLOW_MISSING_ORIGIN="true", **variables
    )
    return ServerProcess(env, tmp_path, tmp_path / "server.log", module="forced_fallback")


def healthz(proc: ServerProcess) -> dict[str, object]:
    with urllib.request.urlopen(f"{proc.http}/healthz", timeout=5) as response:
        result: dict[str, object] = json.loads(response.read())
        return result


@pytest.mark.parametrize("check", ["version", "self-check"])
async def test_auto_falls_back_to_the_plain_engine_with_one_warning(
    tmp_path: Path, check: str
) -> None:
    proc = forced_fallback(tmp_path, check, ENGINE="auto")
    try:
        proc.wait_ready()
        assert healthz(proc)["engine"] == "plain"
        async with aiohttp.ClientSession() as session, session.ws_connect(proc.url) as ws:
            await ws.send_str("still echoed")
            assert (await ws.receive(timeout=5)).data == "still echoed"
        warnings = [line for line in proc.log().splitlines() if " WARNING " in line]
        assert len(warnings) == 1, proc.log()
        assert "fast engine not used: aiohttp " in warnings[0]
        assert "serving on the plain engine" in warnings[0]
        assert "(WebSocket ws://127.0.0.1:" in proc.log()
        assert ", plain engine)" in proc.log()
    finally:
        proc.stop()


def test_engine_fast_where_it_is_not_proven_exits_2_with_one_line(tmp_path: Path) -> None:
    proc = forced_fallback(tmp_path, "version", ENGINE="fast")
    try:
        assert proc.wait(15) == 2
        lines = proc.log().strip().splitlines()
        assert lines == [
            "echo-server: ENGINE=fast is not available: aiohttp " + lines[0].split("aiohttp ", 1)[1]
        ]
        assert "is not a release it is tested against (0.0.0)" in lines[0]
    finally:
        proc.stop()


def test_a_bad_engine_setting_exits_2_with_one_line(tmp_path: Path) -> None:
    result = run_server_briefly(clean_env(ENGINE="turbo"), tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        "echo-server: invalid ENGINE='turbo': expected one of auto, plain, fast\n"
    )


def test_choose() -> None:
    assert choose("plain") == "plain"
    warned: list[str] = []
    picked = choose("auto", warn=warned.append)
    assert picked in ("plain", "fast")
    assert (picked == "plain") == bool(warned)
    if picked == "plain":
        with pytest.raises(EngineUnavailable):
            choose("fast")


async def test_healthz_names_the_engine(start_app: ServerFactory) -> None:
    server = await start_app()
    async with aiohttp.ClientSession() as session:
        async with session.get(server.make_url("/healthz")) as response:
            assert (await response.json())["engine"] == engine_under_test()


@pytest.mark.only_engine("fast", "the plain engine serves every connection itself")
@pytest.mark.parametrize(
    ("compress", "plain_path"), [(0, False), (15, True)], ids=["plain-frames", "deflate"]
)
async def test_the_fast_engine_hands_compressed_connections_to_the_plain_path(
    start_app: ServerFactory, compress: int, plain_path: bool
) -> None:
    from echo.engine.fast.engine import FastEngine  # imports aiohttp 3.14's internals

    server = await start_app()
    echo = server.app[SERVER_KEY]
    assert isinstance(echo.engine, FastEngine)
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(server.make_url("/"), compress=compress) as ws,
    ):
        await ws.send_str("which path?")
        assert (await ws.receive(timeout=5)).data == "which path?"
        (handle,) = echo.connections
        assert isinstance(handle, PlainSession) == plain_path
