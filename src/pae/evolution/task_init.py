"""PAE phase II: task-aware prompt initialization from the discovered frequency shortcuts.

Each selected band gives one prompt token: the energy-weighted mean of the frozen backbone's patch
embeddings of the band-passed batch (Eqs. 3-4). Deeper prompts come from running the prompt-only
sequence through the frozen blocks, as the official code does (research/methods.md §3.3).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..errors import PaeError
from ..prompts.base import LayerPrompts, embed_tokens
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


def cls_features(backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """[CLS] after the final norm (B, d): what the prompted model's linear head sees.

    This is the backbone without prompts. The official code scores with the prompted model and all-zero
    prompts, which are not neutral (LayerNorm(0) = beta, so the zero tokens take part in attention); scoring
    the frozen backbone itself is what "the frozen model's task loss" says. On CUDA it runs in bf16: MPA is
    ~93k forwards at 224 px with the paper's 729 bands, and the ranking does not need fp32.
    """
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=images.device.type == "cuda"):
        return backbone.forward_features(images)[:, 0].float()


class _ZeroPrompts(LayerPrompts):
    """p all-zero prompts before every block: the official MPA scores bands through the model it is initialising,
    whose prompts are still zero. Zero tokens are not neutral (LayerNorm(0) = beta: they take part in attention)."""

    def __init__(self, depth: int, dim: int, num_tokens: int, device: torch.device) -> None:
        super().__init__(depth, num_tokens, dropout=0.0)
        self.zeros = torch.zeros(num_tokens, dim, device=device)

    def prompt_set(self, layer: int) -> torch.Tensor:
        return self.zeros


def zero_prompt_features(backbone: nn.Module, num_tokens: int) -> FeaturesFn:
    """[CLS] after the final norm of the backbone with ``num_tokens`` zero prompts before every block (VPT-deep with
    zero prompts, as PAE's code builds it for MPA), in eval mode; bf16 on CUDA as ``cls_features``."""
    from ..prompts.base import PromptedViT

    prompts = _ZeroPrompts(len(backbone.blocks), backbone.embed_dim, num_tokens, next(backbone.parameters()).device)
    with torch.random.fork_rng(devices=[]):  # its unused head must not move the run's random stream
        model = PromptedViT(backbone, prompts, 1).eval()

    def features(images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=images.device.type == "cuda"):
            return model.forward_features(images)[:, 0].float()

    return features


def mpa_features(backbone: nn.Module, num_tokens: int, zero_prompts: bool) -> FeaturesFn:
    """What MPA scores bands by: the zero-prompted model (the official code) or the prompt-free backbone."""
    return zero_prompt_features(backbone, num_tokens) if zero_prompts else (lambda x: cls_features(backbone, x))


def patch_tokens(backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Patch tokens after position embedding (B, N, d), prefix tokens dropped: the space prompts live in.

    norm_pre is applied because PromptedViT inserts prompts after it (Identity for DINOv2 and orig_in21k ViTs).
    """
    return embed_tokens(backbone, images)[:, backbone.num_prefix_tokens :]


def _energy_pool(tokens: torch.Tensor) -> torch.Tensor:
    """(B, N, d) -> (d,): mean weighted by token energy ||t||^2, normalised over the whole batch and all tokens."""
    energy = tokens.float().pow(2).sum(-1)
    weights = energy / energy.sum()
    return (weights[..., None] * tokens.float()).sum((0, 1))


def energy_pooled_tokens(backbone: nn.Module, band_images: torch.Tensor) -> torch.Tensor:
    """One prompt token per band: (S_sel, B, C, H, W) band-passed batches -> (S_sel, d)."""
    with torch.no_grad(), _eval_mode(backbone):
        return torch.stack([_energy_pool(patch_tokens(backbone, x)) for x in band_images])


def _check_depth(backbone: nn.Module, depth: int) -> None:
    n = len(backbone.blocks)
    if not 1 <= depth <= n:
        raise PaeError(
            f"prompt depth {depth} is outside 1..{n} (the backbone has {n} blocks).",
            f"use depth 1 for shallow prompts or {n} for deep prompts on every block.",
        )


def propagate(backbone: nn.Module, first: torch.Tensor, depth: int) -> torch.Tensor:
    """(p, d) -> (depth, p, d): layer l+1 is block l applied to the prompt-only sequence of layer l."""
    _check_depth(backbone, depth)
    states = [first]
    with torch.no_grad(), _eval_mode(backbone):
        for block in backbone.blocks[: depth - 1]:
            states.append(block(states[-1][None])[0])
    return torch.stack(states)


def find_shortcuts(
    backbone: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    num_bands: int,
    window: int,
    stride: int,
    scorer: str = "linear_probe",
    seed: int = 0,
    features_fn: FeaturesFn | None = None,
    folds: int = 2,
    conjugate_pairs: bool = False,
    chunk_images: int = 2048,
) -> ShortcutResult:
    """Phase I on the frozen backbone (its [CLS] unless ``features_fn`` is given), dropout and drop-path off."""
    features_fn = features_fn or (lambda x: cls_features(backbone, x))
    with _eval_mode(backbone):
        return discover_shortcuts(
            features_fn,
            images,
            labels,
            num_classes,
            num_bands,
            window,
            stride,
            scorer=scorer,
            seed=seed,
            folds=folds,
            conjugate_pairs=conjugate_pairs,
            chunk_images=chunk_images,
        )


def band_prompts(backbone: nn.Module, images: torch.Tensor, bands: torch.Tensor, depth: int) -> torch.Tensor:
    """Phase II: one energy-pooled token per band (p, H, W), propagated to ``depth`` layers: (depth, p, d)."""
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
    scorer: str = "linear_probe",
    seed: int = 0,
    features_fn: FeaturesFn | None = None,
    folds: int = 2,
    conjugate_pairs: bool = False,
    chunk_images: int = 2048,
) -> tuple[torch.Tensor, ShortcutResult]:
    """PAE's MPA: discover ``num_tokens`` shortcut bands, pool one token per band, propagate to ``depth`` layers.

    ``images`` are normalised model inputs at the backbone's resolution. Returns the initial prompts
    (depth, num_tokens, d) and the discovery result.
    """
    _check_depth(backbone, depth)
    result = find_shortcuts(
        backbone,
        images,
        labels,
        num_classes,
        num_tokens,
        window,
        stride,
        scorer,
        seed,
        features_fn,
        folds,
        conjugate_pairs,
        chunk_images,
    )
    return band_prompts(backbone, images, result.masks[result.selected], depth), result
