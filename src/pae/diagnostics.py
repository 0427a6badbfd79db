"""The statistics PAE's claims rest on, computed from a run's per-epoch history.

- Convergence speed: the epoch at which a run reaches 99% of its best top-1, and the ratio of two such
  epochs (methods.md §3.6 #10).
- Gradient oscillation, the paper's motivation: how often and how strongly each layer's prompt-gradient
  norm zig-zags. Shallow layers are said to surge and stall, deep layers to oscillate.

Series are arrays g[t, l] (t = epochs or steps, l = prompt layer) or the training loop's history rows with
``grad_norm_l{i}`` columns.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .errors import PaeError
from .run_folder import GRAD_NORM_COLUMN, grad_key, grad_norm_column


def convergence_epoch(accuracies: Sequence[float], fraction: float = 0.99) -> int:
    """The first epoch whose accuracy reaches ``fraction`` of the run's best: PAE's "epochs to converge".

    ``accuracies[e]`` is the accuracy after ``e`` training epochs. Element 0 is the evaluation of the
    untrained model, as in the training loop's history (pae.loop), so the result counts training epochs. A result of
    0 means the run was already there before training, e.g. after a task-aware init. NaN entries (epochs that were
    not evaluated) never count.
    """
    acc = np.asarray(accuracies, dtype=float)
    if not 0.0 < fraction <= 1.0:
        raise PaeError(f"fraction={fraction} is outside (0, 1].", "pass a share of the best accuracy, e.g. 0.99.")
    if acc.ndim != 1 or not np.isfinite(acc).any() or np.nanmin(acc) < 0:
        raise PaeError(
            "convergence needs a 1-D series of non-negative accuracies with at least one finite value.",
            "pass one accuracy per epoch, epoch 0 (before training) first.",
        )
    return int(np.flatnonzero(acc >= fraction * np.nanmax(acc))[0])


def epochs_to_reach(accuracies: Sequence[float], target: float) -> int | None:
    """The first epoch whose accuracy reaches ``target`` (element 0: before training), or None if none does.

    A common target (the base run's final accuracy, say) compares how fast two runs get somewhere, where
    ``convergence_epoch`` compares how fast each gets to its own plateau: a run that plateaus lower "converges"
    sooner by that measure while never reaching where the other ended."""
    acc = np.asarray(accuracies, dtype=float)
    hits = np.flatnonzero(np.isfinite(acc) & (acc >= target))
    return int(hits[0]) if hits.size else None


def speedup(base_epochs: float, pae_epochs: float) -> float:
    """How many times fewer epochs PAE needs to converge than its base method (> 1 = faster).

    PAE converging at epoch 0 (its init is already good enough) gives inf, or 1.0 if the base did too.
    """
    if base_epochs < 0 or pae_epochs < 0:
        raise PaeError(
            f"epochs to converge cannot be negative (base {base_epochs}, PAE {pae_epochs}).",
            "pass the results of convergence_epoch.",
        )
    if pae_epochs == 0:
        return math.inf if base_epochs > 0 else 1.0
    return base_epochs / pae_epochs


def sign_flip_rate(series: np.ndarray | Sequence) -> np.ndarray:
    """Per layer, the fraction of successive changes that reverse direction: 1 = zig-zag, 0 = monotone.

    ``series`` is g[t, l], or g[t] for one layer. Rows with a NaN (epoch 0 has no gradient yet) are dropped.
    A zero change counts as no reversal. NaN for layers with fewer than 3 points left.
    """
    g = _as_series(series)
    d = np.diff(g, axis=0)
    if len(d) < 2:
        return np.full(g.shape[1], np.nan)
    return (d[1:] * d[:-1] < 0).mean(axis=0)


def coefficient_of_variation(series: np.ndarray | Sequence, window: int = 5) -> np.ndarray:
    """Per layer, std/mean over every trailing window of ``window`` points, averaged over the windows.

    It measures the size of the oscillation relative to the gradient's own level, so layers with different
    gradient scales compare. It is local, so a steady decay does not count as variance. The std is the
    population std. NaN rows are dropped as in ``sign_flip_rate``. NaN if fewer than ``window`` points are
    left, or if a window is all zeros.
    """
    if window < 2:
        raise PaeError(f"window={window} leaves nothing to vary.", "use a window of at least 2 points.")
    g = _as_series(series)
    if len(g) < window:
        return np.full(g.shape[1], np.nan)
    w = sliding_window_view(g, window, axis=0)  # (T - window + 1, L, window)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (w.std(axis=-1) / w.mean(axis=-1)).mean(axis=0)


def oscillation_summary(
    history: Sequence[Mapping[str, object]] | np.ndarray | Sequence, window: int = 5
) -> dict[str, float]:
    """MLflow-ready oscillation metrics: flip rate and CV per layer, and their means over the shallow and deep halves.

    Keys (``run_folder.grad_key``): ``grad_flip_rate_l{i}``, ``grad_cv_l{i}`` (i = column position, 0 = first
    prompt layer), ``grad_{flip_rate,cv}_shallow`` (layers [0, L//2)) and ``grad_{flip_rate,cv}_deep`` (layers
    [L//2, L)).
    A half's mean skips NaN layers, and is NaN if none is left (e.g. the shallow half of a 1-layer method).
    """
    rows = len(history) > 0 and isinstance(history[0], Mapping)
    g = grad_norm_matrix(history) if rows else np.asarray(history, dtype=float)
    flips, cvs = sign_flip_rate(g), coefficient_of_variation(g, window)
    half = len(flips) // 2
    out: dict[str, float] = {}
    for name, values in (("flip_rate", flips), ("cv", cvs)):
        out.update({grad_key(name, i): float(v) for i, v in enumerate(values)})
        out[grad_key(name, "shallow")] = _finite_mean(values[:half])
        out[grad_key(name, "deep")] = _finite_mean(values[half:])
    return out


def grad_norm_matrix(rows: Sequence[Mapping[str, object]]) -> np.ndarray:
    """g[t, l] from history rows' ``grad_norm_l{i}`` columns, in layer order (values may be history.csv strings)."""
    if not rows:
        return np.zeros((0, 0))
    layers = sorted(int(m.group(1)) for key in rows[0] if (m := GRAD_NORM_COLUMN.fullmatch(key)))
    return np.array([[float(row[grad_norm_column(i)]) for i in layers] for row in rows]).reshape(len(rows), len(layers))


def _as_series(series: np.ndarray | Sequence) -> np.ndarray:
    """A (T, L) float array without the rows that hold a NaN or inf."""
    g = np.asarray(series, dtype=float)
    if g.ndim == 1:
        g = g[:, None]
    if g.ndim != 2:
        raise PaeError(
            f"a gradient-norm series must be (steps, layers) or (steps,); got shape {g.shape}.",
            "pass one row per epoch or step, one column per prompt layer.",
        )
    return g[np.isfinite(g).all(axis=1)]


def _finite_mean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def finite_median(values: Sequence[float]) -> float:
    """The upper median of the finite values (NaN when there are none): the diagnosis' per-layer summaries."""
    finite = sorted(v for v in values if math.isfinite(v))
    return finite[len(finite) // 2] if finite else math.nan
