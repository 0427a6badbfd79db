"""The prompted forward against timm's own forward and against a hand-written ViT (independent reference)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pae.errors import PaeError
from pae.methods import options_for
from pae.prompts import PromptedViT, build_method, build_model
from pae.prompts.vpt import VPT

from .conftest import random_vit


def _ref_block(x: torch.Tensor, blk) -> torch.Tensor:
    """A pre-LN ViT block written from its weights: x + ls1*MHSA(LN(x)); x + ls2*MLP(LN(x))."""
    b, n, d = x.shape
    heads = blk.attn.num_heads
    h = F.layer_norm(x, (d,), blk.norm1.weight, blk.norm1.bias, blk.norm1.eps)
    q, k, v = (h @ blk.attn.qkv.weight.T + blk.attn.qkv.bias).reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), dim=-1)
    o = (att @ v).transpose(1, 2).reshape(b, n, d) @ blk.attn.proj.weight.T + blk.attn.proj.bias
    x = x + blk.ls1.gamma * o
    h = F.layer_norm(x, (d,), blk.norm2.weight, blk.norm2.bias, blk.norm2.eps)
    h = F.gelu(h @ blk.mlp.fc1.weight.T + blk.mlp.fc1.bias) @ blk.mlp.fc2.weight.T + blk.mlp.fc2.bias
    return x + blk.ls2.gamma * h


def _ref_vpt(model: PromptedViT, img: torch.Tensor, prompts: torch.Tensor, deep: bool) -> torch.Tensor:
    """VPT as the paper states it: [CLS, P_1, E] into block 1; deep: P_l replaces the prompt slots before block l."""
    bb = model.backbone
    e = (
        F.conv2d(img, bb.patch_embed.proj.weight, bb.patch_embed.proj.bias, stride=bb.patch_embed.patch_size)
        .flatten(2)
        .transpose(1, 2)
    )
    x = torch.cat([bb.cls_token.expand(img.shape[0], -1, -1), e], dim=1) + bb.pos_embed
    p = prompts.shape[1]
    for layer, blk in enumerate(bb.blocks):
        if layer == 0:
            x = torch.cat([x[:, :1], prompts[0].expand(img.shape[0], -1, -1), x[:, 1:]], dim=1)
        elif deep:
            x = torch.cat([x[:, :1], prompts[layer].expand(img.shape[0], -1, -1), x[:, 1 + p :]], dim=1)
        x = _ref_block(x, blk)
    x = F.layer_norm(x, (x.shape[-1],), bb.norm.weight, bb.norm.bias, bb.norm.eps)
    return x[:, 0] @ model.head.weight.T + model.head.bias


@pytest.fixture(scope="module")
def backbone():
    return random_vit("vit_small_patch14_dinov2", 28)


def test_zero_prompts_reproduce_timm_forward(backbone):
    img = torch.randn(3, 3, 28, 28)
    with torch.no_grad():
        expected = backbone(img)  # timm: pooled [CLS] after the final norm
        for method in (
            build_method("linear", backbone),
            VPT(12, 384, 14, 0, deep=True),
            VPT(12, 384, 14, 0, deep=False),
        ):
            got = PromptedViT(backbone, method, 5).forward_features(img)[:, 0]
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_hand_written_reference_matches_timm(backbone):
    """The reference itself is checked against timm with empty prompts before it judges VPT."""
    model = build_model("linear", backbone, 7)
    img = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(
            _ref_vpt(model, img, torch.zeros(12, 0, 384), deep=True), model(img), rtol=1e-5, atol=1e-5
        )


@pytest.mark.parametrize("deep", [True, False])
def test_vpt_matches_independent_reference(backbone, deep):
    model = build_model("vpt_deep" if deep else "vpt_shallow", backbone, 7, num_tokens=5, prompt_dropout=0.0)
    with torch.no_grad():
        model.method.embeddings.normal_()  # large prompts so any misplacement shows
    img = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(
            model(img), _ref_vpt(model, img, model.method.embeddings, deep), rtol=1e-4, atol=1e-4
        )


def test_deep_prompts_differ_from_shallow(backbone):
    """Guards the reference test: with deep prompts the output depends on prompts of layer 5."""
    model = build_model("vpt_deep", backbone, 7, num_tokens=3)
    img = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        before = model(img)
        # Random, not constant: LayerNorm removes a constant shift, so that would (correctly) change nothing.
        model.method.embeddings[5].add_(torch.randn(3, 384))
        assert (model(img) - before).abs().max() > 1e-3


@pytest.mark.parametrize("name,prompt_params", [("linear", 0), ("vpt_shallow", 10 * 384), ("vpt_deep", 12 * 10 * 384)])
def test_trainable_parameter_counts_match_closed_form(backbone, name, prompt_params):
    classes = 7
    model = build_model(name, backbone, classes, **options_for(name, {"num_tokens": 10}))
    n = sum(p.numel() for p in model.trainable_parameters())
    assert n == prompt_params + 384 * classes + classes


def test_full_finetuning_trains_every_backbone_weight():
    bb = random_vit("vit_small_patch14_dinov2", 28)
    model = build_model("full", bb, 7)
    n = sum(p.numel() for p in model.trainable_parameters())
    assert n == sum(p.numel() for p in bb.parameters()) + 384 * 7 + 7


def test_backbone_stays_in_eval_mode_and_frozen(backbone):
    model = build_model("vpt_deep", backbone, 7, num_tokens=2, prompt_dropout=0.1).train()
    assert model.training and model.method.training and not model.backbone.training
    assert all(not p.requires_grad for p in model.backbone.parameters())


def test_vpt_init_range_is_xavier_of_patch_fan_in(backbone):
    model = build_model("vpt_deep", backbone, 7, num_tokens=50)
    bound = math.sqrt(6.0 / (3 * 14 * 14 + 384))
    emb = model.method.embeddings
    assert emb.abs().max() <= bound and emb.abs().max() > 0.95 * bound


def test_prompt_gradients_reach_every_layer(backbone):
    model = build_model("vpt_deep", backbone, 7, num_tokens=2)
    F.cross_entropy(model(torch.randn(4, 3, 28, 28)), torch.tensor([0, 1, 2, 3])).backward()
    norms = model.method.layer_grad_norms()
    assert norms.shape == (12,) and bool((norms > 0).all())


def test_unknown_method_and_empty_prompts_are_refused(backbone):
    with pytest.raises(PaeError, match="unknown method 'vpt_deeep'"):
        build_method("vpt_deeep", backbone)
    with pytest.raises(PaeError, match="needs at least 1 prompt tokens"):
        build_method("vpt_deep", backbone, num_tokens=0)


def test_prompt_dropout_masks_each_sample_independently():
    """VPT drops after expanding to the batch: samples must not share one mask."""
    torch.manual_seed(0)
    vpt = VPT(12, 384, 14, 5, deep=True, dropout=0.5).train()
    p = vpt.prompts(0, 8)
    dropped = p == 0
    assert dropped.any() and not all(torch.equal(dropped[0], dropped[i]) for i in range(1, 8))


def test_backbones_that_do_not_pool_cls_are_refused():
    avg_pooled = random_vit("vit_small_patch16_224", 32)
    avg_pooled.reset_classifier(0, "avg")  # e.g. MAE-style checkpoints pool patch tokens
    with pytest.raises(PaeError, match="pools with 'avg'"):
        PromptedViT(avg_pooled, build_method("linear", avg_pooled), 3)
