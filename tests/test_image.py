"""The container image, built with podman and run as a user or Kubernetes would run it.

Slow (a base image, a build, several containers) and in need of podman, runc and
debootstrap, so it runs under ``make image-test`` (IMAGE_TEST=1), which CI calls; plain
``make test`` skips it and says so. tests/image_support.py has the harness.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import WSMsgType

from tests.image_support import (
    BASE_IMAGE,
    ROOT,
    Container,
    Podman,
    build_context,
    build_image,
    cache_dir,
    ensure_base_image,
)
from tests.support import free_port
from tests.wsraw import OP_TEXT, RawWebSocket

pytestmark = pytest.mark.skipif(
    os.environ.get("IMAGE_TEST") != "1",
    reason="the container image tests run under `make image-test` (podman; a few minutes)",
)

TAG = "localhost/echo:test"
BUILD_STAGE_TAG = "localhost/echo:test-build-stage"
UID = 10001
CANARY = "canary-4f1c9e0b-never-in-the-image"  # planted in .env in the build context
REPORT = ROOT / "reports" / "image.txt"
DEPLOYMENT = ROOT / "deploy" / "kubernetes" / "deployment.yaml"


def report(line: str) -> None:
    """A figure for the person running ``make image-test`` (printed at the end)."""
    REPORT.parent.mkdir(exist_ok=True)
    with REPORT.open("a") as file:
        file.write(line + "\n")


@dataclass(frozen=True)
class Image:
    podman: Podman
    id: str


def image_id_of(podman: Podman, tag: str) -> str:
    """The id of the image ``tag`` names, or "" if there is none."""
    found = podman.run("image", "inspect", "--format", "{{.Id}}", tag, check=False)
    return found.stdout.strip() if found.returncode == 0 else ""


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    REPORT.unlink(missing_ok=True)
    podman = Podman(cache_dir())
    for step, seconds in ensure_base_image(podman).items():
        report(f"base image {step}: {seconds:.1f} s")
    context = build_context(
        tmp_path_factory.mktemp("context") / "echo", {".env": f"SECRET_TOKEN={CANARY}\n"}
    )
    tags = (TAG, BUILD_STAGE_TAG)
    previous = {image_id_of(podman, tag) for tag in tags}
    seconds = build_image(podman, context, TAG, BASE_IMAGE)
    # The build stage under a tag of its own (from the layer cache, a second or two):
    # untagged, it would be a dangling image that nothing tells from an old one.
    build_image(podman, context, BUILD_STAGE_TAG, BASE_IMAGE, target="build")
    current = {image_id_of(podman, tag) for tag in tags}
    for old_id in previous - current - {""}:  # the last run's, so the cache does not grow
        podman.run("rmi", old_id, check=False)
    image_id = image_id_of(podman, TAG)
    size = podman.image_size(image_id)
    report(f"image build: {seconds:.1f} s")
    report(f"image size: {size / 1e6:.1f} MB (base {podman.image_size(BASE_IMAGE) / 1e6:.1f} MB)")
    return Image(podman, image_id)


@pytest.fixture
def containers(image: Image) -> Iterator[list[Container]]:
    """Containers a test starts; removed afterwards whatever happened."""
    started: list[Container] = []
    yield started
    for container in started:
        container.remove()


def start(
    image: Image,
    started: list[Container],
    env: dict[str, str] | None = None,
    options: tuple[str, ...] = ("--read-only", "--read-only-tmpfs=false"),
) -> Container:
    """A container of the image on a free loopback port, serving; by default with a
    read-only root filesystem and no writable tmpfs at all."""
    container = Container(image.podman, image.id, free_port(), env or {}, options)
    started.append(container)
    container.start()
    container.wait_ready()
    return container


def new_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as response:
        return response.status, await response.text()


async def until_status(session: aiohttp.ClientSession, url: str, status: int) -> None:
    deadline = time.monotonic() + 15
    while (await get(session, url))[0] != status:
        assert time.monotonic() < deadline, f"{url} never answered {status}"
        await asyncio.sleep(0.05)


async def handshake_head(port: int, origin: str | None = None) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(RawWebSocket.upgrade_request("127.0.0.1", port, origin))
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    finally:
        writer.close()
        await writer.wait_closed()


def uids(pid: int) -> list[int]:
    """Real, effective, saved and filesystem UIDs of a host process, from /proc."""
    status = (Path("/proc") / str(pid) / "status").read_text()
    match = re.search(r"^Uid:\s+(.+)$", status, re.MULTILINE)
    assert match is not None
    return [int(field) for field in match.group(1).split()]


def stop_in_background(container: Container, grace: int) -> tuple[threading.Thread, list[Any]]:
    """``podman stop`` in a thread (it blocks until the container is gone)."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(container.stop(grace))
        except Exception as error:  # surfaced by the test that joins
            outcome.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def finished_stop(thread: threading.Thread, outcome: list[Any], grace: int) -> tuple[int, float]:
    thread.join(grace + 90)
    assert not thread.is_alive(), "podman stop did not return"
    (result,) = outcome
    if isinstance(result, Exception):
        raise result
    code, seconds = result
    return int(code), float(seconds)


