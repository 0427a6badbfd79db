"""Option dataclasses, their command-line flags and their flat MLflow names, from one definition.

A settings dataclass declares each field once with ``option(default, help)``; ``add_arguments`` turns
the fields into flags (``--prefix-name``; booleans get ``--name/--no-name``) and ``flatten`` names nested
settings ``section.name`` for MLflow and tables. Nothing is listed twice.
"""
from __future__ import annotations

import argparse
from dataclasses import MISSING, field, fields, is_dataclass
from typing import Any


def option(default: Any, help: str = "") -> Any:
    """A dataclass field with a help text for its command-line flag."""
    return field(default=default, metadata={"help": help})


def add_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    """One flag per field of ``cls``; an omitted flag is None, so the dataclass default applies."""
    for f in fields(cls):
        flag, dest = "--" + (prefix + f.name).replace("_", "-"), prefix + f.name
        text = f.metadata.get("help", "")
        if isinstance(f.default, bool):
            parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None,
                                help=f"{text} (default: {'on' if f.default else 'off'})")
        else:
            kind = type(f.default) if f.default is not MISSING and f.default is not None else str
            parser.add_argument(flag, dest=dest, type=kind, default=None, help=f"{text} (default: {f.default})")


def from_arguments(cls: type, args: argparse.Namespace, prefix: str = "") -> Any:
    """An instance of ``cls`` from the flags that were given; the rest keep their defaults."""
    given = {f.name: getattr(args, prefix + f.name) for f in fields(cls) if getattr(args, prefix + f.name, None) is not None}
    return cls(**given)


def flatten(settings: Any, prefix: str = "") -> dict[str, Any]:
    """{"name": value, "section.name": value, ...} for a dataclass that may nest dataclasses."""
    out: dict[str, Any] = {}
    for f in fields(settings):
        value = getattr(settings, f.name)
        if is_dataclass(value):
            out.update(flatten(value, f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = value
    return out


def from_dict(cls: type, values: dict[str, Any]) -> Any:
    """Rebuild ``cls`` (nested dataclasses included) from ``asdict`` output, e.g. a run's config.json.

    Unknown keys are an error rather than silently dropped: a config from another version must not pass as this one.
    """
    from .errors import PaeError

    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise PaeError(f"'{unknown[0]}' is not a {cls.__name__} setting.", "the file comes from another version; rerun the job that wrote it.")
    kwargs = {}
    for name, value in values.items():
        default = known[name].default_factory() if known[name].default_factory is not MISSING else None
        kwargs[name] = from_dict(type(default), value) if is_dataclass(default) and isinstance(value, dict) else value
    return cls(**kwargs)
