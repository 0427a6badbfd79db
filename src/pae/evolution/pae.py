"""PAE as a plug-in: it sees a prompt method only through ``trajectory()`` and ``initialize()``.

Three parts, each switchable for the ablation:

- ``init`` (MPA): frequency-shortcut discovery on a training batch, then task-aware prompts written
  through ``initialize()``;
- ``koopman``: one operator K carries the lifted prompt chain across depth (L_kp);
- ``lyapunov``: a learned energy must not grow along the Koopman step (L_stab; needs ``koopman``).

The loss is CE + koopman_weight * L_kp + lyapunov_weight * L_stab. The regularizer's parameters (U, K, L)
are trained with the prompts and their gradient is clipped to norm ``clip`` (10, as the official code);
they exist only in training, so inference costs exactly what the base method costs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from ..config import option
from ..errors import PaeError
from ..prompts import PromptMethod
from .frequency import SCORERS, band_masks, conjugate_pair, scaled_window
from .koopman import LYAPUNOV_FORMS, LYAPUNOV_TARGETS, MODES, KoopmanLyapunov
from .task_init import band_prompts, find_shortcuts


PARTS = ("init", "koopman", "lyapunov")  # the switchable parts, in the paper's order
SETTINGS_OF = {  # which settings each part reads: a pipeline passes a run only its parts' settings, so changing
                 # e.g. the Koopman weight reruns the Koopman runs and not the init-only ones
    "init": ("scorer", "window", "stride", "init_images", "folds", "conjugate_pairs"),
    "koopman": ("koopman_dim", "koopman_weight", "koopman_mode", "norm_preserving", "chain_start", "clip"),
    "lyapunov": ("lyapunov_weight", "lyapunov_form", "lyapunov_target"),
}


@dataclass
class PAEOptions:
    """PAE's settings; on the command line each is ``--pae-<name>``."""

    init: bool = option(False, "MPA: frequency-shortcut discovery + task-aware prompt init")
    koopman: bool = option(False, "Koopman consistency over the prompt trajectory")
    lyapunov: bool = option(False, "Lyapunov stability regularizer (needs koopman)")
    scorer: str = option("linear_probe", "band scorer: random_head (official code) | linear_probe | ncm")
    window: int = option(0, "band size on the centred spectrum; 0: 16 at 224 px, scaled with the resolution")
    stride: int = option(0, "band stride; 0: window // 2")
    init_images: int = option(128, "training images for MPA (the official code: one batch of 128)")
    folds: int = option(2, "cross-fitting folds of the fitted scorers (1: fit and score on the same images)")
    conjugate_pairs: bool = option(False, "keep each band with its point-mirrored partner (Wang et al.); official: off")
    koopman_dim: int = option(256, "Koopman lift dimension k")
    koopman_weight: float = option(0.5, "alpha, the weight of L_kp")
    lyapunov_weight: float = option(0.2, "beta, the weight of L_stab")
    koopman_mode: str = option("global", "global (one K) | layerwise (one K per transition, ablation)")
    lyapunov_form: str = option("hinge", "hinge (paper) | official (the Feb-2026 code's normalisations)")
    lyapunov_target: str = option("prediction", "prediction: V(z_l K) as the code | next: V(z_{l+1}) as its README")
    norm_preserving: bool = option(False, "keep U orthonormal against the collapse U -> 0 (a deviation)")
    chain_start: int = option(0, "first prompt layer of the Koopman chain; 1 reproduces the official code")
    clip: float = option(10.0, "gradient-norm clip of the regularizer's parameters (official: 10)")

    @property
    def enabled(self) -> bool:
        return any(getattr(self, part) for part in PARTS)

    @property
    def label(self) -> str:
        """The variant's name in metrics and tables: 'none', or its parts joined by '+', e.g. 'init+koopman'."""
        return "+".join(part for part in PARTS if getattr(self, part)) or "none"


