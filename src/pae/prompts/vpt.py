"""VPT (Jia et al., ECCV 2022): shallow (prompts once, before block 1) and deep (fresh prompts at every block)."""
from __future__ import annotations

import torch
from torch import nn

from .base import PromptMethod, xavier_bound


class VPT(PromptMethod):
    """Learnable prompts (L, p, d); L = depth for deep, 1 for shallow. Dropout applies to each prompt set."""

    def __init__(self, depth: int, embed_dim: int, patch_size: int, num_tokens: int, deep: bool, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.deep = deep
        self.embeddings = nn.Parameter(torch.empty(depth if deep else 1, num_tokens, embed_dim))
        bound = xavier_bound(patch_size, embed_dim)
        nn.init.uniform_(self.embeddings, -bound, bound)
        self.dropout = nn.Dropout(dropout)

    def prompts(self, layer: int, batch: int) -> torch.Tensor | None:
        if layer >= self.embeddings.shape[0] or self.num_tokens == 0:
            return None
        # Expand first, then drop: every sample gets its own dropout mask, as in VPT.
        return self.dropout(self.embeddings[layer].unsqueeze(0).expand(batch, -1, -1))

    def trajectory(self) -> torch.Tensor:
        return self.embeddings

    @torch.no_grad()
    def initialize(self, prompts: torch.Tensor) -> None:
        if prompts.shape[1:] != self.embeddings.shape[1:] or prompts.shape[0] < self.embeddings.shape[0]:
            raise ValueError(f"initial prompts {tuple(prompts.shape)} do not fit {tuple(self.embeddings.shape)}")
        self.embeddings.copy_(prompts[: self.embeddings.shape[0]])

    def layer_grad_norms(self) -> torch.Tensor:
        g = self.embeddings.grad
        if g is None:
            return torch.zeros(self.embeddings.shape[0], device=self.embeddings.device)
        return g.flatten(1).norm(dim=1)
