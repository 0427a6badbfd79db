"""E2VPT (Han et al., ICCV 2023): VPT-deep visual prompts plus key/value prompts in every block.

Per layer, learnable K and V prompts (heads, n_kv, head_dim) are appended to each head's keys and
values; queries are unchanged, so the sequence does not grow. ``share_kv`` uses one tensor for both
(SHARE_PARAM_KV in the official commands). They start as the official runs do (``kv_bound``). Pruning and rewinding
are not implemented.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .base import xavier_bound
from .vpt import VPT


class E2VPT(VPT):
    def __init__(
        self,
        depth: int,
        embed_dim: int,
        patch_size: int,
        num_heads: int,
        num_tokens: int,
        kv_tokens: int,
        share_kv: bool = True,
        dropout: float = 0.0,
        mask: str = "image",
        kv_init: str = "kaiming",
    ) -> None:
        super().__init__(depth, embed_dim, patch_size, num_tokens, deep=True, dropout=dropout, mask=mask)
        head_dim = embed_dim // num_heads
        bound = kv_bound(kv_init, kv_tokens, head_dim, patch_size, embed_dim)
        shape = (depth, num_heads, kv_tokens, head_dim)
        self.key_prompts = nn.Parameter(torch.empty(shape).uniform_(-bound, bound))
        self.value_prompts = None if share_kv else nn.Parameter(torch.empty(shape).uniform_(-bound, bound))

    def kv_prompts(self, layer: int, batch: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.key_prompts.shape[2] == 0:
            return None
        k = self.key_prompts[layer].unsqueeze(0).expand(batch, -1, -1, -1)
        v = k if self.value_prompts is None else self.value_prompts[layer].unsqueeze(0).expand(batch, -1, -1, -1)
        return k, v

    def per_layer_parameters(self) -> list[nn.Parameter]:
        return [p for p in (self.embeddings, self.key_prompts, self.value_prompts) if p is not None]


def kv_bound(kv_init: str, kv_tokens: int, head_dim: int, patch_size: int, embed_dim: int) -> float:
    """The uniform bound of the key/value prompts. 'kaiming' is the official runs' ORIGIN_INIT=2: torch's
    kaiming_uniform_ (fan_in, gain sqrt(2)) on each (heads, n, head_dim) prompt tensor, whose fan-in is n * head_dim:
    sqrt(6 / (n * head_dim)). 'xavier' is VPT's visual-prompt bound, sqrt(6 / (3 * patch^2 + d))."""
    if kv_init == "xavier":
        return xavier_bound(patch_size, embed_dim)
    return math.sqrt(6.0 / max(1, kv_tokens * head_dim))
