"""The prompt-method registry: each method's file registers itself, as timm's models and PEFT's tuners do.

A registration names the method and declares what the rest of the pipeline needs to know about it: its options
class (its settings, hence its command-line flags and params keys), whether and where it has prompts (none,
shallow or deep: which PAE parts apply), whether it trains the backbone, the fewest prompt tokens it accepts and
its place in listings and tables. Nothing outside a method's file tests a method's name; everything reads this.

The registry imports no torch: the builder a method registers imports its modules when it is called.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import Field, dataclass, fields
from pathlib import Path
from typing import Any

from ..errors import PaeError

PROMPT_PLACES = ("none", "shallow", "deep")
PLUGINS_ENV = "PAE_PLUGINS"  # modules or .py files that register more methods, separated by ':'


@dataclass(frozen=True)
class MethodSpec:
    """What the pipeline knows about a method without building it."""

    name: str
    summary: str  # one line for `pae.cli methods`
    options: type  # dataclass of the method's settings
    build: Callable[..., Any]  # (backbone, options) -> PromptMethod
    prompts: str = "deep"  # none | shallow (one prompt layer) | deep (prompts at every block)
    trains_backbone: bool = False  # full fine-tuning: its runs cannot share a frozen backbone
    least_tokens: int = 1  # the fewest prompt tokens it accepts (E2VPT's key/value prompts work without any)
    order: int = 100  # place in listings and tables; the linear probe, the baseline, comes first
    head_init: str = "kaiming_fan_out"  # the official code's head init (VPT's; BPT's is trunc_normal)
    backbones: tuple[str, ...] = ("vit",)  # the backbone families it runs on (pae.backbones.backbone_family)

    @property
    def has_prompts(self) -> bool:
        return self.prompts != "none"

    @property
    def deep(self) -> bool:
        return self.prompts == "deep"

    @property
    def is_linear_probe(self) -> bool:
        """No prompts and a frozen backbone: only the head trains (the baseline every table should hold)."""
        return not self.has_prompts and not self.trains_backbone

    def option_names(self) -> set[str]:
        return {f.name for f in fields(self.options)}


METHODS: dict[str, MethodSpec] = {}


def register_method(
    name: str,
    *,
    summary: str,
    options: type,
    prompts: str = "deep",
    trains_backbone: bool = False,
    least_tokens: int = 1,
    order: int = 100,
    head_init: str = "kaiming_fan_out",
    backbones: tuple[str, ...] = ("vit",),
) -> Callable[[Callable], Callable]:
    """Decorate a method's builder ``(backbone, options) -> PromptMethod`` to register it under ``name``."""
    if prompts not in PROMPT_PLACES:
        raise ValueError(f"prompts must be one of {PROMPT_PLACES}, got {prompts!r}")

    def register(build: Callable) -> Callable:
        if name in METHODS and _source(METHODS[name].build) != _source(build):  # a re-imported file may repeat
            raise ValueError(f"method '{name}' is registered twice")
        METHODS[name] = MethodSpec(
            name, summary, options, build, prompts, trains_backbone, least_tokens, order, head_init, backbones
        )
        return build

    return register


def _source(build: Callable) -> tuple[str, str]:
    return getattr(build, "__qualname__", ""), getattr(getattr(build, "__code__", None), "co_filename", "")


def ordered() -> list[MethodSpec]:
    """Every registered method in display order."""
    return sorted(METHODS.values(), key=lambda s: (s.order, s.name))


def methods_on(family: str) -> list[str]:
    """The methods that run on a backbone family ('vit', 'swin'), in display order: what a refusal offers instead."""
    return [s.name for s in ordered() if family in s.backbones]


def method_spec(name: str) -> MethodSpec:
    """The registration of ``name``; an unknown name is an error that suggests the closest one."""
    if name not in METHODS:
        close = difflib.get_close_matches(name, list(METHODS), n=1)
        hint = f"did you mean '{close[0]}'? Otherwise use" if close else "use"
        raise PaeError(f"unknown method '{name}'.", f"{hint} one of: {', '.join(s.name for s in ordered())}.")
    return METHODS[name]


def option_fields() -> dict[str, tuple[Field, list[str]]]:
    """Every method option once (shared ones, like num_tokens, are one field), with the methods that read it."""
    out: dict[str, tuple[Field, list[str]]] = {}
    for spec in ordered():
        for f in fields(spec.options):
            out.setdefault(f.name, (f, []))[1].append(spec.name)
    return out


def options_for(name: str, values: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``values`` that method ``name`` reads (a grid's shared settings, narrowed to one method)."""
    own = method_spec(name).option_names()
    return {k: v for k, v in values.items() if k in own}


def make_options(spec: MethodSpec, values: dict[str, Any]) -> Any:
    """The method's options from ``values`` (its own fields only), checked."""
    unknown = sorted(set(values) - spec.option_names())
    if unknown:
        readers = option_fields().get(unknown[0], (None, []))[1]
        where = f" (it is read by: {', '.join(readers)})" if readers else ""
        raise PaeError(
            f"method '{spec.name}' has no option '{unknown[0]}'{where}.",
            f"drop it, or use one of {spec.name}'s options: {', '.join(sorted(spec.option_names())) or 'none'}.",
        )
    options = spec.options(**values)
    check_options(spec, options)
    return options


def check_options(spec: MethodSpec, options: Any) -> None:
    """The checks every prompt method shares, then the options class's own ``check()``."""
    if type(options) is not spec.options:
        raise PaeError(
            f"method '{spec.name}' takes {spec.options.__name__}, not {type(options).__name__}.",
            "build the options with the method's own class (pae.methods.method_spec(name).options).",
        )
    tokens = getattr(options, "num_tokens", None)
    if tokens is not None and tokens < spec.least_tokens:
        raise PaeError(
            f"{spec.name} needs at least {spec.least_tokens} prompt tokens, got {tokens}.",
            f"set num_tokens >= {spec.least_tokens}.",
        )
    dropout = getattr(options, "prompt_dropout", None)
    if dropout is not None and not 0 <= dropout < 1:
        raise PaeError(f"prompt_dropout must be in [0, 1), got {dropout}.", "set it in [0, 1).")
    if hasattr(options, "check"):
        options.check()


def resolve_options(spec: MethodSpec, options: Any, pae_enabled: bool, family: str = "vit") -> Any:
    """The options with every 'official' placeholder replaced by what the official code does for this method (with
    or without PAE, on this backbone family), so a run's config records the value it ran with."""
    return options.resolved(spec, pae_enabled, family) if hasattr(options, "resolved") else options


def load_plugins(sources: str | None = None) -> None:
    """Import the modules or ``.py`` files in ``sources`` (default: $PAE_PLUGINS), each registering methods."""
    for source in filter(None, (os.environ.get(PLUGINS_ENV, "") if sources is None else sources).split(":")):
        if source.endswith(".py"):
            path = Path(source).resolve()
            if not path.is_file():
                raise PaeError(
                    f"method plugin '{source}' does not exist.", f"correct ${PLUGINS_ENV} or params plugins."
                )
            name = f"pae_plugin_{path.stem}"
            if name in sys.modules:
                continue
            module_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
        else:
            importlib.import_module(source)
