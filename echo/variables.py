"""Declared settings: one :class:`Variable` per environment variable, and what reads them.

A variable is declared once (name, default as typed, one line of help, the kind of
value, the settings field it fills) and everything else follows from that declaration:
reading and validating it, the ``--help`` listing, the effective-settings line, and the
"did you mean" warning for a misspelt name in ``.env``. ``echo.config`` holds the
declarations and the validated results (``ServerSettings``, ``ClientSettings``).

A bad value raises :class:`ConfigError`, whose message is the single line the entry
points print before exiting with status 2.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from echo.text import preview

MAX_DURATION_MS = 86_400_000  # one day: longer waits are a typo, not a wish
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_PLAIN = re.compile(r"^[A-Za-z0-9_.,:/@*+=\[\]-]*$")  # shown without quotes


class ConfigError(ValueError):
    """A configuration value that cannot be used; ``str()`` is one printable line.

    ``entry`` names the bad item of a list (``ALLOWED_ORIGINS``, ``TRUSTED_PROXIES``),
    which is then quoted instead of the whole value.
    """

    def __init__(
        self, name: str, value: str, expected: str, entry: tuple[str, int, int] | None = None
    ) -> None:
        self.name = name
        self.value = value
        self.expected = expected
        self.entry = entry
        if entry is None:
            line = f"invalid {name}={preview(value, 80)}: expected {expected}"
        else:
            item, position, count = entry
            line = (
                f"invalid {name} entry {preview(item, 80)} ({position} of {count}): "
                f"expected {expected}"
            )
        super().__init__(line)


class Invalid(ValueError):
    """Raised by a parser to say more than "not the expected kind of value".

    ``expected`` replaces the kind's own description (e.g. a file that exists but cannot
    be read); ``entry`` is ``(item, position, count)`` for a bad item of a list.
    """

    def __init__(
        self, expected: str | None = None, entry: tuple[str, int, int] | None = None
    ) -> None:
        super().__init__(expected or "")
        self.expected = expected
        self.entry = entry


@dataclass(frozen=True, slots=True)
class Kind:
    """How a value is read and shown: ``parse`` text (raising ValueError), ``show`` back.

    ``show`` turns the settings field's value back into the text a person would type,
    for the effective-settings line and ``--check-config``.
    """

    parse: Callable[[str], Any]
    expected: str
    show: Callable[[Any], str] = str


def integer(low: int, high: int) -> Kind:
    """A decimal integer from ``low`` to ``high`` (ASCII digits only)."""

    def parse(text: str) -> int:
        if not re.fullmatch(r"[+-]?[0-9]{1,19}", text):  # \d would take other scripts' digits
            raise ValueError(text)
        value = int(text)
        if not low <= value <= high:
            raise ValueError(text)
        return value

    return Kind(parse, f"an integer from {low} to {high}")


def duration(low_ms: int = 1) -> Kind:
    """Milliseconds in the environment, seconds in the program."""
    whole = integer(low_ms, MAX_DURATION_MS)
    return Kind(
        lambda text: whole.parse(text) / 1000,
        f"a duration in milliseconds from {low_ms} to {MAX_DURATION_MS}",
        lambda seconds: str(round(seconds * 1000)),
    )


def _boolean(text: str) -> bool:
    lowered = text.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(text)


BOOLEAN = Kind(_boolean, "true or false", lambda value: "true" if value else "false")
TEXT = Kind(str, "text")


def choice(*choices: str) -> Kind:
    """One of ``choices``, in any case."""

    def parse(text: str) -> str:
        if text.lower() not in choices:
            raise ValueError(text)
        return text.lower()

    return Kind(parse, "one of " + ", ".join(choices))


def listed(
    parse_item: Callable[[str], Any], item_expected: str, show_item: Callable[[Any], str] = str
) -> Kind:
    """A comma-separated list (empty items skipped); an error names the bad item."""

    def parse(text: str) -> tuple[Any, ...]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        values = []
        for position, item in enumerate(items, 1):
            try:
                values.append(parse_item(item))
            except ValueError:
                raise Invalid(item_expected, (item, position, len(items))) from None
        return tuple(values)

    expected = f"a comma-separated list of entries, each {item_expected}"
    return Kind(parse, expected, lambda values: ",".join(show_item(v) for v in values))


@dataclass(frozen=True, slots=True)
class Variable:
    """One environment variable: its one declaration.

    ``fields`` are the settings attributes it fills: usually one; a kind whose value is
    a tuple may fill several (ALLOWED_ORIGINS: any origin, exact origins, patterns).
    ``flag`` is the client's command-line flag that overrides it. ``secret`` values are
    never shown, only whether they are set. ``scope`` says which programs read it.
    """

    name: str
    default: str
    help: str
    kind: Kind
    fields: tuple[str, ...]
    scope: frozenset[str]
    flag: str | None = None
    secret: bool = False

    def read(self, env: Mapping[str, str], flags: Mapping[str, str] | None = None) -> Any:
        """The parsed value from ``flags`` (if its flag is there), ``env``, or the default."""
        name, text = self.name, env.get(self.name, self.default)
        if flags is not None and self.flag is not None and self.flag in flags:
            name, text = self.flag, flags[self.flag]
        text = text.strip()
        try:
            return self.kind.parse(text)
        except Invalid as error:
            raise ConfigError(
                name, text, error.expected or self.kind.expected, error.entry
            ) from None
        except ValueError:
            raise ConfigError(name, text, self.kind.expected) from None

    def shown(self, settings: object) -> str:
        """This variable's effective value in ``settings``, as it would be typed."""
        values = tuple(getattr(settings, field) for field in self.fields)
        if self.secret:
            return "(set)" if any(values) else "(unset)"
        text = self.kind.show(values[0] if len(values) == 1 else values)
        return text if _PLAIN.match(text) else preview(text, 200)


