"""Convergence and oscillation statistics on hand-made series with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pae.diagnostics import (
    coefficient_of_variation,
    convergence_epoch,
    grad_norm_matrix,
    oscillation_summary,
    sign_flip_rate,
    speedup,
)
from pae.errors import PaeError

NAN = float("nan")


def test_convergence_epoch_counts_training_epochs_from_the_untrained_value():
    # Best 80; 99% of it is 79.2, first reached after epoch 3 (element 0 is the untrained model).
    assert convergence_epoch([10.0, 50.0, 79.0, 79.5, 80.0, 78.0]) == 3
    assert convergence_epoch([10.0, 50.0, 79.0, 79.5, 80.0], fraction=0.5) == 1
    assert convergence_epoch([90.0, 50.0, 89.5]) == 0  # good enough before training
    assert convergence_epoch([0.0, 50.0, 100.0], fraction=0.5) == 1  # reaching the threshold exactly counts


def test_convergence_epoch_skips_nan_epochs():
    assert convergence_epoch([NAN, 40.0, NAN, 100.0]) == 3


@pytest.mark.parametrize(
    "accuracies, fraction",
    [([], 0.99), ([NAN, NAN], 0.99), ([1.0, -2.0], 0.99), ([[1.0, 2.0]], 0.99), ([1.0, 2.0], 0.0), ([1.0, 2.0], 1.5)],
)
def test_convergence_epoch_rejects_bad_input(accuracies, fraction):
    with pytest.raises(PaeError):
        convergence_epoch(accuracies, fraction)


def test_speedup():
    assert speedup(30, 20) == 1.5
    assert speedup(10, 0) == math.inf
    assert speedup(0, 0) == 1.0
    with pytest.raises(PaeError):
        speedup(-1, 3)


def test_sign_flip_rate_on_zigzag_monotone_and_mixed_layers():
    t = np.arange(8.0)
    series = np.stack([(-1.0) ** t, t, -t, [1, 2, 3, 2, 3, 4, 5, 6]], axis=1)
    # The last layer's changes are + + - + + + +: 2 of its 6 successive pairs reverse.
    assert sign_flip_rate(series) == pytest.approx([1.0, 0.0, 0.0, 2 / 6])


def test_sign_flip_rate_counts_a_flat_step_as_no_reversal_and_accepts_one_layer():
    assert sign_flip_rate([1.0, 1.0, 2.0, 1.0]) == pytest.approx([0.5])


def test_coefficient_of_variation_by_hand():
    series = np.array([[1.0, 2.0], [3.0, 2.0], [1.0, 2.0], [5.0, 2.0]])
    # Layer 0, window 2: windows (1,3), (3,1), (1,5) have std/mean 1/2, 1/2, 2/3. Layer 1 is constant.
    assert coefficient_of_variation(series, window=2) == pytest.approx([(0.5 + 0.5 + 2 / 3) / 3, 0.0])
    # One window of all four points: mean 2.5, population std sqrt(2.75).
    assert coefficient_of_variation(series, window=4)[0] == pytest.approx(math.sqrt(2.75) / 2.5)


def test_coefficient_of_variation_is_scale_free():
    rng = np.random.default_rng(0)
    g = rng.uniform(0.5, 2.0, size=(20, 3))
    assert coefficient_of_variation(100 * g, 5) == pytest.approx(coefficient_of_variation(g, 5))


def test_nan_rows_are_dropped_and_short_series_give_nan():
    zigzag = np.array([[NAN, NAN], [1.0, 1.0], [2.0, 2.0], [1.0, 3.0]])  # epoch 0 has no gradient
    assert sign_flip_rate(zigzag) == pytest.approx([1.0, 0.0])
    assert np.isnan(sign_flip_rate(zigzag[:3])).all()  # two points: one change, nothing to reverse
    assert np.isnan(coefficient_of_variation(zigzag, window=4)).all()
    assert np.isnan(sign_flip_rate(np.full((5, 2), NAN))).all()
    with pytest.raises(PaeError):
        coefficient_of_variation(zigzag, window=1)
    with pytest.raises(PaeError):
        sign_flip_rate(np.zeros((2, 2, 2)))


def _history(series: np.ndarray) -> list[dict]:
    """train.py-style rows: an epoch-0 row with NaN gradient norms, then one row per epoch (as csv strings)."""
    rows = [{"epoch": 0, "val_top1": 10.0, **{f"grad_norm_l{i}": NAN for i in range(series.shape[1])}}]
    rows += [
        {"epoch": t + 1, "val_top1": 50.0, **{f"grad_norm_l{i}": str(v) for i, v in enumerate(r)}}
        for t, r in enumerate(series)
    ]
    return rows


def test_oscillation_summary_from_history_rows():
    t = np.arange(10.0)
    # Layers 0-1 decay smoothly (shallow), layers 2-3 zig-zag around 1 (deep).
    series = np.stack([1 / (1 + t), 2 / (1 + t), 1 + 0.5 * (-1) ** t, 1 + 0.2 * (-1) ** t], axis=1)
    rows = _history(series)
    assert np.array_equal(grad_norm_matrix(rows)[1:], series)
    out = oscillation_summary(rows, window=4)
    cv = coefficient_of_variation(series, 4)
    assert out["grad_flip_rate_l0"] == 0.0 and out["grad_flip_rate_l3"] == 1.0
    assert out["grad_flip_rate_shallow"] == 0.0 and out["grad_flip_rate_deep"] == 1.0
    assert out["grad_cv_l2"] == pytest.approx(0.5) and out["grad_cv_l3"] == pytest.approx(0.2)
    assert out["grad_cv_shallow"] == pytest.approx((cv[0] + cv[1]) / 2)
    assert out["grad_cv_deep"] == pytest.approx(0.35)
    assert out == oscillation_summary(series, window=4)  # the same from the array


def test_oscillation_summary_orders_layers_numerically():
    rows = [{f"grad_norm_l{i}": float(i) for i in (10, 2, 0, 1)}]
    assert grad_norm_matrix(rows).tolist() == [[0.0, 1.0, 2.0, 10.0]]


def test_oscillation_summary_of_short_or_single_layer_runs_is_nan_not_an_error():
    out = oscillation_summary(_history(np.array([[1.0], [2.0]])))
    assert set(out) == {
        "grad_flip_rate_l0",
        "grad_cv_l0",
        "grad_flip_rate_shallow",
        "grad_flip_rate_deep",
        "grad_cv_shallow",
        "grad_cv_deep",
    }
    assert all(math.isnan(v) for v in out.values())
    assert all(math.isnan(v) for v in oscillation_summary([]).values())