def test_image_is_configured_as_documented(image: Image) -> None:
    config = json.loads(
        image.podman.run("image", "inspect", "--format", "{{json .Config}}", image.id).stdout
    )
    assert config["User"] == f"{UID}:{UID}"
    assert "8080/tcp" in config["ExposedPorts"]
    assert config["StopSignal"] in ("SIGTERM", "15")
    assert config["Entrypoint"] == ["echo-server"]
    assert config["WorkingDir"] == "/srv/echo"
    health = json.loads(
        image.podman.run("image", "inspect", "--format", "{{json .HealthCheck}}", image.id).stdout
    )
    assert health["Test"] == ["CMD", "echo-healthcheck"]
    assert not [v for v in config["Env"] if v.startswith("PIP_") or CANARY in v]


def test_image_holds_no_secret_source_or_build_tool(image: Image) -> None:
    script = textwrap.dedent(
        f"""
        import importlib.util, os, shutil, sys
        found = []
        for top in ("/opt", "/srv", "/etc", "/root", "/tmp", "/var", "/home", "/usr/local"):
            for folder, dirs, files in os.walk(top):
                for name in files:
                    path = os.path.join(folder, name)
                    if name == ".env":
                        found.append("env file " + path)
                    try:
                        with open(path, "rb") as f:
                            if b"{CANARY}" in f.read():
                                found.append("canary in " + path)
                    except OSError:
                        pass
        for tool in ("gcc", "cc", "c++", "make", "git"):
            if shutil.which(tool):
                found.append("tool " + tool)
        if importlib.util.find_spec("pip") or importlib.util.find_spec("setuptools"):
            found.append("pip or setuptools in the environment")
        for path in ("/src", "/tmp/wheels", "/opt/echo/tests"):
            if os.path.exists(path):
                found.append("leftover " + path)
        if sys.prefix != "/opt/echo":
            found.append("python is " + sys.prefix)
        print("\\n".join(found))
        """
    )
    result = image.podman.run(
        "run", "--rm", "--network", "none", "--entrypoint", "python3", image.id, "-c", script
    )
    assert result.stdout.strip() == "", result.stdout


async def test_container_serves_read_only_as_the_non_root_user(
    image: Image, containers: list[Container]
) -> None:
    container = start(
        image,
        containers,
        {"ALLOWED_ORIGINS": "https://echo.example.com", "INSTANCE_NAME": "echo-test-1"},
        (
            "--read-only",
            "--read-only-tmpfs=false",
            "--cap-drop=all",
            "--security-opt=no-new-privileges",
        ),
    )
    assert uids(container.host_pid()) == [UID] * 4
    async with new_session() as session:
        status, body = await get(session, f"{container.http}/healthz")
        health = json.loads(body)
        assert (status, health["status"], health["instance"]) == (200, "ok", "echo-test-1")
        assert health["pid"] == 1, "the server is the container's first process: signals reach it"
        assert (await get(session, f"{container.http}/readyz"))[0] == 200
        status, page = await get(session, f"{container.http}/")
        assert status == 200
        assert "<html" in page.lower()
        assert "page.js" in page
        assert (await get(session, f"{container.http}/page.js"))[0] == 200
        status, metrics = await get(session, f"{container.http}/metrics")
        assert status == 200
        assert "echo_connections_open" in metrics
        async with session.post(f"{container.http}/any/path?x=1", data=b"body") as response:
            text = await response.text()
            assert response.status == 200
            instance, request_line = text.split("\r\n")[:2]
            assert instance.startswith("# instance ")
            assert "name=echo-test-1" in instance
            assert request_line == "POST /any/path?x=1 HTTP/1.1"
            assert text.endswith("\r\n\r\nbody")
        origin = "https://echo.example.com"
        async with session.ws_connect(container.url, origin=origin) as ws:
            await ws.send_str("hello, container")
            assert await ws.receive_str(timeout=5) == "hello, container"
            await ws.send_bytes(bytes(range(256)) * 64)
            assert await ws.receive_bytes(timeout=5) == bytes(range(256)) * 64
        # An origin that is not allowed is refused inside the container as outside.
        assert (await handshake_head(container.port, "http://evil.example")).startswith(
            b"HTTP/1.1 403 "
        )
    health_run = container.healthcheck()  # the image's HEALTHCHECK command, run once
    assert health_run.returncode == 0, health_run
    state = container.state()
    health_state = state.get("Health") or state.get("Healthcheck")
    assert isinstance(health_state, dict), state
    assert health_state["Status"] == "healthy", state
    status_text = (Path("/proc") / str(container.host_pid()) / "status").read_text()
    rss_kib = int(re.findall(r"^VmRSS:\s+(\d+)", status_text, re.MULTILINE)[0])
    report(f"server resident memory after start and a few requests: {rss_kib / 1024:.1f} MiB")
    # All of the above ran with no writable path at all: nothing needed one.
    write = container.exec("python3", "-c", "open('/srv/echo/probe', 'w')")
    assert write.returncode != 0
    assert "Read-only file system" in write.stderr
    assert "Traceback" not in container.logs()


