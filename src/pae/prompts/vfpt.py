"""VFPT (Zeng et al., NeurIPS 2024): VPT-deep whose first floor(alpha * p) prompts per layer are Fourier prompts.

A Fourier prompt is Re(FFT_seq(FFT_hidden(P))), the real part of a 2-D FFT over the hidden and sequence
dimensions of those prompts, taken after dropout as in the official code, and placed before the
ordinary prompts ("prepend"). The learnable parameters are VPT-deep's, so ``trajectory()`` is the
pre-FFT prompt set: the chain PAE regularizes.
"""

from __future__ import annotations

import math

import torch

from .vpt import VPT


class VFPT(VPT):
    def __init__(
        self,
        depth: int,
        embed_dim: int,
        patch_size: int,
        num_tokens: int,
        fourier_fraction: float,
        dropout: float = 0.0,
        mask: str = "image",
    ) -> None:
        super().__init__(depth, embed_dim, patch_size, num_tokens, deep=True, dropout=dropout, mask=mask)
        self.num_fourier = math.floor(fourier_fraction * num_tokens)

    def prompts(self, layer: int, batch: int, previous: torch.Tensor | None = None) -> torch.Tensor | None:
        p = super().prompts(layer, batch, previous)
        if p is None or self.num_fourier == 0:
            return p
        m = self.num_fourier
        fourier = torch.fft.fft(torch.fft.fft(p[:, :m].float(), dim=-1), dim=-2).real
        return torch.cat([fourier.to(p.dtype), p[:, m:]], dim=1)
