"""iVPT (Zhou, Chen, Huang, 2024), our reconstruction: VPT-deep + gated cross-layer prompt connection + attentive
reinforcement (the equations and their sources are in ``pae.prompts.ivpt``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config.options import option
from ..errors import PaeError
from .registry import register_method
from .vpt import VPTOptions


@dataclass
class IVPTOptions(VPTOptions):
    ivpt_cdc: bool = option(True, "iVPT: cross-layer dynamic connection")
    ivpt_dynamic: bool = option(True, "iVPT: input-dependent gates (dynamic aggregation)")
    ivpt_ar: bool = option(True, "iVPT: attentive reinforcement")
    ivpt_top_k: int = option(8, "iVPT: image tokens reinforced per block")

    def check(self) -> None:
        if self.ivpt_top_k < 1:
            raise PaeError(
                f"iVPT's ivpt_top_k must be >= 1, got {self.ivpt_top_k}.", "set ivpt_top_k >= 1 (or ivpt_ar false)."
            )


@register_method(
    "ivpt",
    summary="iVPT (our reconstruction): VPT-deep + gated cross-layer prompt connection + attentive reinforcement",
    options=IVPTOptions,
    order=12,
)
def ivpt(backbone: Any, o: IVPTOptions) -> Any:
    from ..prompts.base import dims
    from ..prompts.ivpt import IVPT

    depth, dim, patch = dims(backbone)
    return IVPT(
        depth,
        dim,
        patch,
        o.num_tokens,
        dropout=o.prompt_dropout,
        cdc=o.ivpt_cdc,
        dynamic=o.ivpt_dynamic,
        ar=o.ivpt_ar,
        ar_top_k=o.ivpt_top_k,
        mask=o.prompt_dropout_mask,
    )
