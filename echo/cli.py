"""The command line both console scripts share: ``--help`` lists every variable, ``--version``.

Settings come from the environment and ``.env``; the command line only asks for help,
the version, or (``echo-server``) a check of the configuration. ``--help`` is the
reference an installed copy carries, since README.md and .env.example are not installed.
"""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Sequence
from importlib import metadata

from echo.variables import Variable, help_listing

WIDTH = 79  # columns of --help


def version() -> str:
    """The installed distribution's version (``echo.__version__`` when not installed)."""
    try:
        return metadata.version("echo")
    except metadata.PackageNotFoundError:
        from echo import __version__

        return __version__


def command_line(
    prog: str,
    description: str,
    variables: Sequence[Variable],
    *,
    check_config: bool = True,
    notes: str = "",
    parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser,
) -> argparse.ArgumentParser:
    """A parser with ``--version``, optionally ``--check-config``, and the variables listed.

    ``notes`` (preformatted: examples, exit statuses) come before the variables;
    ``parser_class`` lets a script report usage errors its own way.
    """
    parser = parser_class(
        prog=prog,
        description=textwrap.fill(" ".join(description.split()), WIDTH),
        epilog=(notes.rstrip() + "\n\n" if notes else "")
        + "environment variables (name=default):\n"
        + help_listing(variables, WIDTH),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{prog} {version()}")
    if check_config:
        parser.add_argument(
            "--check-config",
            action="store_true",
            help="validate the settings, print them as in effect and exit "
            "(status 0, or 2 with one line naming a bad value)",
        )
    return parser
