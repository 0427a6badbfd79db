"""Frequency-shortcut discovery against numpy's FFT, hand-built scorers and a planted ground truth.

The planted task: 4 classes whose only label information is a class pattern confined to one band of
the centred spectrum (plus its conjugate mirror, so the pattern is a real image). Every image also has
white noise in all bands and a strong label-independent low-frequency distractor, so the band with the
most energy is not the one that carries the label.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pae.errors import PaeError
from pae.evolution.frequency import (
    PROBE_L2,
    SCORERS,
    band_masks,
    band_pass,
    conjugate_pair,
    discover_shortcuts,
    dominant_frequency_maps,
    fit_scorer,
    scaled_window,
    score_bands,
    stratified_folds,
)

SIZE, WINDOW, STRIDE, GRID = 32, 8, 4, 7  # 7 x 7 = 49 bands; DC at (16, 16), inside band 3*7+3 = 24
DC_BAND = 3 * GRID + 3
BAND_A = 2 * GRID + 5  # rows [8, 16), cols [20, 28): no DC, away from the distractor
BAND_B = 1 * GRID + 2  # rows [4, 12), cols [8, 16): disjoint from BAND_A and from both mirrors
FEATURE_DIM = 64


def _np_mirror(mask: np.ndarray) -> np.ndarray:
    """Frequency f -> -f on the fftshift-centred grid, written independently of the module under test."""
    n = mask.shape[-1]
    return np.roll(np.flip(mask, (-2, -1)), 1 - n % 2, axis=(-2, -1))


def _np_band_pass(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    spec = np.fft.fftshift(np.fft.fft2(x), axes=(-2, -1))
    return np.fft.ifft2(np.fft.ifftshift(spec * mask, axes=(-2, -1)))


def _box(size: int, r0: int, c0: int, w: int) -> np.ndarray:
    m = np.zeros((size, size), dtype=bool)
    m[r0 : r0 + w, c0 : c0 + w] = True
    return m


def planted_task(class_bands: list[int], per_class: int = 32, amp: float = 0.8, seed: int = 0):
    """Images (K * per_class, 3, 32, 32) whose class is visible only inside band class_bands[k] (numpy-built)."""
    rng = np.random.default_rng(seed)
    masks = band_masks(SIZE, WINDOW, STRIDE).numpy()
    labels = np.repeat(np.arange(len(class_bands)), per_class)
    patterns = []
    for band in class_bands:
        coeffs = rng.standard_normal((3, SIZE, SIZE)) + 1j * rng.standard_normal((3, SIZE, SIZE))
        p = _np_band_pass(np.real(np.fft.ifft2(coeffs)), masks[band]).real  # spectrum inside band + mirror
        patterns.append(p / p.std())
    yy, xx = np.mgrid[:SIZE, :SIZE] - SIZE // 2
    low = np.real(_np_band_pass(rng.standard_normal((len(labels), 3, SIZE, SIZE)), yy**2 + xx**2 <= 9))
    scale = rng.uniform(0.5, 1.5, (len(labels), 1, 1, 1))
    x = amp * scale * np.stack(patterns)[labels] + rng.standard_normal(low.shape) + 4.0 * low / low.std()
    return torch.tensor(x, dtype=torch.float32), torch.tensor(labels)


@pytest.fixture(scope="module")
def features_fn():
    """A fixed random linear projection: deterministic, cheap, and blind to where in the spectrum content sits."""
    pixels = 3 * SIZE * SIZE
    proj = torch.randn(pixels, FEATURE_DIM, generator=torch.Generator().manual_seed(1)) / pixels**0.5
    return lambda x: x.flatten(1) @ proj


# ------------------------------------------------------------------------------------------- masks


def test_band_masks_grid_and_placement_at_224():
    masks = band_masks(224, 16, 8)
    assert masks.shape == (729, 224, 224) and masks.dtype == torch.bool
    assert bool((masks.sum((1, 2)) == 256).all())
    i, j = 3, 5  # row-major: mask i*27 + j is rows [24, 40) x cols [40, 56)
    assert np.array_equal(masks[i * 27 + j].numpy(), _box(224, 24, 40, 16))
    assert bool(masks[13 * 27 + 13, 112, 112])  # the centre band holds DC
    assert masks.sum(0).max() == 4  # windows overlap by half in each direction


def test_scaled_window_keeps_the_paper_grid():
    assert scaled_window(224) == (16, 8)
    assert scaled_window(448) == (32, 16)
    assert scaled_window(28) == (2, 1)
    for size in (28, 224, 448):
        assert band_masks(size, *scaled_window(size)).shape[0] == 729


def test_window_larger_than_the_image_is_refused():
    with pytest.raises(PaeError, match="window 40 is larger than the 32x32") as err:
        band_masks(32, 40, 8)
    assert "at most 32" in err.value.fix
    with pytest.raises(PaeError, match="stride 0"):
        band_masks(32, 8, 0)


# --------------------------------------------------------------------------------------- band-pass


@pytest.mark.parametrize("size", [7, 8])
def test_band_pass_matches_a_numpy_loop_over_masks(size):
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    masks = band_masks(size, 3, 2)
    got = band_pass(x, masks)
    assert got.shape == (len(masks), 2, 3, size, size)
    for s, m in enumerate(masks.numpy()):
        np.testing.assert_allclose(got[s].numpy(), _np_band_pass(x.double().numpy(), m).real, atol=1e-5)


def test_full_mask_returns_the_input():
    x = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(band_pass(x, torch.ones(1, 16, 16, dtype=torch.bool))[0], x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [7, 8])
def test_conjugate_pairs_keep_a_real_band(size):
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    masks = band_masks(size, 3, 2)
    paired = conjugate_pair(masks)
    assert np.array_equal(paired.numpy(), masks.numpy() | _np_mirror(masks.numpy()))
    got = band_pass(x, masks, conjugate_pairs=True)
    for s, m in enumerate(paired.numpy()):
        full = _np_band_pass(x.double().numpy(), m)  # symmetric band: the complex inverse is real already
        assert np.abs(full.imag).max() < 1e-9
        np.testing.assert_allclose(got[s].numpy(), full.real, atol=1e-5)
    # Unpaired (official): the real part equals the average of the union and intersection bands.
    m, mirror = masks, torch.from_numpy(_np_mirror(masks.numpy()).copy())
    mean = (band_pass(x, m | mirror) + band_pass(x, m & mirror)) / 2
    torch.testing.assert_close(band_pass(x, m), mean, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------ scorers


def _blobs(n_per_class: int = 40, dim: int = 20, classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = 3.0 * torch.randn(classes, dim, generator=g)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    return centres[labels] + torch.randn(len(labels), dim, generator=g) + 5.0, labels


def test_linear_probe_separates_and_matches_scikit_learn():
    from sklearn.linear_model import LogisticRegression

    feats, labels = _blobs()
    logits = fit_scorer("linear_probe", feats, labels, 3, seed=0)(feats)
    assert (logits.argmax(1) == labels).float().mean() >= 0.95
    z = ((feats - feats.mean(0)) / feats.std(0, correction=0)).double().numpy()
    ref = LogisticRegression(C=1.0 / (PROBE_L2 * len(labels)), tol=1e-10, max_iter=10_000).fit(z, labels.numpy())
    np.testing.assert_allclose(logits.softmax(1).double().numpy(), ref.predict_proba(z), atol=2e-3)
    with torch.no_grad():  # callers initialise prompts under no_grad; the probe must still fit
        torch.testing.assert_close(fit_scorer("linear_probe", feats, labels, 3, seed=0)(feats), logits)


def test_ncm_logits_are_scaled_negative_squared_distances():
    feats, labels = _blobs(n_per_class=5, dim=4)
    query = torch.randn(7, 4)
    got = fit_scorer("ncm", feats, labels, 3, seed=0)(query)
    mean, std = feats.mean(0), feats.std(0, correction=0)
    z, q = ((feats - mean) / std).double(), ((query - mean) / std).double()
    mu = torch.stack([z[labels == k].mean(0) for k in range(3)])
    var = sum(((z[i] - mu[labels[i]]) ** 2).sum() for i in range(len(z))) / (4 * (len(z) - 3))
    expected = torch.tensor([[-((q[i] - mu[k]) ** 2).sum() / (2 * var) for k in range(3)] for i in range(7)])
    torch.testing.assert_close(got.double(), expected, atol=1e-4, rtol=1e-4)


def test_ncm_never_predicts_a_class_it_has_not_seen():
    feats, labels = _blobs(n_per_class=5, dim=4)
    logits = fit_scorer("ncm", feats, labels, 4, seed=0)(feats)
    assert bool(torch.isneginf(logits[:, 3]).all()) and bool(torch.isfinite(logits[:, :3]).all())
    with pytest.raises(PaeError, match="no class has two images"):
        fit_scorer("ncm", feats[:3], torch.tensor([0, 1, 2]), 3, seed=0)


def test_random_head_is_seeded_kaiming_and_ignores_labels():
    feats, labels = torch.eye(256), torch.zeros(256, dtype=torch.long)
    head = fit_scorer("random_head", feats, labels, 64, seed=3)
    weight = head(feats)  # identity features read the weight matrix out: (d, K)
    assert torch.equal(weight, fit_scorer("random_head", feats, labels.roll(1) + 1, 64, seed=3)(feats))
    assert not torch.equal(weight, fit_scorer("random_head", feats, labels, 64, seed=4)(feats))
    std = math.sqrt(2 / 64)  # the official head's kaiming normal, mode fan_out: fan = K classes, gain sqrt(2)
    assert abs(weight.std().item() / std - 1) < 0.05
    assert 0.035 < (weight.abs() > 2 * std).float().mean() < 0.056  # normal tails (4.6%), not uniform (0%)
    assert torch.equal(head(torch.zeros(1, 256)), torch.zeros(1, 64))  # zero bias


def test_unknown_scorer_and_bad_labels_are_refused():
    feats, labels = _blobs()
    with pytest.raises(PaeError, match="unknown shortcut scorer 'knn'") as err:
        fit_scorer("knn", feats, labels, 3, seed=0)
    assert all(kind in err.value.fix for kind in SCORERS)
    with pytest.raises(PaeError, match="num_classes is 2"):
        fit_scorer("linear_probe", feats, labels, 2, seed=0)


def test_stratified_folds_split_every_class_evenly():
    labels = torch.tensor([0] * 5 + [1] * 4 + [2] * 1 + [3] * 6)[torch.randperm(16)]
    folds = stratified_folds(labels, 2, seed=0)
    assert torch.equal(folds, stratified_folds(labels, 2, seed=0))
    for k in range(4):
        counts = torch.bincount(folds[labels == k], minlength=2)
        assert counts.max() - counts.min() <= 1


# ------------------------------------------------------------------------------- scoring and discovery


def test_score_bands_chunks_and_matches_a_per_mask_loop(features_fn):
    x, y = planted_task([BAND_A] * 4, per_class=4)
    masks = band_masks(SIZE, WINDOW, STRIDE)[::5]
    head = fit_scorer("linear_probe", features_fn(x), y, 4, seed=0)
    sizes = []

    def counting(images):
        sizes.append(len(images))
        return features_fn(images)

    got = score_bands(counting, x, y, masks, head, chunk_images=40)
    assert max(sizes) <= 40 and sum(sizes) == len(masks) * len(x)
    expected = torch.stack([F.cross_entropy(head(features_fn(band_pass(x, m[None])[0])), y) for m in masks])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scorer", ["linear_probe", "ncm"])
def test_discovery_ranks_the_planted_band_first(features_fn, scorer):
    x, y = planted_task([BAND_A] * 4)
    masks = band_masks(SIZE, WINDOW, STRIDE)
    energy = torch.stack([(torch.fft.fft2(x).abs() ** 2).sum((0, 1))[torch.fft.ifftshift(m)].sum() for m in masks])
    assert energy.argmax() == DC_BAND  # not trivial: the most energetic band carries no label information
    result = discover_shortcuts(features_fn, x, y, 4, num_bands=3, window=WINDOW, stride=STRIDE, scorer=scorer)
    # Second: the band that best covers the planted band's conjugate mirror, which Re(ifft) also keeps.
    mirror = _np_mirror(masks[BAND_A].numpy())
    cover = int(np.argmax([(m & mirror).sum() if s != BAND_A else -1 for s, m in enumerate(masks.numpy())]))
    assert result.selected.tolist()[:2] == [BAND_A, cover]
    assert result.losses[BAND_A] < math.log(4) - 0.4 < result.losses.median()
    assert torch.equal(result.losses[result.selected], result.losses.sort().values[:3])
    assert result.masks.shape == (49, SIZE, SIZE) and result.scorer == scorer and result.folds == 2


def test_cross_fitting_finds_no_shortcut_where_there_is_none(features_fn):
    """Without cross-fitting the probe memorises the batch and rewards bands that keep image identity."""
    x, y = planted_task([BAND_A] * 4, amp=0.0)
    common = dict(num_bands=1, window=WINDOW, stride=STRIDE, scorer="linear_probe")
    in_sample = discover_shortcuts(features_fn, x, y, 4, folds=1, **common)
    assert in_sample.losses.min() < math.log(4) - 0.3  # a spurious "shortcut"
    assert discover_shortcuts(features_fn, x, y, 4, **common).losses.min() > math.log(4) - 0.1


def test_conjugate_paired_discovery_keeps_paired_masks(features_fn):
    x, y = planted_task([BAND_A] * 4)
    result = discover_shortcuts(features_fn, x, y, 4, 1, WINDOW, STRIDE, conjugate_pairs=True)
    assert result.selected.tolist() == [BAND_A] and result.conjugate_pairs
    assert torch.equal(result.masks, conjugate_pair(band_masks(SIZE, WINDOW, STRIDE)))


def test_too_many_bands_and_bad_shapes_are_refused(features_fn):
    x, y = planted_task([BAND_A] * 4, per_class=2)
    with pytest.raises(PaeError, match="50 frequency shortcuts .* only 49 bands") as err:
        discover_shortcuts(features_fn, x, y, 4, num_bands=50, window=WINDOW, stride=STRIDE)
    assert "smaller window or stride" in err.value.fix and "fewer prompt tokens" in err.value.fix
    with pytest.raises(PaeError, match="window 64 is larger"):
        discover_shortcuts(features_fn, x, y, 4, num_bands=1, window=64, stride=STRIDE)
    with pytest.raises(PaeError, match="square images"):
        discover_shortcuts(features_fn, x[..., :30], y, 4, num_bands=1, window=WINDOW, stride=STRIDE)
    with pytest.raises(PaeError, match="no class has images in two"):
        discover_shortcuts(features_fn, x[::2], y[::2], 4, num_bands=1, window=WINDOW, stride=STRIDE)


def test_dominant_frequency_maps_match_a_numpy_removal_loop(features_fn):
    """Entry (k, s): class k's loss increase when band s AND its mirror are zeroed in the spectrum."""
    x, y = planted_task([BAND_A] * 3, per_class=4)
    head = fit_scorer("linear_probe", features_fn(x), y, 3, seed=0)
    maps = dominant_frequency_maps(features_fn, x, y, 3, 16, 8, head)
    ce = lambda imgs: F.cross_entropy(head(features_fn(imgs)), y, reduction="none")  # noqa: E731
    base = ce(x)
    for s, m in enumerate(band_masks(SIZE, 16, 8).numpy()):
        removed = _np_band_pass(x.double().numpy(), ~(m | _np_mirror(m)))
        increase = ce(torch.tensor(removed.real, dtype=torch.float32)) - base
        expected = torch.stack([increase[y == k].mean() for k in range(3)])
        torch.testing.assert_close(maps[:, s], expected, atol=1e-4, rtol=1e-4)


def test_dominant_frequency_maps_find_each_class_band(features_fn):
    """Classes 0-1 are carried by band A, classes 2-3 by band B; held-out images, probe fitted on the rest."""
    # A strong pattern: removing the band that covers most of band A's mirror must not come close.
    x, y = planted_task([BAND_A, BAND_A, BAND_B, BAND_B], per_class=48, amp=2.0)
    fit, held_out = torch.arange(len(y)) % 3 != 0, torch.arange(len(y)) % 3 == 0
    head = fit_scorer("linear_probe", features_fn(x[fit]), y[fit], 5, seed=0)
    maps = dominant_frequency_maps(features_fn, x[held_out], y[held_out], 5, WINDOW, STRIDE, head)
    assert maps.shape == (5, 49) and bool(maps[4].isnan().all())  # class 4 has no images
    assert maps[:2].argmax(1).tolist() == [BAND_A, BAND_A]
    assert maps[2:4].argmax(1).tolist() == [BAND_B, BAND_B]
    assert bool((maps[:2, BAND_B].abs() < 0.1 * maps[:2, BAND_A]).all())  # band B is irrelevant to classes 0-1
    assert bool((maps[2:4, BAND_A].abs() < 0.1 * maps[2:4, BAND_B]).all())