class PAE(nn.Module):
    """The PAE plug-in for one prompt method; holds the Koopman-Lyapunov regularizer when it is on."""

    def __init__(self, options: PAEOptions, method: PromptMethod, embed_dim: int) -> None:
        super().__init__()
        self.options = options
        o = options
        if o.lyapunov and not o.koopman:
            raise PaeError("the Lyapunov regularizer acts on the Koopman step, but pae_koopman is off.",
                           "turn pae_koopman on too, or pae_lyapunov off.")
        _validate(o)
        if o.enabled and method.num_tokens == 0:
            raise PaeError(f"PAE needs a prompt method, but '{type(method).__name__}' has no prompts.",
                           "pick a prompt method (e.g. vpt_deep) or turn PAE off for linear/full.")
        self.layers = method.trajectory().shape[0] if o.enabled else 0
        self.regularizer = None
        if o.koopman:
            transitions = self.layers - o.chain_start - 1
            if transitions < 1:
                raise PaeError(f"the Koopman chain needs at least 2 prompt layers, but this method has {self.layers} "
                               f"(chain_start {o.chain_start}).", "use a deep method, or turn pae_koopman off (shallow methods: init only).")
            self.regularizer = KoopmanLyapunov(embed_dim, o.koopman_dim, transitions, o.koopman_mode, o.lyapunov_form,
                                               o.lyapunov_target, o.norm_preserving)

    @torch.no_grad()
    def initialize(self, method: PromptMethod, prompts: torch.Tensor) -> None:
        """Write task-aware prompts (depth >= this method's prompt layers, p, d) through ``method.initialize``."""
        want = tuple(method.trajectory().shape)
        if prompts.ndim != 3 or prompts.shape[0] < want[0] or tuple(prompts.shape[1:]) != want[1:]:
            raise PaeError(f"the initial prompts have shape {tuple(prompts.shape)}, but this method needs "
                           f"({want[0]} or more layers, {want[1]} tokens, {want[2]} dims).",
                           "rebuild them with the same num_tokens and backbone as the training run (pae.cli init-prompts).")
        method.initialize(prompts[: want[0]].to(method.trajectory().device))

    def loss(self, method: PromptMethod) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted regularizer for this step and its unweighted terms (only when Koopman is on)."""
        terms = self.regularizer(method.trajectory()[self.options.chain_start:], lyapunov=self.options.lyapunov)
        total = self.options.koopman_weight * terms["koopman"]
        if self.options.lyapunov:
            total = total + self.options.lyapunov_weight * terms["lyapunov"]
        return total, terms

    def clip_gradients(self) -> None:
        """Clip only the regularizer's gradient (the official code's clip_grad_norm_ on the Koopman parameters)."""
        if self.regularizer is not None:
            nn.utils.clip_grad_norm_(self.regularizer.parameters(), self.options.clip)

    def diagnostics(self, method: PromptMethod) -> dict[str, float]:
        """rho(K), ||U|| and the lift gain, for every epoch's record (empty without Koopman)."""
        if self.regularizer is None:
            return {}
        return self.regularizer.diagnostics(method.trajectory()[self.options.chain_start:])


def band_window(options: PAEOptions, img_size: int) -> tuple[int, int]:
    """(window, stride) of the frequency bands: the options', or the paper's 16/8 scaled to ``img_size``."""
    if options.window:
        return options.window, options.stride or max(1, options.window // 2)
    return scaled_window(img_size)


@torch.no_grad()
def discover(options: PAEOptions, backbone: nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
             num_tokens: int, seed: int) -> dict:
    """MPA phase I: the record of the shortcut bands (JSON-ready; ``record_prompts`` turns it into prompts).

    It needs no prompt method, so the pipeline runs it once per task and seed for every method."""
    start = time.perf_counter()
    window, stride = band_window(options, images.shape[-1])
    found = find_shortcuts(backbone, images, labels, num_classes, num_tokens, window, stride, options.scorer,
                           seed, folds=options.folds, conjugate_pairs=options.conjugate_pairs)
    return {"img_size": images.shape[-1], "window": window, "stride": stride,
            "grid": (images.shape[-1] - window) // stride + 1, "scorer": options.scorer,
            "images": len(images), "folds": found.folds, "conjugate_pairs": found.conjugate_pairs,
            "selected": found.selected.tolist(), "band_losses": found.losses.tolist(),
            "seconds": time.perf_counter() - start}


@torch.no_grad()
def record_prompts(backbone: nn.Module, images: torch.Tensor, record: dict, depth: int) -> torch.Tensor:
    """MPA phase II from a discovery record: the selected bands of ``images``, pooled and propagated (depth, p, d)."""
    if images.shape[-1] != record["img_size"]:
        raise PaeError(f"the shortcut record is for {record['img_size']} px images, these are {images.shape[-1]} px.",
                       "rerun the shortcut search at the training resolution (pae.cli shortcuts).")
    masks = band_masks(record["img_size"], record["window"], record["stride"]).to(images.device)
    if record["conjugate_pairs"]:
        masks = conjugate_pair(masks)
    return band_prompts(backbone, images, masks[record["selected"]], depth)


def _validate(o: PAEOptions) -> None:
    """Every setting checked up front, whether or not its part is on: a typo never waits for a later run."""
    choices = {"scorer": SCORERS, "koopman_mode": MODES, "lyapunov_form": LYAPUNOV_FORMS,
               "lyapunov_target": LYAPUNOV_TARGETS}
    for name, allowed in choices.items():
        if getattr(o, name) not in allowed:
            raise PaeError(f"unknown pae_{name} '{getattr(o, name)}'.", f"use one of: {', '.join(allowed)}.")
    for name in ("window", "stride", "chain_start", "koopman_weight", "lyapunov_weight"):
        if getattr(o, name) < 0:
            raise PaeError(f"pae_{name} must be >= 0, got {getattr(o, name)}.", f"set pae_{name} >= 0.")
    for name in ("init_images", "folds", "koopman_dim", "clip"):
        if getattr(o, name) <= 0:
            raise PaeError(f"pae_{name} must be positive, got {getattr(o, name)}.", f"set pae_{name} > 0.")
