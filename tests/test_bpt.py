"""BPT: whitening against its defining property, prompts against A @ B^T, counts against closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pae.backbones import load_backbone
from pae.data import DataSpec, eval_input, load_split
from pae.errors import PaeError
from pae.prompts import build_model
from pae.prompts.bpt import block_inputs, whitening_matrix

from .conftest import random_vit


@pytest.fixture(scope="module")
def backbone():
    return random_vit("vit_small_patch14_dinov2", 28)


def _q_k_statistics(block, tokens: torch.Tensor) -> np.ndarray:
    """X~ = W_q W_k^T x^T in numpy, from timm's qkv weight (q = x @ weight[:d].T)."""
    x = block.norm1(tokens).detach().double().numpy()
    w = block.attn.qkv.weight.detach().double().numpy()
    d = x.shape[1]
    wq, wk = w[:d].T, w[d : 2 * d].T
    return wq @ wk.T @ x.T


def test_whitened_statistics_have_identity_covariance_on_real_data(dinov2_weights, vtab_mini, tmp_path):
    """W Sigma W = I wherever Sigma has energy. The q/k statistics of the real DINOv2 are so bursty
    (eigenvalues spread over >12 decades) that the near-null directions are regularised by eps instead."""
    backbone = load_backbone("vit_small_patch14_dinov2", dinov2_weights, 56)
    data = load_split(DataSpec("vtab1k", vtab_mini / "cifar10"), "train800", 56, tmp_path)
    images = eval_input(data.images[:100])
    for layer, (block, tokens) in enumerate(block_inputs(backbone, images)):
        if layer not in (0, 6):
            continue
        w = whitening_matrix(block, tokens, "per_token", eps=1e-12).numpy()
        xt = _q_k_statistics(block, tokens.flatten(0, 1))
        sigma = xt @ xt.T / xt.shape[1]
        s, u = np.linalg.eigh(sigma)
        energetic = u[:, s > 1e-6 * s.max()]
        assert energetic.shape[1] >= 50
        whitened = w @ xt
        cov = energetic.T @ (whitened @ whitened.T / xt.shape[1]) @ energetic
        assert np.abs(cov - np.eye(cov.shape[0])).max() < 1e-3
        assert np.allclose(w, w.T)  # ZCA: symmetric
        assert s.max() / np.median(s) > 1e3  # bursty: far from white before


def test_block_inputs_are_the_prompt_free_forward(backbone):
    images = torch.randn(3, 3, 28, 28)
    inputs = [t for _, t in block_inputs(backbone, images)]
    x = backbone.norm_pre(backbone._pos_embed(backbone.patch_embed(images)))
    with torch.no_grad():
        for block, got in zip(backbone.blocks, inputs):
            assert torch.equal(got, x[:, 1:])
            x = block(x)


@pytest.mark.parametrize("name", ["bpt_bilinear", "bpt_twhiten"])
def test_prompts_equal_a_times_b_transposed_and_match_vpt_with_those_prompts(backbone, name):
    model = build_model(name, backbone, 5, num_tokens=7, bpt_rank=6).eval()  # 7: not a perfect square
    with torch.no_grad():
        model.method.b.normal_()
    a, b = model.method.a.detach().numpy(), model.method.b.detach().numpy()
    for layer in (0, 11):
        got = model.method.prompts(layer, 2)
        assert got.shape == (2, 7, 384)
        np.testing.assert_allclose(got[1].detach().numpy(), a[layer] @ b[layer].T, rtol=1e-5, atol=1e-6)
    vpt = build_model("vpt_deep", backbone, 5, num_tokens=7).eval()
    with torch.no_grad():
        vpt.method.embeddings.copy_(torch.from_numpy(a @ b.transpose(0, 2, 1)))
        vpt.head.load_state_dict(model.head.state_dict())
        img = torch.randn(2, 3, 28, 28)
        torch.testing.assert_close(model(img), vpt(img), rtol=1e-5, atol=1e-5)


def test_shallow_prompts_only_before_the_first_block(backbone):
    method = build_model("bpt_bilinear_shallow", backbone, 5, num_tokens=4).method
    assert method.prompts(0, 2).shape == (2, 4, 384)
    assert method.prompts(1, 2) is None
    assert method.trajectory().shape == (1, 4, 384)


