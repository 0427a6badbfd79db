"""Task-aware prompt init against hand-written patch embedding, energy pooling and a hand-written timm block."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pae.errors import PaeError
from pae.evolution.frequency import band_pass
from pae.evolution.task_init import energy_pooled_tokens, propagate, task_aware_prompts

from .conftest import random_vit


@pytest.fixture(scope="module")
def backbone():
    return random_vit("vit_small_patch14_dinov2", 28)


def _patch_tokens_by_hand(bb, x: torch.Tensor) -> torch.Tensor:
    """Conv patchify + the patch part of the learned position embedding (DINOv2: one [CLS] prefix)."""
    proj = bb.patch_embed.proj
    tokens = F.conv2d(x, proj.weight, proj.bias, stride=proj.stride).flatten(2).transpose(1, 2)
    return tokens + bb.pos_embed[:, 1:]


def _block_by_hand(blk, x: torch.Tensor) -> torch.Tensor:
    """timm's pre-norm block: x + ls1 * attn(norm1 x), then x + ls2 * mlp(norm2 x)."""
    h = blk.norm1(x)
    b, n, c = h.shape
    heads = blk.attn.num_heads
    qkv = F.linear(h, blk.attn.qkv.weight, blk.attn.qkv.bias)
    q, k, v = qkv.view(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    att = (q @ k.transpose(-2, -1) * (c // heads) ** -0.5).softmax(-1)
    x = x + blk.ls1.gamma * blk.attn.proj((att @ v).transpose(1, 2).reshape(b, n, c))
    return x + blk.ls2.gamma * blk.mlp.fc2(F.gelu(blk.mlp.fc1(blk.norm2(x))))


def test_energy_pooled_tokens_match_a_hand_loop(backbone):
    bands = torch.randn(2, 3, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    got = energy_pooled_tokens(backbone, bands)
    assert got.shape == (2, 384)
    for s in range(2):
        with torch.no_grad():
            tokens = _patch_tokens_by_hand(backbone, bands[s])  # (B, N, d)
        total, acc = 0.0, torch.zeros(384)
        for b in range(tokens.shape[0]):
            for n in range(tokens.shape[1]):
                e = float((tokens[b, n] ** 2).sum())
                total += e
                acc += e * tokens[b, n]
        torch.testing.assert_close(got[s], acc / total, atol=1e-4, rtol=1e-4)


def test_propagate_runs_prompt_only_sequences_through_the_blocks(backbone):
    first = torch.randn(4, 384, generator=torch.Generator().manual_seed(1))
    got = propagate(backbone, first, depth=3)
    assert got.shape == (3, 4, 384)
    assert torch.equal(got[0], first)
    with torch.no_grad():
        layer1 = _block_by_hand(backbone.blocks[0], first[None])[0]
        layer2 = _block_by_hand(backbone.blocks[1], layer1[None])[0]
    torch.testing.assert_close(got[1], layer1, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got[2], layer2, atol=1e-4, rtol=1e-4)
    assert propagate(backbone, first, depth=12).shape == (12, 4, 384)


def test_depth_outside_the_backbone_is_refused(backbone):
    for depth in (0, 13):
        with pytest.raises(PaeError, match=f"prompt depth {depth} is outside 1..12") as err:
            propagate(backbone, torch.zeros(2, 384), depth)
        assert "depth 1 for shallow" in err.value.fix


def test_task_aware_prompts_end_to_end(backbone):
    g = torch.Generator().manual_seed(2)
    images, labels = torch.randn(16, 3, 28, 28, generator=g), torch.arange(4).repeat(4)
    backbone.train()  # the caller's mode must survive; the reads themselves run in eval mode
    try:
        prompts, result = task_aware_prompts(
            backbone, images, labels, num_classes=4, num_tokens=3, depth=2, window=14, stride=7, scorer="ncm", seed=0
        )
        assert backbone.training
    finally:
        backbone.eval()
    assert prompts.shape == (2, 3, 384) and bool(torch.isfinite(prompts).all())
    assert result.masks.shape == (9, 28, 28) and result.selected.shape == (3,)
    bands = band_pass(images, result.masks[result.selected])
    torch.testing.assert_close(prompts[0], energy_pooled_tokens(backbone, bands), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(prompts[1], propagate(backbone, prompts[0], 2)[1], atol=1e-5, rtol=1e-5)
    # The default features are the backbone's [CLS] after its final norm.
    _, explicit = task_aware_prompts(
        backbone,
        images,
        labels,
        4,
        3,
        1,
        14,
        7,
        scorer="ncm",
        seed=0,
        features_fn=lambda x: backbone.forward_features(x)[:, 0],
    )
    torch.testing.assert_close(explicit.losses, result.losses)


def test_too_many_prompt_tokens_for_the_band_grid_is_refused(backbone):
    images, labels = torch.randn(8, 3, 28, 28), torch.arange(4).repeat(2)
    with pytest.raises(PaeError, match="10 frequency shortcuts .* only 9 bands"):
        task_aware_prompts(backbone, images, labels, 4, num_tokens=10, depth=1, window=14, stride=7)
