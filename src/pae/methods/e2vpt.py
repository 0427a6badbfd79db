"""E2VPT (Han et al., ICCV 2023): VPT-deep prompts plus key/value prompts in every attention (no pruning)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config.options import option
from ..errors import PaeError
from .registry import register_method
from .vpt import VPTOptions


@dataclass
class E2VPTOptions(VPTOptions):
    kv_tokens: int = option(5, "E2VPT: key/value prompts per layer")
    kv_init: str = option(
        "kaiming",
        "E2VPT: key/value prompt init, kaiming (the official runs' ORIGIN_INIT=2: "
        "U(+-sqrt(6 / (n * head_dim)))) | xavier (VPT's visual-prompt bound)",
        choices=("kaiming", "xavier"),
    )

    def check(self) -> None:
        if self.kv_tokens < 0:
            raise PaeError(
                f"e2vpt needs a non-negative number of key/value tokens, got {self.kv_tokens}.", "set kv_tokens >= 0."
            )


@register_method(
    "e2vpt",
    summary="E2VPT: VPT-deep prompts plus key/value prompts appended in every attention (no pruning)",
    options=E2VPTOptions,
    least_tokens=0,
    order=4,
)
def e2vpt(backbone: Any, o: E2VPTOptions) -> Any:
    from ..prompts.base import dims
    from ..prompts.e2vpt import E2VPT

    depth, dim, patch = dims(backbone)
    heads = backbone.blocks[0].attn.num_heads
    return E2VPT(
        depth,
        dim,
        patch,
        heads,
        o.num_tokens,
        o.kv_tokens,
        dropout=o.prompt_dropout,
        mask=o.prompt_dropout_mask,
        kv_init=o.kv_init,
    )