async def test_podman_stop_drains_then_closes_every_client_with_1001(
    image: Image, containers: list[Container]
) -> None:
    drain, shutdown = 3, 3
    grace = drain + 2 * shutdown + 5
    container = start(
        image,
        containers,
        {
            "DRAIN_DELAY": str(drain * 1000),
            "SHUTDOWN_TIMEOUT": str(shutdown * 1000),
            "LOG_FORMAT": "json",
            "ALLOWED_ORIGINS": "*",
            "ALLOW_MISSING_ORIGIN": "true",
        },
    )
    async with new_session() as session:
        clients = [await session.ws_connect(container.url) for _ in range(3)]
        # A peer that never answers the server's close: it must not hold up the exit.
        silent = await RawWebSocket.connect("127.0.0.1", container.port)
        started = time.monotonic()
        thread, outcome = stop_in_background(container, grace)
        await until_status(session, f"{container.http}/readyz", 503)
        # Draining: open connections are served, new handshakes refused with 503.
        for i, ws in enumerate(clients):
            await ws.send_str(f"draining {i}")
            assert await ws.receive_str(timeout=5) == f"draining {i}"
        await silent.send(OP_TEXT, b"still served")
        assert (await silent.recv_data()).payload == b"still served"
        head = await handshake_head(container.port)
        assert head.startswith(b"HTTP/1.1 503 ")
        assert b"\r\nRetry-After: 1\r\n" in head
        assert (await get(session, f"{container.http}/healthz"))[0] == 200
        for ws in clients:
            msg = await ws.receive(timeout=drain + 10)
            assert (msg.type, msg.data, msg.extra) == (
                WSMsgType.CLOSE,
                1001,
                "server shutting down",
            )
            await ws.close()
        assert time.monotonic() - started >= drain, "closed before DRAIN_DELAY was over"
        code, seconds = await asyncio.to_thread(finished_stop, thread, outcome, grace)
        await silent.aclose()
    assert code == 0, container.logs()
    assert seconds < grace, "podman had to kill the container"
    report(f"podman stop with DRAIN_DELAY={drain}s and a silent peer: {seconds:.1f} s")
    records = [json.loads(line) for line in container.logs().splitlines() if line.startswith("{")]
    events = [record["event"] for record in records]
    for expected in ("listening", "signal", "draining", "refused", "shutdown", "close"):
        assert expected in events, events
    unclosed = [r["unclosed"] for r in records if r["event"] == "shutdown_timeout"]
    assert unclosed == [1], "only the silent peer outlived SHUTDOWN_TIMEOUT"


async def test_workers_run_in_a_read_only_container_with_a_tmpfs(
    image: Image, containers: list[Container]
) -> None:
    container = start(
        image,
        containers,
        {"WORKERS": "2", "ALLOWED_ORIGINS": "*", "SHUTDOWN_TIMEOUT": "2000"},
        ("--read-only", "--read-only-tmpfs=false", "--tmpfs=/tmp:size=16m,mode=1777"),
    )
    async with new_session() as session:
        status, body = await get(session, f"{container.http}/healthz")
        assert (status, json.loads(body)["workers"]) == (200, 2)
        async with session.ws_connect(container.url, origin="http://any.example") as ws:
            await ws.send_str("worker echo")
            assert await ws.receive_str(timeout=5) == "worker echo"
            thread, outcome = stop_in_background(container, 15)
            msg = await ws.receive(timeout=15)
            assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1001)
        code, _seconds = await asyncio.to_thread(finished_stop, thread, outcome, 15)
    assert code == 0, container.logs()


