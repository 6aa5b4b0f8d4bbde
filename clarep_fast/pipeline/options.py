"""Command-line flags derived from the config dataclasses: every option is declared once, as a field.

    @dataclass(frozen=True)
    class SearchConfig:
        t_e: int = option(600, "time of the projection", flag="--t-e")
        ...
    add_options(parser, SearchConfig)           # --t-e, -k, ... with defaults, types and help
    config = config_from_args(SearchConfig, args)

Rules (the whole of them):
  - a field's flag is ``--<name with dashes>`` unless ``option(flag=...)`` says otherwise;
  - int, float and str fields take one value, ``tuple[X, ...]`` fields one or more, ``X | None``
    fields a value or nothing; ``choices`` limit the values;
  - a bool field that defaults to False is a switch ``--<name>``, one that defaults to True is
    ``--no-<name>``;
  - a field holding another config dataclass contributes that class's flags without a prefix; a
    name already taken gets the prefix ``--<field>-`` (``--data-seed``), unless the parent field
    lists it in ``option(shared=...)``: then one flag sets both (the teacher's resolution is the
    data's).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import MISSING, field

HELP, FLAG, CHOICES, SHARED = "help", "flag", "choices", "shared"


def option(default=MISSING, help: str = "", *, flag: str | None = None, choices=None, shared: tuple[str, ...] = (), default_factory=MISSING):
    """A config field with the help text (and optionally the flag and the choices) of its CLI option."""
    metadata = {HELP: help, FLAG: flag, CHOICES: choices, SHARED: shared}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def _default(spec: dataclasses.Field):
    return spec.default_factory() if spec.default_factory is not MISSING else spec.default


def _flags(config_class, prefix: str = "", taken: set[str] | None = None, shared: tuple[str, ...] = ()):
    """(dest path, flag, field, resolved type) of every option of ``config_class``, nested ones flattened."""
    taken = set() if taken is None else taken
    hints = typing.get_type_hints(config_class)
    rows = []
    for spec in dataclasses.fields(config_class):
        kind = hints[spec.name]
        path = f"{prefix}{spec.name}"
        if dataclasses.is_dataclass(kind):
            rows += _flags(kind, f"{path}.", taken, spec.metadata.get(SHARED, ()))
            continue
        flag = spec.metadata.get(FLAG) or "--" + spec.name.replace("_", "-")
        if flag in taken and spec.name not in shared:
            flag = "--" + path.replace(".", "-").replace("_", "-")
        taken.add(flag)
        rows.append((path, flag, spec, kind))
    return rows


def _value_type(kind):
    """(element type, nargs) for an annotation: int -> (int, None), tuple[int, ...] -> (int, "+"), int | None -> (int, None)."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        return _value_type(inner)
    if origin is tuple:
        return typing.get_args(kind)[0], "+"
    return kind, None


def add_options(parser: argparse.ArgumentParser, config_class, *, defaults=None) -> None:
    """Add one flag per field of ``config_class`` (see the module docstring). ``defaults``: an
    instance whose values replace the class defaults (for commands that preset some fields)."""
    groups: dict[str, list] = {}
    for path, flag, spec, kind in _flags(config_class):
        groups.setdefault(flag, []).append((path, spec, kind))
    for flag, members in groups.items():
        path, spec, kind = members[0]
        default = _lookup(defaults, path) if defaults is not None else _default(spec)
        help_text = spec.metadata.get(HELP, "")
        dest = "option:" + flag
        if kind is bool:
            if default:
                parser.add_argument("--no-" + flag.removeprefix("--"), dest=dest, action="store_false", default=True, help=help_text)
            else:
                parser.add_argument(flag, dest=dest, action="store_true", help=help_text)
            continue
        element, nargs = _value_type(kind)
        shown = f"{help_text} (default: {_show(default)})" if help_text else f"default: {_show(default)}"
        metavar = None if spec.metadata.get(CHOICES) else spec.name.upper()
        parser.add_argument(flag, dest=dest, type=element, nargs=nargs, default=default, choices=spec.metadata.get(CHOICES), metavar=metavar, help=shown)


def _show(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _lookup(instance, path: str):
    for name in path.split("."):
        instance = getattr(instance, name)
    return instance


def config_from_args(config_class, args: argparse.Namespace, **overrides):
    """The config the parsed flags describe; ``overrides`` replace top-level fields."""
    values = {}
    for path, flag, spec, kind in _flags(config_class):
        value = getattr(args, "option:" + flag)
        if typing.get_origin(_strip_optional(kind)) is tuple and value is not None:
            value = tuple(value)
        values[path] = value
    return _build(config_class, values, "", overrides)


def _strip_optional(kind):
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        (inner,) = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        return inner
    return kind


def _build(config_class, values: dict, prefix: str, overrides: dict):
    hints = typing.get_type_hints(config_class)
    kwargs = {}
    for spec in dataclasses.fields(config_class):
        if spec.name in overrides:
            kwargs[spec.name] = overrides[spec.name]
        elif dataclasses.is_dataclass(hints[spec.name]):
            kwargs[spec.name] = _build(hints[spec.name], values, f"{prefix}{spec.name}.", {})
        else:
            kwargs[spec.name] = values[f"{prefix}{spec.name}"]
    return config_class(**kwargs)
