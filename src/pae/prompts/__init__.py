"""Prompt methods behind one interface (``PromptMethod``) and the prompted ViT that runs them."""
from __future__ import annotations

from torch import nn

from ..errors import PaeError
from .base import PromptedViT, PromptMethod
from .e2vpt import E2VPT
from .vfpt import VFPT
from .vpt import VPT

# name -> one-line description (shown by `pae.cli methods`)
METHODS = {
    "linear": "head only on frozen [CLS] features (linear probe)",
    "full": "full fine-tuning of backbone and head",
    "vpt_shallow": "VPT-shallow: prompts inserted once before block 1",
    "vpt_deep": "VPT-deep: fresh prompts replace the prompt positions before every block",
    "e2vpt": "E2VPT: VPT-deep prompts plus key/value prompts appended in every attention (no pruning)",
    "vfpt": "VFPT: VPT-deep with a fraction of each layer's prompts passed through a 2-D FFT (real part)",
}


def build_method(name: str, backbone: nn.Module, num_tokens: int = 10, dropout: float = 0.0,
                 fourier_fraction: float = 0.5, kv_tokens: int = 5) -> PromptMethod:
    """The prompt method ``name`` sized for ``backbone``; ``fourier_fraction`` is VFPT's alpha, ``kv_tokens`` E2VPT's."""
    depth, dim, patch = len(backbone.blocks), backbone.embed_dim, backbone.patch_embed.patch_size[0]
    if name in ("linear", "full"):
        return PromptMethod()
    if name in ("vpt_shallow", "vpt_deep", "vfpt") and num_tokens < 1:
        raise PaeError(f"{name} needs at least one prompt token, got {num_tokens}.", "set prompt.num_tokens >= 1.")
    if name in ("vpt_shallow", "vpt_deep"):
        return VPT(depth, dim, patch, num_tokens, deep=name == "vpt_deep", dropout=dropout)
    if name == "vfpt":
        if not 0.0 <= fourier_fraction <= 1.0:
            raise PaeError(f"VFPT's fourier_fraction must be in [0, 1], got {fourier_fraction}.", "set it in [0, 1].")
        return VFPT(depth, dim, patch, num_tokens, fourier_fraction, dropout=dropout)
    if name == "e2vpt":
        if num_tokens < 0 or kv_tokens < 0:
            raise PaeError(f"e2vpt needs non-negative token counts, got {num_tokens} visual and {kv_tokens} key/value.",
                           "set num_tokens >= 0 and kv_tokens >= 0.")
        heads = backbone.blocks[0].attn.num_heads
        return E2VPT(depth, dim, patch, heads, num_tokens, kv_tokens, dropout=dropout)
    raise PaeError(f"unknown method '{name}'.", f"use one of: {', '.join(METHODS)}.")


def build_model(name: str, backbone: nn.Module, num_classes: int, num_tokens: int = 10, dropout: float = 0.0,
                fourier_fraction: float = 0.5, kv_tokens: int = 5) -> PromptedViT:
    method = build_method(name, backbone, num_tokens, dropout, fourier_fraction, kv_tokens)
    return PromptedViT(backbone, method, num_classes, train_backbone=name == "full")


__all__ = ["METHODS", "PromptMethod", "PromptedViT", "E2VPT", "VFPT", "VPT", "build_method", "build_model"]
