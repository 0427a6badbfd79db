"""PAE phase II: task-aware prompt initialization from the discovered frequency shortcuts.

Each selected band gives one prompt token: the energy-weighted mean of the frozen backbone's patch
embeddings of the band-passed batch (Eqs. 3-4). Deeper prompts come from running the prompt-only
sequence through the frozen blocks, as the official code does (research/methods.md §3.3).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..errors import PaeError
from ..prompts import prompted_model_class
from ..prompts.base import LayerPrompts, Trajectory
from .frequency import FeaturesFn, ShortcutResult, band_pass_spectrum, centred_spectrum, discover_shortcuts


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Dropout and drop-path off while we read the backbone, then restore the caller's mode."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


@contextmanager
def _flags_kept(backbone: nn.Module) -> Iterator[None]:
    """Wrapping a backbone in a prompted model freezes it and sets eval mode; put the caller's flags back."""
    was_training, grads = backbone.training, [p.requires_grad for p in backbone.parameters()]
    try:
        yield
    finally:
        backbone.train(was_training)
        for p, g in zip(backbone.parameters(), grads):
            p.requires_grad_(g)


class _ZeroPrompts(LayerPrompts):
    """p all-zero prompts before every block: the official MPA scores bands through the model it is initialising,
    whose prompts are still zero. Zero tokens are not neutral (LayerNorm(0) = beta: they take part in attention)."""

    def __init__(self, widths: list[int], num_tokens: int, device: torch.device) -> None:
        super().__init__(len(widths), num_tokens, dropout=0.0)
        self.widths = widths
        self.zeros = {d: torch.zeros(num_tokens, d, device=device) for d in set(widths)}

    def prompt_set(self, layer: int) -> torch.Tensor:
        return self.zeros[self.widths[layer]]


def zero_prompt_features(backbone: nn.Module, num_tokens: int, readout: str | None = None) -> FeaturesFn:
    """What the prompted model's head reads (``readout``, None: the family's default, [CLS] on a ViT) with
    ``num_tokens`` zero prompts before every block (VPT-deep with zero prompts, as PAE's code builds it for MPA;
    0: the backbone without prompts), in eval mode.

    On CUDA it runs in bf16: MPA is ~93k forwards at 224 px with the paper's 729 bands, and the ranking does not
    need fp32.
    """
    kind = prompted_model_class(backbone)
    prompts = _ZeroPrompts(kind.layer_widths(backbone), num_tokens, next(backbone.parameters()).device)
    with torch.random.fork_rng(devices=[]), _flags_kept(backbone):  # its unused head must not move the random stream
        model = kind(backbone, prompts, 1, readout=readout).eval()

    def features(images: torch.Tensor) -> torch.Tensor:
        cuda = images.device.type == "cuda"
        with _eval_mode(backbone), torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=cuda):
            return model.readout(model.forward_features(images)).float()

    return features


def mpa_features(backbone: nn.Module, num_tokens: int, zero_prompts: bool, readout: str | None = None) -> FeaturesFn:
    """What MPA scores bands by: the zero-prompted model (the official code) or the prompt-free backbone.

    The official zero prompts are not neutral (LayerNorm(0) = beta); scoring the frozen backbone itself is what "the
    frozen model's task loss" says."""
    return zero_prompt_features(backbone, num_tokens if zero_prompts else 0, readout)


def _energy_pool(tokens: torch.Tensor) -> torch.Tensor:
    """(B, N, d) -> (d,): mean weighted by token energy ||t||^2, normalised over the whole batch and all tokens."""
    energy = tokens.float().pow(2).sum(-1)
    weights = energy / energy.sum()
    return (weights[..., None] * tokens.float()).sum((0, 1))


def energy_pooled_tokens(backbone: nn.Module, band_images: torch.Tensor) -> torch.Tensor:
    """One prompt token per band: (S_sel, B, C, H, W) band-passed batches -> (S_sel, d), in the space of the patch
    tokens where the first prompts go in (ViT: after position embedding; Swin: the patch embedding, width C_0)."""
    kind = prompted_model_class(backbone)
    with torch.no_grad(), _eval_mode(backbone):
        return torch.stack([_energy_pool(kind.patch_tokens(backbone, x)) for x in band_images])


def _check_depth(backbone: nn.Module, depth: int | None) -> None:
    n = len(prompted_model_class(backbone).layer_widths(backbone))
    if depth is not None and not 1 <= depth <= n:
        raise PaeError(
            f"prompt depth {depth} is outside 1..{n} (the backbone has {n} blocks).",
            f"use depth 1 for shallow prompts or {n} for deep prompts on every block.",
        )


def first_layers(trajectory: Trajectory, n: int) -> Trajectory:
    """The first ``n`` prompt layers, counted across stages (a Swin's stages stay a list)."""
    if isinstance(trajectory, torch.Tensor):
        return trajectory[:n]
    out = []
    for stage in trajectory:
        if n > 0:
            out.append(stage[:n])
        n -= stage.shape[0]
    return out


def propagate(backbone: nn.Module, first: torch.Tensor, depth: int | None = None) -> Trajectory:
    """(p, C) -> the input prompts of the first ``depth`` blocks (None: all), each from the previous block applied
    to the prompt-only sequence: (depth, p, d) on a ViT, per stage (L_s, p, C_s) on a Swin (``propagate_prompts``)."""
    _check_depth(backbone, depth)
    with torch.no_grad(), _eval_mode(backbone):
        states = prompted_model_class(backbone).propagate_prompts(backbone, first)
    return states if depth is None else first_layers(states, depth)


def find_shortcuts(
    backbone: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *grid: int,
    features_fn: FeaturesFn | None = None,
    **search: Any,
) -> ShortcutResult:
    """Phase I on the frozen backbone (what its head reads, without prompts, unless ``features_fn`` is given),
    dropout and drop-path off. ``grid`` (num_bands, window, stride) and ``search`` (scorer, seed, folds, ...) are
    ``discover_shortcuts``' arguments."""
    features_fn = features_fn or zero_prompt_features(backbone, 0)
    with _eval_mode(backbone):
        return discover_shortcuts(features_fn, images, labels, num_classes, *grid, **search)


def band_prompts(
    backbone: nn.Module, images: torch.Tensor, bands: torch.Tensor, depth: int | None = None
) -> Trajectory:
    """Phase II: one energy-pooled token per band (p, H, W), propagated to ``depth`` layers (None: every block)."""
    _check_depth(backbone, depth)
    spectrum = centred_spectrum(images)
    first = torch.cat([energy_pooled_tokens(backbone, band_pass_spectrum(spectrum, m[None])) for m in bands])
    return propagate(backbone, first, depth)


def task_aware_prompts(
    backbone: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    num_tokens: int,
    depth: int,
    window: int,
    stride: int,
    **search: Any,
) -> tuple[Trajectory, ShortcutResult]:
    """PAE's MPA: discover ``num_tokens`` shortcut bands, pool one token per band, propagate to ``depth`` layers.

    ``images`` are normalised model inputs at the backbone's resolution; ``search`` takes ``find_shortcuts``'
    keywords. Returns the initial prompts ((depth, num_tokens, d) on a ViT, per stage on a Swin) and the
    discovery result.
    """
    _check_depth(backbone, depth)
    result = find_shortcuts(backbone, images, labels, num_classes, num_tokens, window, stride, **search)
    return band_prompts(backbone, images, result.masks[result.selected], depth), result