def pod_options(deployment: dict[str, Any], pod_name: str) -> tuple[dict[str, str], list[str]]:
    """The environment and podman options that make a container what deployment.yaml's
    pod template asks of Kubernetes (the image aside)."""
    pod = deployment["spec"]["template"]["spec"]
    (spec,) = pod["containers"]
    env: dict[str, str] = {}
    for item in spec["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            assert item["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            env[item["name"]] = pod_name  # what the Downward API gives
    security = {**pod["securityContext"], **spec["securityContext"]}
    options = [f"--user={security['runAsUser']}:{security['runAsGroup']}"]
    if security["readOnlyRootFilesystem"]:
        options += ["--read-only", "--read-only-tmpfs=false"]
    if security["allowPrivilegeEscalation"] is False:
        options.append("--security-opt=no-new-privileges")
    options += [f"--cap-drop={cap}" for cap in security["capabilities"]["drop"]]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    for mount in spec["volumeMounts"]:
        empty_dir = volumes[mount["name"]]["emptyDir"]
        size = empty_dir["sizeLimit"].removesuffix("Mi") + "m"
        options.append(f"--tmpfs={mount['mountPath']}:size={size},mode=1777")
    memory = spec["resources"]["limits"]["memory"]
    options.append(f"--memory={memory.removesuffix('Mi')}m")
    return env, options


async def probe(session: aiohttp.ClientSession, base: str, probe: dict[str, Any]) -> int:
    """What the kubelet's HTTP probe would see: the status, or 0 for no answer."""
    timeout = aiohttp.ClientTimeout(total=probe["timeoutSeconds"])
    try:
        async with session.get(base + probe["httpGet"]["path"], timeout=timeout) as response:
            return response.status
    except (aiohttp.ClientError, TimeoutError):
        return 0


async def test_the_pod_that_deployment_yaml_describes(
    image: Image, containers: list[Container]
) -> None:
    deployment = yaml.safe_load(DEPLOYMENT.read_text())
    pod = deployment["spec"]["template"]["spec"]
    (spec,) = pod["containers"]
    env, options = pod_options(deployment, "echo-7c9d8f6b5-x2k4p")
    # The one change: the host's network is shared, so a free port instead of 8080.
    container = start(image, containers, {**env, "HOST": "127.0.0.1"}, tuple(options))
    readiness, liveness = spec["readinessProbe"], spec["livenessProbe"]
    origin = env["ALLOWED_ORIGINS"].split(",")[0]
    grace = int(pod["terminationGracePeriodSeconds"])
    drain = int(env["DRAIN_DELAY"]) / 1000
    async with new_session() as session:
        assert await probe(session, container.http, readiness) == 200
        assert await probe(session, container.http, liveness) == 200
        _status, body = await get(session, f"{container.http}/healthz")
        assert json.loads(body)["instance"] == "echo-7c9d8f6b5-x2k4p"
        ws = await session.ws_connect(container.url, origin=origin)
        await ws.send_str("through the pod")
        assert await ws.receive_str(timeout=5) == "through the pod"
        started = time.monotonic()
        thread, outcome = stop_in_background(container, grace)
        deadline = time.monotonic() + 10
        while await probe(session, container.http, readiness) == 200:
            assert time.monotonic() < deadline, "readiness never failed after SIGTERM"
            await asyncio.sleep(0.1)
        # Not ready, but alive: the kubelet takes it out of the Service, does not restart it.
        assert await probe(session, container.http, readiness) == 503
        assert await probe(session, container.http, liveness) == 200
        await ws.send_str("while draining")
        assert await ws.receive_str(timeout=5) == "while draining"
        msg = await ws.receive(timeout=drain + 15)
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1001)
        assert time.monotonic() - started >= drain
        await ws.close()
        code, seconds = await asyncio.to_thread(finished_stop, thread, outcome, grace)
    assert code == 0, container.logs()
    assert seconds < grace
    report(
        f"pod as deployment.yaml (DRAIN_DELAY={drain:g}s): stopped in {seconds:.1f} s of {grace}"
    )
    records = [json.loads(line) for line in container.logs().splitlines() if line.startswith("{")]
    assert [r["event"] for r in records if r["event"] in ("draining", "shutdown")] == [
        "draining",
        "shutdown",
    ], "LOG_FORMAT=json, as deployment.yaml sets it"
