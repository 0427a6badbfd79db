"""A timm ViT block with extra keys and values per head (E2VPT's key/value prompts), queries unchanged.

It runs the block's own modules (norms, qkv, proj, layer scale, MLP) in timm's order, so with no extra
tokens it is timm's ``Block.forward``; we do not fork or patch timm (E2VPT's official code patches it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def attention_with_kv(attn: nn.Module, x: torch.Tensor, k_extra: torch.Tensor, v_extra: torch.Tensor) -> torch.Tensor:
    """timm ``Attention.forward`` with (B, heads, n, head_dim) keys/values appended after the projection."""
    b, n, _ = x.shape
    gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
    q, k, v = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    k = torch.cat([k, k_extra.to(k.dtype)], dim=2)
    v = torch.cat([v, v_extra.to(v.dtype)], dim=2)
    out = F.scaled_dot_product_attention(
        q, k, v, dropout_p=attn.attn_drop.p if attn.training else 0.0, scale=attn.scale
    )
    out = attn.norm(out.transpose(1, 2).reshape(b, n, attn.attn_dim))
    if gate is not None:
        out = out * gate
    return attn.proj_drop(attn.proj(out))


def block_with_kv(block: nn.Module, x: torch.Tensor, k_extra: torch.Tensor, v_extra: torch.Tensor) -> torch.Tensor:
    """timm ``Block.forward`` whose attention also attends to the extra keys/values."""
    x = x + block.drop_path1(block.ls1(attention_with_kv(block.attn, block.norm1(x), k_extra, v_extra)))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
