"""VPT (Jia et al., ECCV 2022): shallow (prompts once, before block 1) and deep (fresh prompts at every block)."""

from __future__ import annotations

import torch
from torch import nn

from .base import LayerPrompts, check_initial_prompts, xavier_bound


class VPT(LayerPrompts):
    """Learnable prompts (L, p, d), Xavier-uniform with the patch fan-in; L = depth for deep, 1 for shallow."""

    def __init__(
        self,
        depth: int,
        embed_dim: int,
        patch_size: int,
        num_tokens: int,
        deep: bool,
        dropout: float = 0.0,
        mask: str = "image",
    ) -> None:
        super().__init__(depth if deep else 1, num_tokens, dropout, mask)
        self.deep = deep
        self.embeddings = nn.Parameter(torch.empty(self.num_layers, num_tokens, embed_dim))
        bound = xavier_bound(patch_size, embed_dim)
        nn.init.uniform_(self.embeddings, -bound, bound)

    def prompt_set(self, layer: int) -> torch.Tensor:
        return self.embeddings[layer]

    def trajectory(self) -> torch.Tensor:
        return self.embeddings

    @torch.no_grad()
    def initialize(self, prompts: torch.Tensor) -> None:
        check_initial_prompts(prompts, self.embeddings.shape)
        self.embeddings.copy_(prompts[: self.num_layers])

    def per_layer_parameters(self) -> list[nn.Parameter]:
        return [self.embeddings]
