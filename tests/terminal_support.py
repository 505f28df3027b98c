"""A program in a real pseudo-terminal (tmux), typed at and read from as a person would.

Each ``Terminal`` runs its own tmux server (``-S`` with a socket in the test's own
directory, no config file), so tests never touch a user's tmux and leave no socket
behind. ``screen()`` is what the terminal shows
(``capture-pane``), not the raw byte stream: escape sequences are already interpreted,
which is the point when checking that output does not tear the line being typed.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import time
import uuid
from pathlib import Path

from tests.apt_support import ensure_program


class Terminal:
    """``command`` running in a ``width`` x ``height`` tmux window."""

    def __init__(
        self,
        command: list[str],
        env: dict[str, str],
        cwd: Path,
        width: int = 160,
        height: int = 40,
    ) -> None:
        self.tmux = ensure_program("tmux", "tmux")
        self.socket = str(cwd / f"tmux-{uuid.uuid4().hex[:8]}.sock")
        self.env = {**env, "TERM": "xterm-256color"}
        self.env.pop("TMUX", None)
        # The shell prints the exit status and keeps the pane open to read it.
        script = f'cd {shlex.quote(str(cwd))} && {shlex.join(command)}; echo "[exit $?]"; sleep 600'
        self._tmux(
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            str(width),
            "-y",
            str(height),
            script,
        )

    def _tmux(self, *args: str) -> str:
        result = subprocess.run(
            [self.tmux, "-S", self.socket, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return result.stdout

    def type(self, text: str, enter: bool = True) -> None:
        """Type ``text`` (literally), then Enter."""
        self._tmux("send-keys", "-t", "t", "-l", text)
        if enter:
            self._tmux("send-keys", "-t", "t", "Enter")

    def keys(self, *keys: str) -> None:
        """Press keys by tmux name (``C-c``, ``C-d``, ``Enter``)."""
        self._tmux("send-keys", "-t", "t", *keys)

    def screen(self) -> str:
        """The visible screen, lines without trailing blanks."""
        return self._tmux("capture-pane", "-p", "-t", "t")

    def lines(self) -> list[str]:
        return [line for line in self.screen().splitlines() if line.strip()]

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 30.0) -> str:
        """Poll the screen until ``pattern`` (a regex) shows ``count`` times; the screen."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if len(re.findall(pattern, screen, re.MULTILINE)) >= count:
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} x{count} not on screen in {timeout}s:\n{screen}")
            time.sleep(0.05)

    def close(self) -> None:
        subprocess.run(
            [self.tmux, "-S", self.socket, "kill-server"],
            env=self.env,
            capture_output=True,
            timeout=30,
            check=False,
        )
        Path(self.socket).unlink(missing_ok=True)
