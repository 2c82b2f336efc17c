"""Settings declared once, read from the environment and from flags alike.

A settings class is a frozen dataclass whose fields are made with
``setting(...)``: each names its environment variable, says what it does and
how it is checked. From that one declaration come the command line's flags
(``add_flags``: ``PORT`` is ``--port``, ``BRIDGE_CONNECT_TIMEOUT`` is
``--connect-timeout``, each with its variable and default in ``--help``) and
the reading of both (``load``: a flag wins over its variable, an empty
variable counts as unset). Fields made without ``setting`` are not
configurable.

A bad value raises ``SettingsError`` naming the variable or flag it came
from, so that start-up stops with a message an operator can act on.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from collections.abc import Mapping, Sequence
from typing import Any

_DECLARATION = "setting"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class SettingsError(ValueError):
    """A setting holds a value the bridge cannot use; the message names it."""


@dataclasses.dataclass(frozen=True)
class Declaration:
    env: str
    help: str
    group: str
    #: The range a number must fall in (inclusive); None: unbounded on that side.
    minimum: float | None
    maximum: float | None
    #: Also read, after ``env``: names an older deployment used.
    aliases: tuple[str, ...]
    choices: tuple[str, ...] | None
    metavar: str | None
    #: Read from the environment only: a flag would show it to anyone who can list processes.
    secret: bool

    @property
    def flag(self) -> str:
        return "--" + self.env.removeprefix("BRIDGE_").lower().replace("_", "-")


def setting(default: Any, env: str, help: str, *, group: str, minimum: float | None = None,
            maximum: float | None = None, aliases: Sequence[str] = (), choices: Sequence[str] | None = None,
            metavar: str | None = None, secret: bool = False) -> Any:
    """A dataclass field that ``add_flags`` and ``load`` know as a setting."""
    declaration = Declaration(env, help, group, minimum, maximum, tuple(aliases),
                              tuple(choices) if choices is not None else None, metavar, secret)
    return dataclasses.field(default=default, repr=not secret, metadata={_DECLARATION: declaration})


def declared(cls: type) -> list[tuple[dataclasses.Field, Declaration, type]]:
    """The settings of ``cls`` in declaration order: field, declaration, value type."""
    hints = typing.get_type_hints(cls)
    return [(field, field.metadata[_DECLARATION], _value_type(hints[field.name]))
            for field in dataclasses.fields(cls) if _DECLARATION in field.metadata]


def add_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add a flag for every setting of ``cls`` that is not secret, grouped
    as declared, its help naming the variable and the default."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for field, declaration, kind in declared(cls):
        if declaration.group not in groups:
            groups[declaration.group] = parser.add_argument_group(declaration.group)
        group = groups[declaration.group]
        where = " or ".join((declaration.env, *declaration.aliases))
        if declaration.secret:
            group.description = ((group.description or "")
                                 + f"{where} (environment only, so that ps cannot show it): {declaration.help}\n")
            continue
        default = "unset" if field.default in (None, "") else _show(field.default)
        help_text = f"{declaration.help} (env {where}; default {default})".replace("%", "%%")
        if kind is bool:
            group.add_argument(declaration.flag, dest=field.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_text)
        else:
            group.add_argument(declaration.flag, dest=field.name, default=argparse.SUPPRESS,
                               metavar=_metavar(kind, declaration), help=help_text)


def load(cls: type, environ: Mapping[str, str], flags: Mapping[str, Any] | argparse.Namespace = ()) -> Any:
    """An instance of ``cls`` from ``flags`` (by field name, as ``add_flags``
    stores them), else the environment, else the declared defaults.

    Raises:
        SettingsError: a value that does not parse or is out of range, named
            by the flag or variable it came from.
    """
    if isinstance(flags, argparse.Namespace):
        flags = vars(flags)
    values: dict[str, Any] = {}
    for field, declaration, kind in declared(cls):
        if field.name in flags and not declaration.secret:
            raw, source = flags[field.name], declaration.flag
        else:
            source = next((name for name in (declaration.env, *declaration.aliases) if environ.get(name)), None)
            if source is None:
                continue
            raw = environ[source]
        values[field.name] = _parse(raw, kind, declaration, source)
    return cls(**values)


def _parse(raw: Any, kind: type, declaration: Declaration, source: str) -> Any:
    if isinstance(raw, bool) or kind is str:
        value = raw
    elif kind is bool:
        text = str(raw).strip().lower()
        if text not in _TRUE + _FALSE:
            raise SettingsError(f"{source}={raw!r} is not a yes/no value; use 1 or 0")
        value = text in _TRUE
    else:
        try:
            value = kind(raw)
        except ValueError:
            noun = "a whole number" if kind is int else "a number"
            raise SettingsError(f"{source}={raw!r} is not {noun} ({declaration.help})") from None
    if declaration.choices is not None:
        value = str(value).lower()
        if value not in declaration.choices:
            raise SettingsError(f"{source}={raw!r} is not one of {', '.join(declaration.choices)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise SettingsError(f"{source}={raw!r} is not a finite number")
    if declaration.minimum is not None and value < declaration.minimum:
        raise SettingsError(f"{source}={raw!r} is below its minimum, {_show(declaration.minimum)}")
    if declaration.maximum is not None and value > declaration.maximum:
        raise SettingsError(f"{source}={raw!r} is above its maximum, {_show(declaration.maximum)}")
    return value


def _value_type(hint: Any) -> type:
    """int for ``int | None``, and so on."""
    arguments = [argument for argument in typing.get_args(hint) if argument is not type(None)]
    return arguments[0] if arguments else hint


def _metavar(kind: type, declaration: Declaration) -> str:
    if declaration.metavar is not None:
        return declaration.metavar
    if declaration.choices is not None:
        return "{" + ",".join(declaration.choices) + "}"
    return {int: "N", float: "SECONDS"}.get(kind, "VALUE")


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
