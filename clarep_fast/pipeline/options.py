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
    data's);
  - a field with ``option(section=True)`` holds a whole command's config (the demo's search,
    distill, evaluate): its flags are spelled as in that command, ``--<field>-<flag>`` where an
    earlier one took the name; ``option(omit=...)`` names its fields that get no flag (the caller
    sets them; they keep their default);
  - a float must be finite (``nan``, ``inf`` are refused);
  - ``option(low=, high=, low_open=, high_open=)`` bound a number (every element of a tuple): the
    parser refuses a value outside with one line naming the flag and the range (exit code 2), and
    ``check_ranges(config)`` (called by each config's ``__post_init__``) refuses it for API users.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from dataclasses import MISSING, field
from typing import NamedTuple

HELP, FLAG, CHOICES, SHARED, OMIT, SECTION, RANGE = "help", "flag", "choices", "shared", "omit", "section", "range"


class Range(NamedTuple):
    low: float | None
    high: float | None
    low_open: bool
    high_open: bool

    def holds(self, value) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def describe(self, integer: bool) -> str:
        kind = "an int " if integer else ""
        if self.low is not None and self.high is not None:
            return (
                f"{kind}in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
            )
        if self.low is not None:
            return f"{kind}{'>' if self.low_open else '>='} {self.low:g}"
        return f"{kind}{'<' if self.high_open else '<='} {self.high:g}"


def option(
    default=MISSING,
    help: str = "",
    *,
    flag: str | None = None,
    choices=None,
    shared: tuple[str, ...] = (),
    section: bool = False,
    omit: tuple[str, ...] = (),
    default_factory=MISSING,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
):
    """A config field with the help text (and optionally the flag, the choices, the range) of its CLI option."""
    bounds = Range(low, high, low_open, high_open) if low is not None or high is not None else None
    metadata = {HELP: help, FLAG: flag, CHOICES: choices, SHARED: shared, SECTION: section, OMIT: omit, RANGE: bounds}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def _default(spec: dataclasses.Field):
    return spec.default_factory() if spec.default_factory is not MISSING else spec.default


def _flags(
    config_class,
    prefix: str = "",
    taken: set[str] | None = None,
    shared: tuple[str, ...] = (),
    omit: tuple[str, ...] = (),
):
    """(dest path, flag, field, resolved type) of every option of ``config_class``, nested ones flattened."""
    taken = set() if taken is None else taken
    hints = typing.get_type_hints(config_class)
    rows = []
    for spec in dataclasses.fields(config_class):
        kind = hints[spec.name]
        path = f"{prefix}{spec.name}"
        if spec.metadata.get(SECTION):
            for sub_path, flag, sub_spec, sub_kind in _flags(kind, omit=spec.metadata.get(OMIT, ())):
                if flag in taken:
                    flag = f"--{spec.name.replace('_', '-')}-{flag.lstrip('-')}"
                taken.add(flag)
                rows.append((f"{path}.{sub_path}", flag, sub_spec, sub_kind))
            continue
        if dataclasses.is_dataclass(kind):
            nested = _flags(kind, f"{path}.", taken, spec.metadata.get(SHARED, ()))
            rows += [] if spec.name in omit else nested
            continue
        flag = spec.metadata.get(FLAG) or "--" + spec.name.replace("_", "-")
        if flag in taken and spec.name not in shared:
            flag = "--" + path.replace(".", "-").replace("_", "-")
        taken.add(flag)
        if spec.name not in omit:
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
                parser.add_argument(
                    "--no-" + flag.removeprefix("--"), dest=dest, action="store_false", default=True, help=help_text
                )
            else:
                parser.add_argument(flag, dest=dest, action="store_true", help=help_text)
            continue
        element, nargs = _value_type(kind)
        bounds = spec.metadata.get(RANGE)
        if bounds is not None:
            help_text = (
                f"{help_text}; {bounds.describe(element is int)}" if help_text else bounds.describe(element is int)
            )
        shown = f"{help_text} (default: {_show(default)})" if help_text else f"default: {_show(default)}"
        metavar = None if spec.metadata.get(CHOICES) else spec.name.upper()
        parser.add_argument(
            flag,
            dest=dest,
            type=_parser_type(element, bounds),
            nargs=nargs,
            default=default,
            choices=spec.metadata.get(CHOICES),
            metavar=metavar,
            help=shown,
        )


def _parser_type(element, bounds: Range | None):
    """argparse's type= for a field: the element type, a float finite (nan and inf would pass any
    range test unnoticed or train to NaN), checked against the field's range."""
    if bounds is None and element is not float:
        return element

    def parse(text: str):
        value = element(text)
        if element is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if bounds is not None and not bounds.holds(value):
            raise argparse.ArgumentTypeError(f"must be {bounds.describe(element is int)}, got {text}")
        return value

    parse.__name__ = element.__name__  # argparse names the type in its "invalid int value" message
    return parse


def bounded(element, *, low: float | None = None, high: float | None = None):
    """argparse's type= for a flag that is not a config field, with the same checks as a field's."""
    return _parser_type(element, Range(low, high, False, False) if low is not None or high is not None else None)


def check_ranges(config) -> None:
    """Raise ValueError naming the first field of ``config`` outside its declared range or choices."""
    for spec in dataclasses.fields(config):
        bounds = spec.metadata.get(RANGE)
        value = getattr(config, spec.name)
        choices = spec.metadata.get(CHOICES)
        chosen = value if isinstance(value, (tuple, list)) else (value,)
        if choices is not None and any(item not in choices for item in chosen):
            raise ValueError(f"{spec.name} must be one of {tuple(choices)}, got {value!r}")
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, float) and not math.isfinite(item):
                raise ValueError(f"{spec.name} must be a finite number, got {value!r}")
        if bounds is None or value is None:
            continue
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, bool) or not isinstance(item, (int, float)) or not bounds.holds(item):
                raise ValueError(f"{spec.name} must be {bounds.describe(isinstance(item, int))}, got {value!r}")


def _show(value) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value)) if value else "none"
    return str(value)


def _lookup(instance, path: str):
    for name in path.split("."):
        instance = getattr(instance, name)
    return instance


def config_from_args(config_class, args: argparse.Namespace, **overrides):
    """The config the parsed flags describe; ``overrides`` replace top-level fields."""
    values = {}
    for path, flag, spec, kind in _flags(config_class):
        value = getattr(args, "option:" + flag)
        if _value_type(kind)[1] == "+" and value is not None:
            value = tuple(value)
        values[path] = value
    return _build(config_class, values, "", overrides)


def _build(config_class, values: dict, prefix: str, overrides: dict):
    hints = typing.get_type_hints(config_class)
    kwargs = {}
    for spec in dataclasses.fields(config_class):
        if spec.name in overrides:
            kwargs[spec.name] = overrides[spec.name]
        elif dataclasses.is_dataclass(hints[spec.name]):
            kwargs[spec.name] = _build(hints[spec.name], values, f"{prefix}{spec.name}.", {})
        elif f"{prefix}{spec.name}" in values:
            kwargs[spec.name] = values[f"{prefix}{spec.name}"]
        # else: an omitted field, left at its default
    return config_class(**kwargs)
