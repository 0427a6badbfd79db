"""VFPT (Zeng et al., NeurIPS 2024): VPT-deep whose first floor(alpha * p) prompts per layer are Fourier prompts.

A Fourier prompt is Re(FFT_seq(FFT_hidden(P))), the real part of a 2-D FFT over the hidden and sequence
dimensions of those prompts, taken after dropout as in the official code, and placed before the
ordinary prompts ("prepend"). The learnable parameters are VPT-deep's, so ``trajectory()`` is the
pre-FFT prompt set: the chain PAE regularizes. On Swin the same transform applies to every block's prompts at its
stage's width (``SwinVFPT``), as VFPT's Swin code does.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .swin import SwinPrompts
from .vpt import VPT


def fourier_prompts(prompts: torch.Tensor, m: int) -> torch.Tensor:
    """(B, p, d) -> the first ``m`` prompts as Re(FFT_seq(FFT_hidden(.))), then the others unchanged."""
    if m == 0:
        return prompts
    fourier = torch.fft.fft(torch.fft.fft(prompts[:, :m].float(), dim=-1), dim=-2).real
    return torch.cat([fourier.to(prompts.dtype), prompts[:, m:]], dim=1)


class FourierLayers:
    """VFPT on top of any deep LayerPrompts (ViT's VPT, Swin's per-stage prompts): its prompts, Fourier-prompted."""

    num_fourier: int = 0

    def prompts(self, layer: int, batch: int, previous: torch.Tensor | None = None) -> torch.Tensor | None:
        p = super().prompts(layer, batch, previous)
        return None if p is None else fourier_prompts(p, self.num_fourier)


class VFPT(FourierLayers, VPT):
    """VPT-deep (``vpt_args``: VPT's arguments, ``deep`` aside) whose first floor(alpha * p) prompts per layer are
    Fourier prompts."""

    def __init__(self, *vpt_args: Any, fourier_fraction: float, **vpt_kwargs: Any) -> None:
        super().__init__(*vpt_args, deep=True, **vpt_kwargs)
        self.num_fourier = math.floor(fourier_fraction * self.num_tokens)


class SwinVFPT(FourierLayers, SwinPrompts):
    """VFPT on Swin (runtsang/VFPT src/models/vit_prompt/swin_transformer_fourier.py): the first floor(alpha * p)
    prompts of every block of every stage are Fourier prompts, at that stage's width."""

    @classmethod
    def for_backbone(
        cls, backbone: nn.Module, num_tokens: int, fourier_fraction: float, dropout: float, mask: str
    ) -> SwinVFPT:
        method = super().for_backbone(backbone, num_tokens, True, dropout, mask)
        method.num_fourier = math.floor(fourier_fraction * num_tokens)
        return method
