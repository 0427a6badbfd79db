"""iVPT (our reconstruction): its limits are VPT-deep and VPT-shallow; AR and the gates against hand computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pae.errors import PaeError
from pae.prompts import build_model
from pae.prompts.ivpt import cls_attention

from .conftest import random_vit


@pytest.fixture(scope="module")
def backbone():
    return random_vit("vit_small_patch14_dinov2", 42)  # 9 image tokens, so top-k selects a real subset


def _assert_same_outputs(ivpt, reference_name, backbone):
    """``reference_name`` given iVPT's prompts (as many layers as it has) and head computes exactly iVPT's logits."""
    reference = build_model(reference_name, backbone, 5, num_tokens=4).eval()
    with torch.no_grad():
        reference.method.embeddings.copy_(ivpt.method.embeddings[: reference.method.embeddings.shape[0]])
        reference.head.load_state_dict(ivpt.head.state_dict())
        img = torch.randn(3, 3, 42, 42)
        assert torch.equal(ivpt(img), reference(img))


@pytest.mark.parametrize("switches", [dict(ivpt_cdc=False, ivpt_ar=False), dict()])
def test_closed_gates_or_switched_off_is_vpt_deep_exactly(backbone, switches):
    ivpt = build_model("ivpt", backbone, 5, num_tokens=4, **switches).eval()
    if ivpt.method.cdc:
        with torch.no_grad():
            ivpt.method.gate_bias.fill_(-float("inf"))  # closed gates; AR's lambda starts at 0
            ivpt.method.gate_from_previous.normal_()  # input-dependent terms cannot reopen a closed gate
    _assert_same_outputs(ivpt, "vpt_deep", backbone)


def test_open_gates_carry_the_first_prompts_like_vpt_shallow(backbone):
    ivpt = build_model("ivpt", backbone, 5, num_tokens=4, ivpt_ar=False).eval()
    with torch.no_grad():
        ivpt.method.gate_bias.fill_(float("inf"))
    _assert_same_outputs(ivpt, "vpt_shallow", backbone)


def test_gate_matches_the_formula(backbone):
    method = build_model("ivpt", backbone, 5, num_tokens=4).method.eval()
    with torch.no_grad():
        for p in (method.gate_bias, method.gate_from_previous, method.gate_from_new):
            p.normal_()
    prev, new = torch.randn(2, 4, 384), torch.randn(2, 4, 384)

    def ln(t):
        t = t.numpy()
        return (t - t.mean(-1, keepdims=True)) / np.sqrt(t.var(-1, keepdims=True) + 1e-5)

    logit = (
        method.gate_bias[2].detach().numpy()
        + ln(prev) @ method.gate_from_previous[2].detach().numpy()
        + ln(new) @ method.gate_from_new[2].detach().numpy()
    )
    expected = 1 / (1 + np.exp(-logit))
    np.testing.assert_allclose(method.gate(2, prev, new).squeeze(-1).detach().numpy(), expected, rtol=1e-5, atol=1e-6)
    own = method.embeddings[3].detach().expand(2, -1, -1)  # inside prompts() the new tokens are P_3
    g = method.gate(2, prev, own).detach().numpy()
    np.testing.assert_allclose(
        method.prompts(3, 2, prev).detach().numpy(),
        g * prev.numpy() + (1 - g) * method.embeddings[3].detach().numpy(),
        rtol=1e-5,
        atol=1e-5,
    )


def test_attentive_reinforcement_against_hand_computed_cls_attention(backbone):
    method = build_model("ivpt", backbone, 5, num_tokens=3, ivpt_top_k=2).method
    with torch.no_grad():
        method.ar_scale.fill_(0.7)
    block = backbone.blocks[4]
    x = torch.randn(2, 1 + 3 + 9, 384)
    # independent: the full attention matrix of the block, [CLS] row, softmax over image keys, heads averaged
    attn = block.attn
    h = block.norm1(x)
    qkv = attn.qkv(h).reshape(2, 13, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    logits = (qkv[0] @ qkv[1].transpose(-1, -2) * attn.scale)[:, :, 0, 4:]  # (B, heads, 9)
    expected_attn = logits.softmax(-1).mean(1)
    torch.testing.assert_close(cls_attention(block, x, 4), expected_attn, rtol=1e-5, atol=1e-6)
    out = method.adjust_tokens(4, block, x, 1, 3)
    expected = x.clone()
    for b in range(2):
        for i in expected_attn[b].topk(2).indices.tolist():
            expected[b, 4 + i] += 0.7 * x[b, 1:4].mean(0)
    torch.testing.assert_close(out, expected)


def test_parameter_count_matches_closed_form_and_gradients_flow(backbone):
    p, d, depth = 4, 384, 12
    model = build_model("ivpt", backbone, 5, num_tokens=p).train()
    n = sum(t.numel() for t in model.method.parameters() if t.requires_grad)
    assert n == depth * p * d + (depth - 1) * (p + 2 * d) + depth
    with torch.no_grad():
        model.method.ar_scale.fill_(0.1)
    model(torch.randn(2, 3, 42, 42)).sum().backward()
    for name, t in model.method.named_parameters():
        assert t.grad is not None and t.grad.abs().sum() > 0, name
    assert model.method.layer_grad_norms().shape == (depth,)


def test_bad_top_k_is_named(backbone):
    with pytest.raises(PaeError, match="ivpt_top_k"):
        build_model("ivpt", backbone, 5, ivpt_top_k=0)
