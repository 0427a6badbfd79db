"""BPT (Wang, Duan, Kong, ICCV 2025): prompts A B^T, bilinear (low rank) or through the ZCA whitening of the block's
q/k statistics (fixed or trainable), each deep or shallow: six registered methods from one builder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from ..config.options import option
from ..errors import PaeError
from .registry import MethodSpec, register_method
from .vpt import VPTOptions

VARIANTS = {  # variant -> (its name, what its prompts are), for the methods' summaries
    "bilinear": ("bilinear", "prompts A_l B_l^T of rank bpt_rank (B Xavier or whitening columns)"),
    "fwhiten": ("fixed whitening", "prompts P_l W_l^T, W_l the ZCA of the block's q/k statistics"),
    "twhiten": ("trainable whitening", "P_l W_l^T with W_l learnable (d^2 per layer)"),
}
B_INITS = ("official", "xavier", "whitening")
WHITENINGS = ("image_mean", "per_token")
COLUMN_DRAWS = ("per_row", "shared")


@dataclass
class BPTOptions(VPTOptions):
    prompt_dropout: float = option(0.0, "dropout on the prompt tokens (BPT's forward has none)")
    bpt_rank: int = option(32, "BPT-bilinear: rank r of A B^T (the paper: 75 at d=768)")
    bpt_init: str = option(
        "official",
        "BPT-bilinear: init of B, xavier | whitening (r random columns of W) | "
        "official (whitening for deep BPT, as its code always does; xavier for shallow)",
        choices=B_INITS,
    )
    bpt_whitening: str = option(
        "image_mean",
        "BPT: how W is estimated. image_mean (the official code): X~ = W_q^rows W_k^rows^T X^T "
        "averaged over images, Sigma = X~ X~^T / d, no ridge; per_token (the paper's formula): "
        "X~ = W_q W_k^T X^T with every token a column, Sigma = X~ X~^T / N, ridge whiten_eps",
        choices=WHITENINGS,
        ours="per_token",
    )
    bpt_columns: str = option(
        "per_row",
        "BPT-bilinear, whitening init: per_row (the official gather: each row of "
        "B keeps its own r random columns of W) | shared (the same r whole columns)",
        choices=COLUMN_DRAWS,
        ours="shared",
    )
    whiten_eps: float = option(1e-4, "BPT, per_token whitening: ridge on the eigenvalues, relative to the largest")
    fit_images: int = option(100, "BPT: training images the whitening is computed from")

    def resolved(self, spec: MethodSpec, pae_enabled: bool, family: str = "vit") -> BPTOptions:
        options = super().resolved(spec, pae_enabled, family)
        if options.bpt_init != "official":
            return options
        return replace(options, bpt_init="whitening" if spec.deep else "xavier")

    def check(self) -> None:
        if self.bpt_init not in B_INITS:
            raise PaeError(f"unknown BPT B init '{self.bpt_init}'.", f"use one of: {', '.join(B_INITS)}.")
        if self.bpt_rank < 1:
            raise PaeError(
                f"BPT's bilinear rank must be in [1, d], got {self.bpt_rank}.", "set bpt_rank in that range."
            )
        if self.fit_images < 1:
            raise PaeError(f"fit_images must be >= 1, got {self.fit_images}.", "set fit_images to e.g. 100.")


def _builder(variant: str, deep: bool) -> Callable[[Any, BPTOptions], Any]:
    def build(backbone: Any, o: BPTOptions) -> Any:
        from ..prompts.base import dims
        from ..prompts.bpt import BPT

        depth, dim, _ = dims(backbone)
        return BPT(
            depth,
            dim,
            o.num_tokens,
            deep=deep,
            variant=variant,
            rank=o.bpt_rank,
            b_init=o.bpt_init,
            whitening=o.bpt_whitening,
            columns=o.bpt_columns,
            whiten_eps=o.whiten_eps,
            dropout=o.prompt_dropout,
            mask=o.prompt_dropout_mask,
            fit_images=o.fit_images,
        )

    return build


def _register() -> None:
    for i, (variant, (name, prompts)) in enumerate(VARIANTS.items()):
        register_method(
            f"bpt_{variant}",
            summary=f"BPT-deep, {name}: {prompts}",
            options=BPTOptions,
            order=6 + 2 * i,
            head_init="trunc_normal",
        )(_builder(variant, deep=True))
        register_method(
            f"bpt_{variant}_shallow",
            summary=f"BPT-shallow, {name}",
            options=BPTOptions,
            prompts="shallow",
            order=7 + 2 * i,
            head_init="trunc_normal",
        )(_builder(variant, deep=False))


_register()
