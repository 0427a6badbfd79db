"""Prompt methods as modules behind one interface (``PromptMethod``) and the prompted ViT that runs them.

Which methods exist, and their settings, is the registry's business (``pae.methods``); this package builds them."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import PaeError
from ..methods import check_options, make_options, method_spec, methods_on, option_fields, options_for
from ..methods.registry import resolve_options
from .base import LayerPrompts, PromptedModel, PromptedViT, PromptMethod


def build_method(
    name: str, backbone: nn.Module, options: Any = None, pae_enabled: bool = False, **values: Any
) -> PromptMethod:
    """The prompt method ``name`` sized for ``backbone``: its options as an instance, or as keyword values. Keyword
    values are a grid's shared settings: the method takes those it reads (``num_tokens`` means nothing to the
    linear probe). 'official' placeholders resolve as the official code does (with PAE or without)."""
    spec = method_spec(name)
    unknown = sorted(set(values) - set(option_fields()))
    if unknown:
        raise PaeError(f"'{unknown[0]}' is no method's option.", "see `pae.cli train --help`, method settings.")
    options = make_options(spec, options_for(name, values)) if options is None else options
    check_options(spec, options)
    from ..backbones import backbone_family

    return spec.build(backbone, resolve_options(spec, options, pae_enabled, backbone_family(backbone)))


def prompted_model_class(backbone: nn.Module) -> type[PromptedModel]:
    """PromptedViT, or PromptedSwin for a timm Swin: the model that runs prompts on this backbone's family."""
    from ..backbones import backbone_family
    from .swin import PromptedSwin

    return PromptedSwin if backbone_family(backbone) == "swin" else PromptedViT


def build_model(
    name: str,
    backbone: nn.Module,
    num_classes: int,
    options: Any = None,
    head_init: str = "official",
    pae_enabled: bool = False,
    readout: str | None = None,
    **values: Any,
) -> PromptedModel:
    """Backbone + method + head: the model a run trains (``head_init`` 'official': the method's official head;
    ``readout`` None: the family's default, [CLS] on a ViT), a PromptedViT or, on a Swin, a PromptedSwin."""
    from ..backbones import backbone_family

    spec = method_spec(name)
    family = backbone_family(backbone)
    if family not in spec.backbones:
        raise PaeError(
            f"{name} runs on {' and '.join(spec.backbones)} backbones, not on this {family} "
            f"({type(backbone).__name__}).",
            f"on a {family} backbone use one of: {', '.join(methods_on(family))} (README, 'Backbones', says why).",
        )
    return prompted_model_class(backbone)(
        backbone,
        build_method(name, backbone, options, pae_enabled, **values),
        num_classes,
        train_backbone=spec.trains_backbone,
        head_init=spec.head_init if head_init == "official" else head_init,
        readout=readout,
    )


__all__ = [
    "LayerPrompts",
    "PromptMethod",
    "PromptedModel",
    "PromptedViT",
    "build_method",
    "build_model",
    "prompted_model_class",
]
