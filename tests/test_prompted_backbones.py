"""Every ViT method on every ViT backbone family of the catalogue (tiny random configs of the real timm
architectures): zero prompts give timm's own forward_features / forward_head, each method trains, and prompts sit
after all prefix tokens (DINOv2's registers)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pae.backbones.catalogue import CATALOGUE
from pae.errors import PaeError
from pae.methods import METHODS
from pae.prompts import PromptedViT, PromptMethod, build_model
from pae.prompts.bpt import BPT
from pae.prompts.e2vpt import E2VPT
from pae.prompts.ivpt import IVPT
from pae.prompts.kv_attention import block_with_kv
from pae.prompts.vfpt import VFPT
from pae.prompts.vpt import VPT

from .release_files import tiny

FAMILIES = sorted({b.arch for b in CATALOGUE.values() if b.family == "vit"})  # in21k B/L/H, MAE, MoCo, DINOv2 (+reg)


@pytest.fixture(scope="module", params=FAMILIES)
def backbone(request) -> nn.Module:
    return tiny(request.param)


def _images(bb: nn.Module, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, *bb.patch_embed.img_size)


def _zero_prompt_methods(bb: nn.Module) -> list[PromptMethod]:
    depth, d, patch, heads = len(bb.blocks), bb.embed_dim, bb.patch_embed.patch_size[0], bb.blocks[0].attn.num_heads
    return [
        PromptMethod(),
        VPT(depth, d, patch, 0, deep=True),
        VPT(depth, d, patch, 0, deep=False),
        VFPT(depth, d, patch, 0, fourier_fraction=0.5),
        E2VPT(depth, d, patch, heads, 0, 0),
        IVPT(depth, d, patch, 0),
    ] + [BPT(depth, d, 0, deep=deep, variant=v) for v in ("bilinear", "fwhiten", "twhiten") for deep in (True, False)]


def test_backbone_family_is_what_the_seam_expects(backbone):
    """[CLS] pooling after the final norm (timm's config for all of them, MAE's included), patch 14 or 16,
    layer scale for DINOv2 and 1 + 4 prefix tokens with registers."""
    assert backbone.global_pool == "token" and isinstance(backbone.fc_norm, nn.Identity) and backbone.has_class_token
    assert backbone.patch_embed.patch_size[0] in (14, 16)
    assert backbone.num_prefix_tokens == 1 + backbone.num_reg_tokens


def test_zero_prompts_reproduce_timm_forward(backbone):
    img = _images(backbone)
    with torch.no_grad():
        tokens = backbone.forward_features(img)
        pooled = backbone.forward_head(tokens, pre_logits=True)
        for method in _zero_prompt_methods(backbone):
            got = PromptedViT(backbone, method, 3).forward_features(img)
            torch.testing.assert_close(got, tokens, rtol=0, atol=1e-6, msg=type(method).__name__)
            torch.testing.assert_close(got[:, 0], pooled, rtol=0, atol=1e-6, msg=type(method).__name__)


def test_attention_with_no_extra_keys_is_timms_block(backbone):
    """E2VPT's block (kv_attention.py) runs each family's own modules: layer scale, q/k norms, prefix tokens."""
    x = backbone.norm_pre(backbone._pos_embed(backbone.patch_embed(_images(backbone))))
    empty = x.new_zeros(x.shape[0], backbone.blocks[0].attn.num_heads, 0, backbone.blocks[0].attn.head_dim)
    with torch.no_grad():
        for block in backbone.blocks:
            torch.testing.assert_close(block_with_kv(block, x, empty, empty), block(x), rtol=1e-5, atol=1e-5)
            x = block(x)


@pytest.mark.parametrize("method", [m for m, spec in METHODS.items() if spec.has_prompts or spec.trains_backbone])
def test_every_method_trains_on_every_family(backbone, method):
    model = build_model(method, backbone, 3, num_tokens=2, kv_tokens=2, bpt_rank=4, fit_images=2, prompt_dropout=0.0)
    img = _images(backbone, 4)
    model.method.fit_to_data(backbone, img)
    F.cross_entropy(model(img), torch.tensor([0, 1, 2, 0])).backward()
    params = model.method.per_layer_parameters() or [next(backbone.parameters())]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in params)


def test_deep_prompts_sit_after_every_prefix_token(backbone):
    """A hand-written VPT-deep loop over timm's blocks: [prefix tokens (CLS, registers), P_l, patches]."""
    model = build_model("vpt_deep", backbone, 3, num_tokens=3, prompt_dropout=0.0)
    prompts, k = model.method.embeddings, backbone.num_prefix_tokens
    img = _images(backbone)
    with torch.no_grad():
        x = backbone._pos_embed(backbone.patch_embed(img))
        x = torch.cat([x[:, :k], prompts[0].expand(2, -1, -1), x[:, k:]], dim=1)
        for layer, block in enumerate(backbone.blocks):
            x = block(torch.cat([x[:, :k], prompts[layer].expand(2, -1, -1), x[:, k + 3 :]], dim=1))
        torch.testing.assert_close(model.forward_features(img), backbone.norm(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "overrides",
    [{"global_pool": "avg"}, {"class_token": False, "global_pool": "avg"}],
    ids=["mae-finetune-avg-pool", "no-class-token"],
)
def test_backbones_without_a_cls_readout_are_refused(overrides):
    """MAE's fine-tuning config (avg pool + fc_norm) and class-token-free ViTs: the seam classifies from [CLS]."""
    bb = tiny("vit_base_patch16_224.mae", **overrides)
    with pytest.raises(PaeError, match="pools with 'avg'"):
        PromptedViT(bb, PromptMethod(), 3)


def test_vpts_mae_readout_is_timms_avg_pool_with_a_fresh_fc_norm():
    """VPT's MAE code: the mean of the non-[CLS] tokens through a new LayerNorm at its init, the pretrained final
    norm deleted. timm builds exactly that with global_pool='avg' (norm -> Identity, fc_norm on the pooled mean)."""
    mae = tiny("vit_base_patch16_224.mae")
    avg = tiny("vit_base_patch16_224.mae", global_pool="avg")
    avg.load_state_dict(
        {k: v for k, v in mae.state_dict().items() if not k.startswith("norm.")}
        | {"fc_norm.weight": torch.ones(64), "fc_norm.bias": torch.zeros(64)}
    )
    images = _images(mae)
    ours = PromptedViT(mae, VPT(2, 64, 16, 0, deep=True), 3, readout="mae_pool")
    cls = PromptedViT(mae, PromptMethod(), 3)
    with torch.no_grad():
        want = avg.forward_head(avg.forward_features(images), pre_logits=True)
        torch.testing.assert_close(ours.readout(ours.forward_features(images)), want, rtol=1e-5, atol=1e-5)
        before = ours.readout(ours.forward_features(images))
        mae.norm.weight.mul_(3.0)  # the pretrained final norm is not used ...
        torch.testing.assert_close(ours.readout(ours.forward_features(images)), before, rtol=0, atol=0)
        assert (cls.readout(cls.forward_features(images)) - mae.forward_features(images)[:, 0]).abs().max() < 1e-5
    prompted = PromptedViT(mae, VPT(2, 64, 16, 3, deep=True), 3, readout="mae_pool")
    assert prompted.forward_features(images).shape[1] == 1 + 3 + 4  # ... and the prompts are in the mean


def test_the_official_readout_follows_vpts_code_per_backbone():
    from pae.config.train import TrainConfig

    def resolved(arch: str) -> str:
        return TrainConfig(arch=arch, method="vpt_deep").resolved().readout

    assert resolved("vit_base_patch16_224.mae") == "mae_pool" and resolved("vit_large_patch16_224.mae") == "mae_pool"
    assert resolved("vit_base_patch16_224.orig_in21k") == "cls" and resolved("vit_small_patch14_dinov2") == "cls"
    assert resolved("swin_base_patch4_window7_224.ms_in22k") == "mean_all"
    with pytest.raises(PaeError, match="readout 'mean_all' does not apply to a PromptedViT.*cls, mae_pool"):
        PromptedViT(tiny("vit_base_patch16_224.mae"), PromptMethod(), 3, readout="mean_all")
