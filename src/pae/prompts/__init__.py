"""Prompt methods behind one interface (``PromptMethod``) and the prompted ViT that runs them."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..config import option
from ..errors import PaeError
from .base import LayerPrompts, PromptedViT, PromptMethod
from .bpt import BPT
from .e2vpt import E2VPT
from .ivpt import IVPT
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
    "bpt_bilinear": "BPT-deep, bilinear: prompts A_l B_l^T of rank bpt_rank (B Xavier or whitening columns)",
    "bpt_bilinear_shallow": "BPT-shallow, bilinear: prompts A B^T before block 1",
    "bpt_fwhiten": "BPT-deep, fixed whitening: prompts P_l W_l^T, W_l the ZCA of the block's q/k statistics",
    "bpt_fwhiten_shallow": "BPT-shallow, fixed whitening",
    "bpt_twhiten": "BPT-deep, trainable whitening: P_l W_l^T with W_l learnable (d^2 per layer)",
    "bpt_twhiten_shallow": "BPT-shallow, trainable whitening",
    "ivpt": "iVPT (our reconstruction): VPT-deep + gated cross-layer prompt connection + attentive reinforcement",
}


@dataclass
class MethodOptions:
    """Every method's settings; a method reads the ones that concern it."""

    num_tokens: int = option(10, "prompt tokens per layer")
    prompt_dropout: float = option(0.1, "dropout on the prompt tokens (VPT: 0.1)")
    fourier_fraction: float = option(0.5, "VFPT: share of each layer's prompts made Fourier prompts (alpha)")
    kv_tokens: int = option(5, "E2VPT: key/value prompts per layer")
    bpt_rank: int = option(32, "BPT-bilinear: rank r of A B^T (the paper: 75 at d=768)")
    bpt_init: str = option("xavier", "BPT-bilinear: init of B, xavier | whitening (random columns of W)")
    whiten_eps: float = option(1e-4, "BPT: ridge on the whitening eigenvalues, relative to the largest")
    fit_images: int = option(100, "BPT: training images the whitening is computed from")
    ivpt_cdc: bool = option(True, "iVPT: cross-layer dynamic connection")
    ivpt_dynamic: bool = option(True, "iVPT: input-dependent gates (dynamic aggregation)")
    ivpt_ar: bool = option(True, "iVPT: attentive reinforcement")
    ivpt_top_k: int = option(8, "iVPT: image tokens reinforced per block")


def build_method(name: str, backbone: nn.Module, **options: object) -> PromptMethod:
    """The prompt method ``name`` sized for ``backbone``; ``options`` are ``MethodOptions`` fields."""
    o = MethodOptions(**options)
    if o.fit_images < 1:
        raise PaeError(f"fit_images must be >= 1, got {o.fit_images}.", "set fit_images to e.g. 100.")
    depth, dim, patch = len(backbone.blocks), backbone.embed_dim, backbone.patch_embed.patch_size[0]
    if name not in METHODS:
        raise PaeError(f"unknown method '{name}'.", f"use one of: {', '.join(METHODS)}.")
    if name in ("linear", "full"):
        return PromptMethod()
    least = 0 if name == "e2vpt" else 1
    if o.num_tokens < least:
        raise PaeError(f"{name} needs at least {least} prompt tokens, got {o.num_tokens}.", f"set num_tokens >= {least}.")
    if name in ("vpt_shallow", "vpt_deep"):
        return VPT(depth, dim, patch, o.num_tokens, deep=name == "vpt_deep", dropout=o.prompt_dropout)
    if name == "vfpt":
        if not 0.0 <= o.fourier_fraction <= 1.0:
            raise PaeError(f"VFPT's fourier_fraction must be in [0, 1], got {o.fourier_fraction}.", "set it in [0, 1].")
        return VFPT(depth, dim, patch, o.num_tokens, o.fourier_fraction, dropout=o.prompt_dropout)
    if name == "e2vpt":
        if o.kv_tokens < 0:
            raise PaeError(f"e2vpt needs a non-negative number of key/value tokens, got {o.kv_tokens}.", "set kv_tokens >= 0.")
        heads = backbone.blocks[0].attn.num_heads
        return E2VPT(depth, dim, patch, heads, o.num_tokens, o.kv_tokens, dropout=o.prompt_dropout)
    if name.startswith("bpt_"):
        variant = name.split("_")[1]
        return BPT(depth, dim, o.num_tokens, deep=not name.endswith("_shallow"), variant=variant, rank=o.bpt_rank,
                   b_init=o.bpt_init, whiten_eps=o.whiten_eps, dropout=o.prompt_dropout)
    if o.ivpt_top_k < 1:
        raise PaeError(f"iVPT's ivpt_top_k must be >= 1, got {o.ivpt_top_k}.", "set ivpt_top_k >= 1 (or ivpt_ar false).")
    return IVPT(depth, dim, patch, o.num_tokens, dropout=o.prompt_dropout, cdc=o.ivpt_cdc, dynamic=o.ivpt_dynamic,
                ar=o.ivpt_ar, ar_top_k=o.ivpt_top_k)


def build_model(name: str, backbone: nn.Module, num_classes: int, **options: object) -> PromptedViT:
    method = build_method(name, backbone, **options)
    return PromptedViT(backbone, method, num_classes, train_backbone=name == "full")


__all__ = ["METHODS", "BPT", "E2VPT", "IVPT", "LayerPrompts", "MethodOptions", "PromptMethod", "PromptedViT", "VFPT",
           "VPT", "build_method", "build_model"]
