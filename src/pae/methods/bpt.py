"""BPT (Wang, Duan, Kong, ICCV 2025): prompts A B^T, bilinear (low rank) or through the ZCA whitening of the block's
q/k statistics (fixed or trainable), each deep or shallow: six registered methods from one builder."""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable
from typing import Any

from ..config.options import option
from ..errors import PaeError
from .registry import register_method
from .vpt import VPTOptions

VARIANTS = {  # variant -> (its name, what its prompts are), for the methods' summaries
    "bilinear": ("bilinear", "prompts A_l B_l^T of rank bpt_rank (B Xavier or whitening columns)"),
    "fwhiten": ("fixed whitening", "prompts P_l W_l^T, W_l the ZCA of the block's q/k statistics"),
    "twhiten": ("trainable whitening", "P_l W_l^T with W_l learnable (d^2 per layer)"),
}
B_INITS = ("xavier", "whitening")


@dataclass
class BPTOptions(VPTOptions):
    bpt_rank: int = option(32, "BPT-bilinear: rank r of A B^T (the paper: 75 at d=768)")
    bpt_init: str = option("xavier", "BPT-bilinear: init of B (whitening: random columns of W)", choices=B_INITS)
    whiten_eps: float = option(1e-4, "BPT: ridge on the whitening eigenvalues, relative to the largest")
    fit_images: int = option(100, "BPT: training images the whitening is computed from")

    def check(self) -> None:
        if self.bpt_init not in B_INITS:
            raise PaeError(f"unknown BPT B init '{self.bpt_init}'.", f"use one of: {', '.join(B_INITS)}.")
        if self.bpt_rank < 1:
            raise PaeError(f"BPT's bilinear rank must be in [1, d], got {self.bpt_rank}.", "set bpt_rank in that range.")
        if self.fit_images < 1:
            raise PaeError(f"fit_images must be >= 1, got {self.fit_images}.", "set fit_images to e.g. 100.")


def _builder(variant: str, deep: bool) -> Callable[[Any, BPTOptions], Any]:
    def build(backbone: Any, o: BPTOptions) -> Any:
        from ..prompts.base import dims
        from ..prompts.bpt import BPT

        depth, dim, _ = dims(backbone)
        return BPT(depth, dim, o.num_tokens, deep=deep, variant=variant, rank=o.bpt_rank, b_init=o.bpt_init,
                   whiten_eps=o.whiten_eps, dropout=o.prompt_dropout, fit_images=o.fit_images)

    return build


def _register() -> None:
    for i, (variant, (name, prompts)) in enumerate(VARIANTS.items()):
        register_method(f"bpt_{variant}", summary=f"BPT-deep, {name}: {prompts}", options=BPTOptions,
                        order=6 + 2 * i)(_builder(variant, deep=True))
        register_method(f"bpt_{variant}_shallow", summary=f"BPT-shallow, {name}", options=BPTOptions,
                        prompts="shallow", order=7 + 2 * i)(_builder(variant, deep=False))


_register()
