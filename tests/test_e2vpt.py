"""E2VPT's key/value prompts against timm's block (no prompts) and a hand-written attention (with prompts)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pae.prompts import build_model
from pae.prompts.kv_attention import block_with_kv

from .conftest import random_vit


@pytest.fixture(scope="module")
def backbone():
    return random_vit("vit_small_patch14_dinov2", 28)


def test_zero_length_kv_prompts_equal_timm_block(backbone):
    blk = backbone.blocks[4]
    x = torch.randn(2, 9, 384)
    empty = torch.zeros(2, 6, 0, 64)
    with torch.no_grad():
        torch.testing.assert_close(block_with_kv(blk, x, empty, empty), blk(x), rtol=0, atol=1e-6)


def test_e2vpt_without_prompts_is_the_backbone(backbone):
    model = build_model("e2vpt", backbone, 5, num_tokens=0, kv_tokens=0).eval()
    img = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(img)[:, 0], backbone(img), rtol=0, atol=1e-6)


def test_kv_attention_matches_hand_written_softmax(backbone):
    """softmax(q [K; P_K]^T / sqrt(d_h)) [V; P_V], heads written out, then timm's residual branches."""
    blk = backbone.blocks[2]
    x, pk, pv = torch.randn(2, 7, 384), torch.randn(2, 6, 3, 64), torch.randn(2, 6, 3, 64)
    h = F.layer_norm(x, (384,), blk.norm1.weight, blk.norm1.bias, blk.norm1.eps)
    q, k, v = (h @ blk.attn.qkv.weight.T + blk.attn.qkv.bias).reshape(2, 7, 3, 6, 64).permute(2, 0, 3, 1, 4)
    k, v = torch.cat([k, pk], 2), torch.cat([v, pv], 2)
    att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(64), dim=-1)
    assert att.shape == (2, 6, 7, 10)  # 7 queries attend to 7 + 3 keys
    o = (att @ v).transpose(1, 2).reshape(2, 7, 384) @ blk.attn.proj.weight.T + blk.attn.proj.bias
    y = x + blk.ls1.gamma * o
    y = y + blk.ls2.gamma * blk.mlp(F.layer_norm(y, (384,), blk.norm2.weight, blk.norm2.bias, blk.norm2.eps))
    with torch.no_grad():
        torch.testing.assert_close(block_with_kv(blk, x, pk, pv), y.detach(), rtol=1e-5, atol=1e-5)


def test_kv_prompts_change_the_output(backbone):
    model = build_model("e2vpt", backbone, 5, num_tokens=2, kv_tokens=3).eval()
    img = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        before = model(img)
        model.method.key_prompts[6].normal_()
        assert (model(img) - before).abs().max() > 1e-3


@pytest.mark.parametrize("p,n_kv", [(4, 5), (0, 5), (4, 0)])
def test_e2vpt_parameter_count_closed_form(backbone, p, n_kv):
    model = build_model("e2vpt", backbone, 5, num_tokens=p, kv_tokens=n_kv)
    n = sum(t.numel() for t in model.trainable_parameters())
    assert n == 12 * p * 384 + 12 * n_kv * 384 + 384 * 5 + 5  # shared K/V: heads x head_dim = d per token


def test_gradients_reach_kv_prompts(backbone):
    model = build_model("e2vpt", backbone, 5, num_tokens=2, kv_tokens=3).train()
    F.cross_entropy(model(torch.randn(4, 3, 28, 28)), torch.tensor([0, 1, 2, 3])).backward()
    assert model.method.key_prompts.grad is not None and bool(
        (model.method.key_prompts.grad.flatten(1).norm(dim=1) > 0).all()
    )
    assert model.method.layer_grad_norms().shape == (12,)
