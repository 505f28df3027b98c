"""The container image tests' harness: podman, a local base image, the build, containers.

Everything this machine's podman needs and the Dockerfile must not know lives here:

- **Private storage.** podman keeps its images and layers under the cache directory
  (``ECHO_IMAGE_CACHE``, default ``~/.cache/echo-image``), apart from the machine's
  own store, so the base image and the build's layers survive between runs.
- **Sandbox settings.** ``--cgroup-manager cgroupfs``, runc where it is installed
  (crun refuses cgroup v1/v2 hybrid hosts), a containers.conf with
  ``default_ulimits = []`` (the sandbox may not raise limits), file event logging,
  and ``--network host`` for the build and the containers (no bridge, no NAT: the
  server binds 127.0.0.1 on a free port). Health checks are run on demand
  (``podman healthcheck run``), not by a systemd timer.
- **A base image without a registry.** ``debootstrap`` a minimal Debian bookworm with
  python3, python3-venv and ca-certificates from the mirror apt uses here, pruned of
  apt lists and documentation, ``podman import``-ed as ``localhost/echo-base:bookworm``.
  The tarball is kept in the cache: later runs import it or find the image in place.
- **pip as on the host.** The build's pip gets the host's effective pip settings
  (``pip config list``: index URLs, find-links, certificate bundle, timeout...) as a
  generated /etc/pip.conf mounted into the build's RUN steps, with local indexes and
  the CA bundle mounted read-only. Nothing of it stays in the image.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
BASE_IMAGE = "localhost/echo-base:bookworm"
BASE_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
BUILD_CA = "/run/echo-build/ca.pem"  # where the host's CA bundle appears during the build
DEBOOTSTRAP_TIMEOUT = 900.0
BUILD_TIMEOUT = 900.0
# Pruned from the base: package lists and caches, documentation, translations.
BASE_PRUNE = (
    "var/cache/apt/archives",
    "var/cache/apt/pkgcache.bin",
    "var/cache/apt/srcpkgcache.bin",
    "var/lib/apt/lists",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
)
# pip settings whose values are local files or directories (mounted into the build).
_PIP_PATH_KEYS = frozenset({"find-links", "constraint", "requirement"})
_PIP_URL_KEYS = frozenset({"index-url", "extra-index-url"})
_PIP_CERT_KEYS = frozenset({"cert", "client-cert"})


class ImageTestError(RuntimeError):
    """The harness cannot run here (a missing tool, a failed build); the message says why."""


def cache_dir() -> Path:
    configured = os.environ.get("ECHO_IMAGE_CACHE", "")
    path = Path(configured) if configured else Path.home() / ".cache" / "echo-image"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path``: one base image is made at a time per cache."""
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass
class Podman:
    """The podman command with this harness's storage and sandbox settings."""

    cache: Path
    executable: str = field(init=False)

    def __post_init__(self) -> None:
        found = shutil.which("podman")
        if found is None:
            raise ImageTestError("podman is not installed (apt-get install podman runc)")
        self.executable = found
        conf = self.cache / "containers.conf"
        # The sandbox refuses to raise resource limits; podman's default is to set them.
        conf.write_text('[containers]\ndefault_ulimits = []\n\n[engine]\nevents_logger = "file"\n')
        (self.cache / "tmp").mkdir(exist_ok=True)

    def command(self, *args: str) -> list[str]:
        runtime = ["--runtime", "runc"] if shutil.which("runc") else []
        return [
            self.executable,
            "--root",
            str(self.cache / "storage"),
            "--runroot",
            str(self.cache / "run"),
            "--tmpdir",
            str(self.cache / "tmp"),
            "--storage-driver",
            "overlay",
            "--cgroup-manager",
            "cgroupfs",
            *runtime,
            *args,
        ]

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "CONTAINERS_CONF": str(self.cache / "containers.conf")}

    def run(
        self, *args: str, timeout: float = 120.0, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.command(*args),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            input=input,
        )
        if check and result.returncode != 0:
            raise ImageTestError(
                f"podman {' '.join(args[:2])} failed ({result.returncode}): "
                f"{result.stderr.strip()[-2000:]}"
            )
        return result

    def image_size(self, image: str) -> int:
        return int(self.run("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())


def apt_mirror() -> str:
    """The Debian mirror apt uses for ``bookworm`` here (deb822 or one-line sources)."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = dict(
                    re.findall(r"^([A-Za-z-]+):\s*(.+)$", stanza, re.MULTILINE)
                )
                if BASE_SUITE in fields.get("Suites", "").split():
                    uris = fields.get("URIs", "").split()
                    if uris and "Types" in fields and "deb" in fields["Types"].split():
                        return uris[0]
        else:
            for line in text.splitlines():
                parts = line.split("#", 1)[0].split()
                if len(parts) >= 3 and parts[0] == "deb" and BASE_SUITE in parts:
                    return next(p for p in parts[1:] if "://" in p)
    return DEFAULT_MIRROR


def make_base_tarball(target: Path, mirror: str) -> None:
    """debootstrap a minimal bookworm with python3 into a tarball at ``target``."""
    debootstrap = shutil.which("debootstrap") or (
        "/usr/sbin/debootstrap" if os.access("/usr/sbin/debootstrap", os.X_OK) else None
    )
    if debootstrap is None:
        raise ImageTestError("debootstrap is not installed (apt-get install debootstrap)")
    if os.geteuid() != 0:
        raise ImageTestError("debootstrap needs root to make the local base image")
    with tempfile.TemporaryDirectory(dir=target.parent, prefix="debootstrap-") as work:
        rootfs = Path(work) / "rootfs"
        result = subprocess.run(
            [
                debootstrap,
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                BASE_SUITE,
                str(rootfs),
                mirror,
            ],
            capture_output=True,
            text=True,
            timeout=DEBOOTSTRAP_TIMEOUT,
            check=False,
        )
        if result.returncode != 0:
            raise ImageTestError(f"debootstrap failed: {(result.stdout + result.stderr)[-2000:]}")
        for relative in BASE_PRUNE:
            path = rootfs / relative
            if path.is_dir():
                for child in path.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
            elif path.exists():
                path.unlink()
        partial = target.with_suffix(".partial")
        subprocess.run(
            ["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."],
            check=True,
            timeout=600,
        )
        partial.rename(target)


def ensure_base_image(podman: Podman) -> dict[str, float]:
    """``localhost/echo-base:bookworm`` in podman's store; returns what it took (seconds)."""
    timings: dict[str, float] = {}
    with locked(podman.cache / "base.lock"):
        if podman.run("image", "exists", BASE_IMAGE, check=False).returncode == 0:
            return timings
        tarball = podman.cache / f"base-{BASE_SUITE}.tar"
        if not tarball.exists():
            started = time.monotonic()
            make_base_tarball(tarball, apt_mirror())
            timings["debootstrap"] = time.monotonic() - started
        started = time.monotonic()
        podman.run(
            "import",
            "--change",
            'CMD ["python3"]',
            str(tarball),
            BASE_IMAGE,
            timeout=600,
        )
        timings["import"] = time.monotonic() - started
    return timings


def host_pip_settings() -> dict[str, str]:
    """pip's effective global settings on this host: its config files, then PIP_* variables."""
    listing = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    from_files: dict[str, str] = {}
    from_env: dict[str, str] = {}
    for line in listing.splitlines():
        match = re.fullmatch(r"([^.]*)\.([^=]+)='(.*)'", line.strip())
        if match is None:
            continue
        section, key, value = match.groups()
        if section == ":env:":
            from_env[key] = value
        elif section in ("global", "install", "download", "wheel"):
            from_files.setdefault(key, value)
    return {**from_files, **from_env}


def _local_path(value: str) -> Path | None:
    if value.startswith("file://"):
        return Path(urlsplit(value).path)
    if value.startswith("/"):
        return Path(value)
    return None


def _mounted(path: Path | None, mounts: dict[Path, str]) -> bool:
    """Whether a pip setting's local ``path`` (None: a remote URL) is available in the build."""
    return path is None or any(path == m or m in path.parents for m in mounts)


def pip_build_options(workdir: Path) -> list[str]:
    """``podman build`` volume options giving the build's pip the host's settings."""
    settings = host_pip_settings()
    lines = ["[global]"]
    mounts: dict[Path, str] = {}
    cert = settings.pop("cert", "") or "/etc/ssl/certs/ca-certificates.crt"
    if Path(cert).is_file():
        mounts[Path(cert)] = BUILD_CA
        lines.append(f"cert = {BUILD_CA}")
    for key, value in sorted(settings.items()):
        key = "timeout" if key == "default-timeout" else key
        if key in _PIP_CERT_KEYS:
            continue  # a client certificate stays on the host
        if key in _PIP_PATH_KEYS | _PIP_URL_KEYS:
            for item in value.split():
                local = _local_path(item)
                if local is not None and local.exists():
                    # A local "simple" index links to its files beside it (../files/...).
                    shared = local.parent if local.name == "simple" else local
                    mounts[shared] = str(shared)
                # Missing local paths are skipped: pip would only warn about them.
            kept = [i for i in value.split() if _mounted(_local_path(i), mounts)]
            if kept:
                lines.append(f"{key} = {' '.join(kept)}")
        else:
            lines.append(f"{key} = {value}")
    conf = workdir / "pip.conf"
    conf.write_text("\n".join(lines) + "\n")
    options = ["--volume", f"{conf}:/etc/pip.conf:ro"]
    for source, target in mounts.items():
        options += ["--volume", f"{source}:{target}:ro"]
    return options


def build_context(target: Path, extra_files: dict[str, str]) -> Path:
    """A copy of the working tree to build from, with ``extra_files`` planted in it."""
    shutil.copytree(
        ROOT,
        target,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv*",
            "__pycache__",
            ".*_cache",
            ".hypothesis",
            "reports",
            "*.egg-info",
        ),
    )
    for name, text in extra_files.items():
        (target / name).write_text(text)
    return target


def build_image(
    podman: Podman, context: Path, tag: str, base: str, target: str | None = None
) -> float:
    """``podman build`` the Dockerfile in ``context`` on ``base`` (up to the stage
    ``target``, or whole); returns the seconds taken."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=podman.cache, prefix="build-") as work:
        podman.run(
            "build",
            "--format",
            "docker",  # OCI images cannot carry HEALTHCHECK
            "--network",
            "host",
            "--pull=never",  # the optional value must be attached
            "--build-arg",
            f"BASE_IMAGE={base}",
            *pip_build_options(Path(work)),
            *(["--target", target] if target else []),
            "--tag",
            tag,
            str(context),
            timeout=BUILD_TIMEOUT,
        )
    return time.monotonic() - started


def image_tag() -> str:
    """A tag of this run's own: runs on one machine do not replace each other's image."""
    digest = hashlib.sha256(f"{os.getpid()}-{time.time()}".encode()).hexdigest()[:10]
    return f"localhost/echo-test:{digest}"


@dataclass
class Container:
    """One ``podman run -d`` of the image, on the host's network."""

    podman: Podman
    image: str
    port: int
    env: dict[str, str] = field(default_factory=dict)
    options: Sequence[str] = ()
    name: str = field(init=False)

    def __post_init__(self) -> None:
        self.name = f"echo-test-{os.getpid()}-{self.port}"

    def start(self) -> None:
        env_options: list[str] = []
        for key, value in {"HOST": "127.0.0.1", "PORT": str(self.port), **self.env}.items():
            env_options += ["--env", f"{key}={value}"]
        self.podman.run(
            "run",
            "--detach",
            "--name",
            self.name,
            "--network",
            "host",
            "--health-interval",
            "disable",  # no systemd timer here: checks run on demand
            *env_options,
            *self.options,
            self.image,
            timeout=120,
        )

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.state()["Status"] not in ("running", "created", "configured"):
                raise ImageTestError(f"container exited: {self.logs()}")
            try:
                with urllib.request.urlopen(f"{self.http}/healthz", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise ImageTestError(f"container not serving after {timeout}s: {self.logs()}")

    def state(self) -> dict[str, object]:
        out = self.podman.run("inspect", "--format", "{{json .State}}", self.name).stdout
        state: dict[str, object] = json.loads(out)
        return state

    def host_pid(self) -> int:
        return int(str(self.state()["Pid"]))

    def logs(self) -> str:
        result = self.podman.run("logs", self.name, check=False)
        return result.stdout + result.stderr

    def exec(self, *command: str) -> subprocess.CompletedProcess[str]:
        return self.podman.run("exec", self.name, *command, check=False)

    def healthcheck(self) -> subprocess.CompletedProcess[str]:
        return self.podman.run("healthcheck", "run", self.name, check=False, timeout=60)

    def stop(self, grace: int) -> tuple[int, float]:
        """``podman stop -t grace``: the container's exit status and the seconds taken."""
        started = time.monotonic()
        self.podman.run("stop", "--time", str(grace), self.name, timeout=grace + 60)
        taken = time.monotonic() - started
        return int(str(self.state()["ExitCode"])), taken

    def remove(self) -> None:
        self.podman.run("rm", "--force", "--time", "0", self.name, check=False)
