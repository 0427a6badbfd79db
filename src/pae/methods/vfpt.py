"""VFPT (Zeng et al., NeurIPS 2024): VPT-deep with a fraction of each layer's prompts made Fourier prompts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config.options import option
from ..errors import PaeError
from .registry import register_method
from .vpt import VPTOptions


@dataclass
class VFPTOptions(VPTOptions):
    fourier_fraction: float = option(0.5, "VFPT: share of each layer's prompts made Fourier prompts (alpha)")

    def check(self) -> None:
        if not 0.0 <= self.fourier_fraction <= 1.0:
            raise PaeError(
                f"VFPT's fourier_fraction must be in [0, 1], got {self.fourier_fraction}.", "set it in [0, 1]."
            )


@register_method(
    "vfpt",
    summary="VFPT: VPT-deep with a fraction of each layer's prompts passed through a 2-D FFT (real part)",
    options=VFPTOptions,
    order=5,
    backbones=("vit", "swin"),
)
def vfpt(backbone: Any, o: VFPTOptions) -> Any:
    from ..backbones import backbone_family
    from ..prompts.base import dims
    from ..prompts.vfpt import VFPT, SwinVFPT

    if backbone_family(backbone) == "swin":
        return SwinVFPT.for_backbone(
            backbone, o.num_tokens, o.fourier_fraction, o.prompt_dropout, o.prompt_dropout_mask
        )

    depth, dim, patch = dims(backbone)
    return VFPT(
        depth,
        dim,
        patch,
        o.num_tokens,
        fourier_fraction=o.fourier_fraction,
        dropout=o.prompt_dropout,
        mask=o.prompt_dropout_mask,
    )