@pytest.mark.parametrize(
    "name, per_layer",
    [
        ("bpt_bilinear", lambda p, d, r: p * r + d * r),
        ("bpt_fwhiten", lambda p, d, r: p * d),  # W is fixed
        ("bpt_twhiten", lambda p, d, r: p * d + d * d),
    ],
)
@pytest.mark.parametrize("deep", [True, False])
def test_trainable_parameter_counts_match_closed_form(backbone, name, per_layer, deep):
    p, d, r, classes = 9, 384, 5, 7
    model = build_model(name if deep else f"{name}_shallow", backbone, classes, num_tokens=p, bpt_rank=r)
    layers = 12 if deep else 1
    method_params = sum(t.numel() for t in model.method.parameters() if t.requires_grad)
    assert method_params == layers * per_layer(p, d, r)
    assert sum(t.numel() for t in model.trainable_parameters()) == method_params + d * classes + classes


def test_whitening_init_writes_each_layers_matrix(backbone):
    images = torch.randn(60, 3, 28, 28)
    ours = {"bpt_whitening": "per_token", "bpt_columns": "shared"}
    fw = build_model("bpt_fwhiten", backbone, 5, num_tokens=3, whiten_eps=1e-4, **ours).method
    bil = build_model("bpt_bilinear", backbone, 5, num_tokens=3, bpt_rank=8, bpt_init="whitening", **ours).method
    fw.fit_to_data(backbone, images)
    bil.fit_to_data(backbone, images)
    for layer, (block, tokens) in enumerate(block_inputs(backbone, images)):
        w = whitening_matrix(block, tokens, "per_token", 1e-4).float()
        torch.testing.assert_close(fw.b[layer], w)
        # bilinear: each of B's r columns is a distinct column of W
        matches = (bil.b[layer].T[:, None, :] - w.T[None, :, :]).abs().amax(-1) < 1e-6
        assert (matches.sum(1) == 1).all() and len(set(matches.float().argmax(1).tolist())) == 8


def test_initialize_solves_a_b_transposed_equals_p(backbone):
    target = torch.randn(12, 3, 384)
    fw = build_model("bpt_fwhiten", backbone, 5, num_tokens=3).method
    fw.fit_to_data(backbone, torch.randn(60, 3, 28, 28))
    fw.initialize(target)
    torch.testing.assert_close(fw.trajectory(), target, rtol=1e-3, atol=1e-3)  # full rank: exact
    bil = build_model("bpt_bilinear", backbone, 5, num_tokens=3, bpt_rank=8).method
    bil.initialize(target)  # p = 3 <= r = 8: exact
    torch.testing.assert_close(bil.trajectory(), target, rtol=1e-4, atol=1e-4)
    low = build_model("bpt_bilinear", backbone, 5, num_tokens=6, bpt_rank=2).method
    wide = torch.randn(12, 6, 384)
    low.initialize(wide)  # p = 6 > r = 2: the best rank-2 fit (Eckart-Young), error = the dropped singular values
    error = (wide - low.trajectory().detach()).flatten(1).norm(dim=1)
    torch.testing.assert_close(error, torch.linalg.svdvals(wide)[:, 2:].norm(dim=1), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="do not fit"):
        bil.initialize(torch.randn(12, 4, 384))


def test_gradients_reach_a_and_b_and_per_layer_norms(backbone):
    model = build_model("bpt_bilinear", backbone, 5, num_tokens=3).train()
    model(torch.randn(2, 3, 28, 28)).sum().backward()
    assert model.method.a.grad.abs().sum() > 0 and model.method.b.grad.abs().sum() > 0
    norms = model.method.layer_grad_norms()
    expected = (model.method.a.grad.flatten(1).pow(2).sum(1) + model.method.b.grad.flatten(1).pow(2).sum(1)).sqrt()
    torch.testing.assert_close(norms, expected)


def test_bad_settings_are_named(backbone):
    with pytest.raises(PaeError, match="rank must be in"):
        build_model("bpt_bilinear", backbone, 5, bpt_rank=0)
    with pytest.raises(PaeError, match="unknown BPT B init"):
        build_model("bpt_bilinear", backbone, 5, bpt_init="pca")
