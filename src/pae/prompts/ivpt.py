"""iVPT (Zhou, Chen, Huang, 2024): VPT-deep whose prompts share information across layers.

The paper's equations were not available to us; this is our reconstruction (methods.md §5), each part
switchable:

- CDC (cross-layer dynamic connection): block l+1's input prompts mix block l's outputs at the
  prompt positions O_l (which VPT-deep discards) with the new prompts P_{l+1}:
  P^_{l+1} = g * O_l + (1 - g) * P_{l+1}, one gate per prompt token.
- DA (dynamic aggregation): the gate depends on the tokens it mixes,
  g = sigmoid(b + <LN(O_l), u> + <LN(P_{l+1}), v>); without DA it is the learnable sigmoid(b).
- AR (attentive reinforcement): before each block, the k image tokens the [CLS] query attends to most
  (softmax over image keys per head, heads averaged) get lambda_l * mean(P^_l) added; lambda_l starts at 0.

Closed gates (b = -inf) and lambda = 0 give VPT-deep exactly; open gates (b = +inf) carry the first
prompts on as VPT-shallow does. ``trajectory()`` is the learnable P_l, as for VPT-deep.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import fused_qkv
from .vpt import VPT


class IVPT(VPT):
    """VPT-deep + CDC gates + DA + AR (module docstring). The gate and AR parameters get the run's weight
    decay like every other trainable tensor, which pulls the gate logits toward 0 (g = 0.5) over training."""

    def __init__(
        self,
        *vpt_args: Any,
        cdc: bool = True,
        dynamic: bool = True,
        ar: bool = True,
        ar_top_k: int = 8,
        gate_init: float = -2.0,
        **vpt_kwargs: Any,
    ) -> None:
        """``vpt_args``, ``vpt_kwargs``: VPT's arguments, ``deep`` aside (iVPT is deep)."""
        super().__init__(*vpt_args, deep=True, **vpt_kwargs)
        self.cdc, self.dynamic, self.ar, self.ar_top_k = cdc, cdc and dynamic, ar, ar_top_k
        depth, num_tokens, embed_dim = self.embeddings.shape
        if self.cdc:  # gate logits start at gate_init: sigmoid(-2) = 0.12, mostly VPT-deep at the start
            self.gate_bias = nn.Parameter(torch.full((depth - 1, num_tokens), gate_init))
        if self.dynamic:
            self.gate_from_previous = nn.Parameter(torch.zeros(depth - 1, embed_dim))
            self.gate_from_new = nn.Parameter(torch.zeros(depth - 1, embed_dim))
        if self.ar:
            self.ar_scale = nn.Parameter(torch.zeros(depth))

    def gate(self, transition: int, previous: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """Mixing weight (B, p, 1) of the previous layer's outputs, for the step into block ``transition + 1``."""
        logit = self.gate_bias[transition].unsqueeze(0)
        if self.dynamic:
            d = previous.shape[-1]
            logit = (
                logit
                + F.layer_norm(previous.float(), (d,)) @ self.gate_from_previous[transition]
                + F.layer_norm(new.float(), (d,)) @ self.gate_from_new[transition]
            )
        return torch.sigmoid(logit).unsqueeze(-1)

    def prompts(self, layer: int, batch: int, previous: torch.Tensor | None = None) -> torch.Tensor | None:
        new = super().prompts(layer, batch, previous)
        if not self.cdc or layer == 0 or previous is None or new is None:
            return new
        g = self.gate(layer - 1, previous, new)
        return g * previous + (1.0 - g) * new

    def adjust_tokens(
        self, layer: int, block: nn.Module, x: torch.Tensor, n_prefix: int, n_prompt: int
    ) -> torch.Tensor:
        if not self.ar or n_prompt == 0:
            return x
        start = n_prefix + n_prompt
        k = min(self.ar_top_k, x.shape[1] - start)
        with torch.no_grad():
            salient = cls_attention(block, x, start).topk(k, dim=1).indices  # (B, k) image-token indices
        boost = self.ar_scale[layer] * x[:, n_prefix:start].mean(dim=1)  # (B, d)
        image = x[:, start:].scatter_add(
            1, salient.unsqueeze(-1).expand(-1, -1, x.shape[2]), boost.unsqueeze(1).expand(-1, k, -1).to(x.dtype)
        )
        return torch.cat([x[:, :start], image], dim=1)


def cls_attention(block: nn.Module, x: torch.Tensor, first_image: int) -> torch.Tensor:
    """The [CLS] query's attention (B, N) over the image tokens x[:, first_image:], softmax per head, heads averaged.

    Only the [CLS] query and the image keys are projected (a third of the qkv cost, not all of it).
    """
    attn, h = block.attn, block.norm1(x)
    heads, hd = attn.num_heads, attn.head_dim
    qkv = fused_qkv(attn)
    w, bias = qkv.weight, qkv.bias
    dim = heads * hd
    q = F.linear(h[:, :1], w[:dim], None if bias is None else bias[:dim])
    k = F.linear(h[:, first_image:], w[dim : 2 * dim], None if bias is None else bias[dim : 2 * dim])
    q = attn.q_norm(q.unflatten(-1, (heads, hd)).transpose(1, 2))  # (B, heads, 1, hd)
    k = attn.k_norm(k.unflatten(-1, (heads, hd)).transpose(1, 2))  # (B, heads, N, hd)
    logits = (q @ k.transpose(-1, -2)).squeeze(2) * attn.scale
    return logits.float().softmax(dim=-1).mean(dim=1)
