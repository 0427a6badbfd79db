"""E2VPT (Han et al., ICCV 2023): VPT-deep visual prompts plus key/value prompts in every block.

Per layer, learnable K and V prompts (heads, n_kv, head_dim) are appended to each head's keys and
values; queries are unchanged, so the sequence does not grow. ``share_kv`` uses one tensor for both
(SHARE_PARAM_KV in the official commands). Pruning and rewinding are not implemented.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import xavier_bound
from .vpt import VPT


class E2VPT(VPT):
    def __init__(self, depth: int, embed_dim: int, patch_size: int, num_heads: int, num_tokens: int,
                 kv_tokens: int, share_kv: bool = True, dropout: float = 0.0) -> None:
        super().__init__(depth, embed_dim, patch_size, num_tokens, deep=True, dropout=dropout)
        bound = xavier_bound(patch_size, embed_dim)
        shape = (depth, num_heads, kv_tokens, embed_dim // num_heads)
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
