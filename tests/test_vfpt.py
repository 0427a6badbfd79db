"""VFPT against VPT-deep (alpha=0) and against numpy's 2-D FFT (independent of torch.fft)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pae.errors import PaeError
from pae.prompts import build_model

from .conftest import random_vit


@pytest.fixture(scope="module")
def backbone():
    return random_vit("vit_small_patch14_dinov2", 28)


def _pair(backbone, alpha: float, tokens: int = 6):
    vpt = build_model("vpt_deep", backbone, 5, num_tokens=tokens).eval()
    vfpt = build_model("vfpt", backbone, 5, num_tokens=tokens, fourier_fraction=alpha).eval()
    vfpt.load_state_dict(vpt.state_dict())
    return vpt, vfpt


def test_alpha_zero_is_vpt_deep_exactly(backbone):
    vpt, vfpt = _pair(backbone, 0.0)
    img = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        assert torch.equal(vfpt(img), vpt(img))


def test_alpha_one_is_the_real_2d_fft_of_the_prompts(backbone):
    _, vfpt = _pair(backbone, 1.0)
    for layer in (0, 7):
        raw = vfpt.method.embeddings[layer].detach().double().numpy()
        expected = np.fft.fft2(raw).real  # over (sequence, hidden)
        got = vfpt.method.prompts(layer, 3)
        assert got.shape == (3, 6, 384)
        np.testing.assert_allclose(got[1].detach().double().numpy(), expected, rtol=1e-4, atol=1e-4)


def test_partial_fraction_prepends_fourier_prompts(backbone):
    _, vfpt = _pair(backbone, 0.5, tokens=5)  # floor(0.5 * 5) = 2 Fourier prompts, then 3 ordinary ones
    raw = vfpt.method.embeddings[3].detach()
    got = vfpt.method.prompts(3, 1)[0].detach()
    np.testing.assert_allclose(
        got[:2].double().numpy(), np.fft.fft2(raw[:2].double().numpy()).real, rtol=1e-4, atol=1e-4
    )
    assert torch.equal(got[2:], raw[2:])


def test_vfpt_trains_and_counts_like_vpt_deep(backbone):
    vpt, vfpt = _pair(backbone, 0.5)
    count = lambda m: sum(p.numel() for p in m.trainable_parameters())  # noqa: E731
    assert count(vfpt) == count(vpt) == 12 * 6 * 384 + 384 * 5 + 5
    F.cross_entropy(vfpt.train()(torch.randn(4, 3, 28, 28)), torch.tensor([0, 1, 2, 3])).backward()
    assert bool((vfpt.method.layer_grad_norms() > 0).all())


def test_fraction_outside_unit_interval_is_refused(backbone):
    with pytest.raises(PaeError, match="fourier_fraction must be in"):
        build_model("vfpt", backbone, 5, fourier_fraction=1.5)
