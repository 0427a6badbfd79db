"""Settings dataclasses, their command-line flags and their flat MLflow names, from one definition.

A settings class declares each field once with ``option(default, help, ...)``; ``add_arguments`` turns the fields
into flags (``--prefix-name``; booleans get ``--name/--no-name``), ``check_choices`` checks the fields that list
their choices, and ``flatten`` names nested settings ``section.name`` for MLflow and tables. Nothing is listed
twice. This module, like the whole ``pae.config`` package, never imports torch: the CLI's help, the params checks
and the Snakefile read it, and torch costs each of them seconds.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from dataclasses import MISSING, Field, field, fields, is_dataclass
from typing import Any

from ..errors import PaeError


def option(
    default: Any,
    help: str = "",
    *,
    flag: str | None = None,
    choices: Iterable[str] | None = None,
    several: bool = False,
    cli: bool = True,
    ours: Any = MISSING,
) -> Any:
    """A dataclass field with what its command-line flag needs.

    ``default`` is the official code's value. ``ours`` is our deliberate improvement where we have one: the
    ``ours`` profile (``profile_values``) switches every such field at once. ``flag`` overrides the name (``--kind``
    for ``data_kind``); ``choices`` are checked by ``check_choices``; ``several`` takes a list on the command line
    (a group of runs); ``cli=False`` keeps the field off it."""
    metadata = {
        "help": help,
        "flag": flag,
        "choices": tuple(choices) if choices else None,
        "several": several,
        "cli": cli,
        "ours": ours,
    }
    return field(default=default, metadata=metadata)


PROFILES = ("official", "ours")


def profile_values(cls: type, profile: str) -> dict[str, Any]:
    """The values ``profile`` gives the fields of ``cls``: none for 'official' (the defaults are the official code's),
    every declared improvement for 'ours'."""
    if profile not in PROFILES:
        raise PaeError(f"unknown profile '{profile}'.", f"use one of: {', '.join(PROFILES)}.")
    if profile == "official":
        return {}
    return {f.name: f.metadata["ours"] for f in fields(cls) if f.metadata.get("ours", MISSING) is not MISSING}


NOT_A_FLAG = {"cli": False}  # metadata of fields the command line does not set (nested settings, tags)


def cli_fields(cls: type) -> list[Field]:
    """The fields of ``cls`` that are command-line flags."""
    return [f for f in fields(cls) if f.metadata.get("cli", True)]


def flag_of(f: Field, prefix: str = "") -> str:
    return f.metadata.get("flag") or "--" + (prefix + f.name).replace("_", "-")


def value_type(f: Field) -> type:
    """The type a field's value takes, from its default (str for fields without one)."""
    return type(f.default) if f.default is not MISSING and f.default is not None else str


def typed_text(kind: type) -> Callable[[str], str]:
    """An argparse type that checks a number but keeps the text as typed (it names a run's folder)."""

    def check(text: str) -> str:
        kind(text)  # argparse turns the ValueError into a usage error naming the flag
        return text

    check.__name__ = kind.__name__
    return check


def add_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    prefix: str = "",
    only: Iterable[str] | None = None,
) -> None:
    """One flag per command-line field of ``cls`` (or of its fields named in ``only``); an omitted flag is None, so
    the dataclass default applies."""
    for f in cli_fields(cls):
        if only is None or f.name in only:
            add_flag(parser, f, prefix)


def add_flag(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, f: Field, prefix: str = "", note: str = ""
) -> None:
    """The flag of one field: ``--prefix-name``, booleans as ``--name/--no-name``; ``note`` ends its help."""
    dest, meta = prefix + f.name, f.metadata
    text = " ".join(filter(None, [meta.get("help", ""), note]))
    kind = value_type(f)
    ours = meta.get("ours", MISSING)
    if ours is not MISSING:
        text += f" [--profile ours: {ours}]"
    if kind is bool:
        parser.add_argument(
            flag_of(f, prefix),
            dest=dest,
            action=argparse.BooleanOptionalAction,
            default=None,
            help=f"{text} (default: {'on' if f.default else 'off'})",
        )
    elif meta.get("several"):
        parser.add_argument(
            flag_of(f, prefix),
            dest=dest,
            nargs="+",
            type=typed_text(kind),
            default=None,
            help=f"{text}; several values: a group of runs (default: {f.default})",
        )
    else:
        parser.add_argument(
            flag_of(f, prefix),
            dest=dest,
            type=kind,
            default=None,
            choices=meta.get("choices"),
            help=f"{text} (default: {f.default})",
        )


def given_arguments(cls: type, args: argparse.Namespace, prefix: str = "") -> dict[str, Any]:
    """The fields of ``cls`` that were given on the command line, by field name."""
    return {
        f.name: getattr(args, prefix + f.name)
        for f in cli_fields(cls)
        if getattr(args, prefix + f.name, None) is not None
    }


def check_choices(settings: Any, prefix: str = "") -> None:
    """Every field that declares its choices holds one of them."""
    for f in fields(settings):
        allowed, value = f.metadata.get("choices"), getattr(settings, f.name)
        if allowed and value not in allowed:
            raise PaeError(f"unknown {prefix}{f.name} '{value}'.", f"use one of: {', '.join(allowed)}.")


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
    """Rebuild ``cls`` from ``asdict`` output. Unknown keys are an error rather than silently dropped: a config
    from another version must not pass as this one."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise PaeError(
            f"'{unknown[0]}' is not a {cls.__name__} setting.",
            "the file comes from another version; rerun the job that wrote it.",
        )
    return cls(**values)
