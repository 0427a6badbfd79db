"""Prompt methods behind one interface (``PromptMethod``) and the prompted ViT that runs them."""
from __future__ import annotations

from torch import nn

from ..errors import PaeError
from .base import PromptedViT, PromptMethod
from .vpt import VPT

# name -> one-line description (shown by `pae.cli methods`)
METHODS = {
    "linear": "head only on frozen [CLS] features (linear probe)",
    "full": "full fine-tuning of backbone and head",
    "vpt_shallow": "VPT-shallow: prompts inserted once before block 1",
    "vpt_deep": "VPT-deep: fresh prompts replace the prompt positions before every block",
}


def build_method(name: str, backbone: nn.Module, num_tokens: int = 10, dropout: float = 0.0) -> PromptMethod:
    """The prompt method ``name`` sized for ``backbone``."""
    depth, dim, patch = len(backbone.blocks), backbone.embed_dim, backbone.patch_embed.patch_size[0]
    if name in ("linear", "full"):
        return PromptMethod()
    if name in ("vpt_shallow", "vpt_deep"):
        if num_tokens < 1:
            raise PaeError(f"{name} needs at least one prompt token, got {num_tokens}.", "set prompt.num_tokens >= 1.")
        return VPT(depth, dim, patch, num_tokens, deep=name == "vpt_deep", dropout=dropout)
    raise PaeError(f"unknown method '{name}'.", f"use one of: {', '.join(METHODS)}.")


def build_model(name: str, backbone: nn.Module, num_classes: int, num_tokens: int = 10, dropout: float = 0.0) -> PromptedViT:
    return PromptedViT(backbone, build_method(name, backbone, num_tokens, dropout), num_classes, train_backbone=name == "full")


__all__ = ["METHODS", "PromptMethod", "PromptedViT", "VPT", "build_method", "build_model"]
