"""PAE as a plug-in: it sees a prompt method only through ``trajectory()`` and ``initialize()``, and the training loop
sees PAE only through named loss terms, parameter groups, a hook before each optimizer step and its diagnostics.

Three parts, each switchable for the ablation (settings: ``pae.config.pae.PAEOptions``):

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

import torch
from torch import nn

from ..config.pae import PAEOptions
from ..errors import PaeError
from ..prompts import PromptMethod
from ..prompts.base import Trajectory, as_stages
from .frequency import band_masks, conjugate_pair, scaled_window
from .koopman import KoopmanLyapunov, skip_layers
from .task_init import band_prompts, find_shortcuts, mpa_features


class PAE(nn.Module):
    """The PAE plug-in for one prompt method; holds the Koopman-Lyapunov regularizer when it is on."""

    def __init__(self, options: PAEOptions, method: PromptMethod) -> None:
        super().__init__()
        self.options = o = options
        o.validate()
        if o.enabled and method.num_tokens == 0:
            raise PaeError(
                f"PAE needs a prompt method, but '{type(method).__name__}' has no prompts.",
                "pick a prompt method (e.g. vpt_deep) or turn PAE off for linear/full.",
            )
        self.layers = sum(s.shape[0] for s in as_stages(method.trajectory())) if o.enabled else 0
        self.regularizer = None
        if o.koopman:
            transitions = self.layers - o.chain_start - 1
            if transitions < 1:
                raise PaeError(
                    f"the Koopman chain needs at least 2 prompt layers, but this method has {self.layers} "
                    f"(chain_start {o.chain_start}).",
                    "use a deep method, or turn pae_koopman off (shallow methods: init only).",
                )
            self.regularizer = KoopmanLyapunov(
                [s.shape[-1] for s in skip_layers(method.trajectory(), o.chain_start)],
                o.koopman_dim,
                transitions,
                o.koopman_mode,
                o.lyapunov_form,
                o.lyapunov_target,
                o.norm_preserving,
            )

    @torch.no_grad()
    def initialize(self, method: PromptMethod, prompts: Trajectory) -> None:
        """Write task-aware prompts through ``method.initialize``: per stage, at least the method's prompt layers
        with its (p, d); a ViT's (L, p, d) is one stage, a shallow method takes the first layer."""
        want, got = as_stages(method.trajectory()), as_stages(prompts)
        if len(got) < len(want) or any(
            g.ndim != 3 or g.shape[0] < w.shape[0] or g.shape[1:] != w.shape[1:] for w, g in zip(want, got)
        ):
            raise PaeError(
                f"the initial prompts have shape {_shapes(got)}, but this method needs {_shapes(want)} (at least "
                "as many layers per stage, the same tokens and width).",
                "rebuild them with the same num_tokens and backbone as the training run (pae.cli init-prompts).",
            )
        fitted = [g[: w.shape[0]].to(w.device) for w, g in zip(want, got)]
        method.initialize(fitted[0] if isinstance(method.trajectory(), torch.Tensor) else fitted)

    @property
    def terms(self) -> tuple[str, ...]:
        """The names of the loss terms this PAE adds (the loop records each one under its name)."""
        if self.regularizer is None:
            return ()
        return ("koopman", "lyapunov") if self.options.lyapunov else ("koopman",)

    def loss_terms(self, method: PromptMethod) -> dict[str, tuple[float, torch.Tensor]]:
        """This step's terms, each as (weight, unweighted value): the loss adds weight * value."""
        if self.regularizer is None:
            return {}
        values = self.regularizer(self.chain(method), lyapunov=self.options.lyapunov)
        weights = {"koopman": self.options.koopman_weight, "lyapunov": self.options.lyapunov_weight}
        return {name: (weights[name], values[name]) for name in self.terms}

    def parameter_groups(self, weight_decay: float, optimizer: str) -> list[dict]:
        """The optimizer groups of U, K and L: they decay under SGD and not under AdamW, as in the official code."""
        if self.regularizer is None:
            return []
        return [
            {"params": list(self.regularizer.parameters()), "weight_decay": weight_decay if optimizer == "sgd" else 0.0}
        ]

    def before_step(self) -> None:
        """Clip only the regularizer's gradient (the official code's clip_grad_norm_ on the Koopman parameters)."""
        if self.regularizer is not None:
            nn.utils.clip_grad_norm_(self.regularizer.parameters(), self.options.clip)

    def diagnostics(self, method: PromptMethod) -> dict[str, float]:
        """rho(K), ||U|| and the lift gain, for every epoch's record (empty without Koopman)."""
        if self.regularizer is None:
            return {}
        return self.regularizer.diagnostics(self.chain(method))

    def chain(self, method: PromptMethod) -> list[torch.Tensor]:
        """The prompt layers the Koopman chain runs over: all from ``chain_start`` on, every stage's."""
        return skip_layers(method.trajectory(), self.options.chain_start)


def _shapes(stages: list[torch.Tensor]) -> str:
    return " + ".join(str(tuple(s.shape)) for s in stages)


def band_window(options: PAEOptions, img_size: int) -> tuple[int, int]:
    """(window, stride) of the frequency bands: the options', or the paper's 16/8 scaled to ``img_size``."""
    if options.window:
        return options.window, options.stride or max(1, options.window // 2)
    return scaled_window(img_size)


@torch.no_grad()
def discover(
    options: PAEOptions,
    backbone: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    num_tokens: int,
    seed: int,
    readout: str | None = None,
) -> dict:
    """MPA phase I: the record of the shortcut bands (JSON-ready; ``record_prompts`` turns it into prompts).

    It needs no prompt method, so the pipeline runs it once per task and seed for every method. Bands are scored by
    what the run's head reads (``readout``, as ``TrainConfig.readout`` resolves it)."""
    start = time.perf_counter()
    window, stride = band_window(options, images.shape[-1])
    features = mpa_features(backbone, num_tokens, options.zero_prompt_scoring, readout)
    search = {
        "scorer": options.scorer,
        "seed": seed,
        "folds": options.folds,
        "conjugate_pairs": options.conjugate_pairs,
    }
    found = find_shortcuts(
        backbone, images, labels, num_classes, num_tokens, window, stride, features_fn=features, **search
    )
    return {
        "img_size": images.shape[-1],
        "window": window,
        "stride": stride,
        "grid": (images.shape[-1] - window) // stride + 1,
        "scorer": options.scorer,
        "zero_prompt_scoring": options.zero_prompt_scoring,
        "images": len(images),
        "folds": found.folds,
        "conjugate_pairs": found.conjugate_pairs,
        "selected": found.selected.tolist(),
        "band_losses": found.losses.tolist(),
        "seconds": time.perf_counter() - start,
    }


@torch.no_grad()
def record_prompts(backbone: nn.Module, images: torch.Tensor, record: dict, depth: int | None = None) -> Trajectory:
    """MPA phase II from a discovery record: the selected bands of ``images``, pooled and propagated to ``depth``
    blocks (None: every block; per stage on a Swin)."""
    if images.shape[-1] != record["img_size"]:
        raise PaeError(
            f"the shortcut record is for {record['img_size']} px images, these are {images.shape[-1]} px.",
            "rerun the shortcut search at the training resolution (pae.cli shortcuts).",
        )
    masks = band_masks(record["img_size"], record["window"], record["stride"]).to(images.device)
    if record["conjugate_pairs"]:
        masks = conjugate_pair(masks)
    return band_prompts(backbone, images, masks[record["selected"]], depth)