SERVER = frozenset({"server"})
CLIENT = frozenset({"client"})
BOTH = SERVER | CLIENT


def variable(
    name: str,
    default: str,
    help: str,
    kind: Kind,
    field: str | tuple[str, ...] | None = None,
    *,
    scope: frozenset[str] = SERVER,
    flag: str | None = None,
    secret: bool = False,
) -> Variable:
    """Declare a variable; its field defaults to the lower-case name."""
    if field is None:
        fields: tuple[str, ...] = (name.lower(),)
    elif isinstance(field, str):
        fields = (field,)
    else:
        fields = field
    return Variable(name, default, help, kind, fields, scope, flag, secret)


def read_all(
    variables: Iterable[Variable], env: Mapping[str, str], flags: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Every variable read and parsed, as keyword arguments for a settings class."""
    values: dict[str, Any] = {}
    for var in variables:
        value = var.read(env, flags)
        if len(var.fields) == 1:
            values[var.fields[0]] = value
        else:
            values.update(zip(var.fields, value, strict=True))
    return values


def effective(variables: Iterable[Variable], settings: object) -> list[tuple[str, str]]:
    """``(name, value)`` of every variable as ``settings`` holds it (secrets hidden)."""
    return [(var.name, var.shown(settings)) for var in variables]


def help_listing(variables: Sequence[Variable], width: int = 79) -> str:
    """``--help``'s list: every variable with its default, its flag, and what it does."""
    lines = []
    for var in variables:
        head = f"  {var.name}={var.default}"
        if var.flag:
            head += f"  ({var.flag})"
        lines.append(head)
        lines.extend(_wrap(var.help, "      ", width))
    return "\n".join(lines)


def _wrap(text: str, indent: str, width: int) -> list[str]:
    lines: list[str] = []
    current = indent
    for word in text.split():
        if current.strip() and len(current) + 1 + len(word) > width:
            lines.append(current)
            current = indent
        current += (" " if current.strip() else "") + word
    if current.strip():
        lines.append(current)
    return lines


def unknown_names(names: Iterable[str], known: Iterable[str]) -> list[str]:
    """Warnings for names in ``.env`` that no variable has: misspelt or ECHO-looking.

    A name close to a known one (difflib's ratio of at least 0.75, case ignored) is
    reported with that name; one that starts with ``ECHO`` without being close to any
    is reported as unknown. Other names are left alone: a ``.env`` may be shared with
    other tools.
    """
    known_names = sorted(set(known))
    by_upper = {name.upper(): name for name in known_names}
    warnings = []
    for name in names:
        if name in by_upper.values():
            continue
        close = difflib.get_close_matches(name.upper(), list(by_upper), n=1, cutoff=0.75)
        if close:
            warnings.append(
                f"unknown setting {preview(name, 60)} in .env: did you mean {by_upper[close[0]]}?"
            )
        elif name.upper().startswith("ECHO"):
            warnings.append(f"unknown setting {preview(name, 60)} in .env: no such variable")
    return warnings
