"""PAE phase I: frequency-shortcut discovery, and class-wise dominant frequency maps for the analysis.

A *band* is a square window of the fftshift-centred 2-D spectrum. Discovery keeps one band at a time
(band-pass), scores the frozen model's task loss on the filtered batch and keeps the lowest-loss
bands, one per prompt token (research/methods.md §3.2). The official code scores with a freshly
initialised, untrained head; we also offer a fitted linear probe (our default) and nearest class mean.

As in the official code the masks are not conjugate-symmetric and the real part of the inverse
transform is kept, which implicitly symmetrises the band at half amplitude:
Re(ifft(X * M)) = ifft(X * (M + mirror(M)) / 2) for real images. ``conjugate_pairs=True`` keeps the
point-mirrored band as well (Wang et al., ICCV 2023), so the kept band is conjugate-symmetric.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config.pae import SCORERS
from ..errors import PaeError

FeaturesFn = Callable[[torch.Tensor], torch.Tensor]  # images (n, C, H, W) -> frozen features (n, d)
Scorer = Callable[[torch.Tensor], torch.Tensor]  # features (n, d) -> logits (n, num_classes)

PAPER_IMG_SIZE, PAPER_WINDOW = 224, 16
PROBE_L2 = 1e-2  # L2 on standardized features; the probe ranks off-distribution inputs, so keep it calibrated
PROBE_MAX_ITER = 500


@dataclass
class ShortcutResult:
    """Discovery output. ``masks`` are the kept bands as applied (mirrored partners included when paired)."""

    masks: torch.Tensor  # (S, H, W) bool
    losses: torch.Tensor  # (S,) mean cross-entropy of each band-passed batch
    selected: torch.Tensor  # (num_bands,) indices of the lowest-loss masks, ascending loss
    scorer: str
    folds: int  # 1: scored in-sample; k >= 2: each image scored by a scorer fitted on the other folds
    conjugate_pairs: bool


# ---------------------------------------------------------------------------------------------- masks


def scaled_window(img_size: int) -> tuple[int, int]:
    """(window, stride): the paper's 16/8 at 224 px scaled to ``img_size``; a band keeps its share of the spectrum.

    The grid is 27x27 = 729 bands at every size where the scaling is exact (28, 56, 112, 224, 448 px).
    """
    if img_size < 2:
        raise PaeError(f"image size {img_size} is too small for frequency bands.", "use images of at least 2x2 pixels.")
    window = max(2, round(PAPER_WINDOW * img_size / PAPER_IMG_SIZE))
    return window, max(1, window // 2)


def band_masks(size: int, window: int, stride: int) -> torch.Tensor:
    """Bool (S, size, size): mask s = i*n + j is 1 on rows [i*stride, i*stride+window) x cols [j*stride, ...)."""
    if stride < 1 or window < 1:
        raise PaeError(
            f"band window {window} and stride {stride} must both be at least 1.",
            "use positive values, e.g. scaled_window(img_size).",
        )
    if window > size:
        raise PaeError(
            f"band window {window} is larger than the {size}x{size} spectrum.",
            f"use a window of at most {size}, e.g. scaled_window({size}) = {scaled_window(size)}.",
        )
    n = (size - window) // stride + 1
    pos = torch.arange(size)
    starts = torch.arange(n)[:, None] * stride
    rows = (pos >= starts) & (pos < starts + window)  # (n, size)
    return (rows[:, None, :, None] & rows[None, :, None, :]).reshape(n * n, size, size)


def conjugate_pair(masks: torch.Tensor) -> torch.Tensor:
    """Each mask OR its 180-degree rotation about the centred DC bin (H//2, W//2): a conjugate-symmetric band."""
    h, w = masks.shape[-2:]
    rows = (2 * (h // 2) - torch.arange(h, device=masks.device)) % h
    cols = (2 * (w // 2) - torch.arange(w, device=masks.device)) % w
    return masks | masks[..., rows, :][..., cols]


# ------------------------------------------------------------------------------------------ band-pass


def centred_spectrum(images: torch.Tensor) -> torch.Tensor:
    """fftshift(fft2(x)) over (H, W), computed once per batch and reused for every mask."""
    return torch.fft.fftshift(torch.fft.fft2(images.float()), dim=(-2, -1))


def band_pass_spectrum(spectrum: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) centred spectrum x (S, H, W) masks -> (S, B, C, H, W) real images, all masks at once."""
    kept = spectrum.unsqueeze(0) * masks.to(spectrum.device)[:, None, None]
    return torch.fft.ifft2(torch.fft.ifftshift(kept, dim=(-2, -1))).real


def band_pass(images: torch.Tensor, masks: torch.Tensor, conjugate_pairs: bool = False) -> torch.Tensor:
    """Re(ifft2(ifftshift(fftshift(fft2(x)) * M_s))) for every mask: (B, C, H, W), (S, H, W) -> (S, B, C, H, W).

    The official code does not pair masks; ``conjugate_pairs`` also keeps each band's mirrored partner.
    """
    return band_pass_spectrum(centred_spectrum(images), conjugate_pair(masks) if conjugate_pairs else masks)


# -------------------------------------------------------------------------------------------- scorers


def fit_scorer(kind: str, features: torch.Tensor, labels: torch.Tensor, num_classes: int, seed: int) -> Scorer:
    """A features -> logits function fitted on unfiltered features; ``seed`` matters for 'random_head' only."""
    _check_scorer(kind)
    _check_labels(labels, num_classes)
    return _FITTERS[kind](features.detach().float(), labels.to(features.device), num_classes, seed)


def _random_head(features: torch.Tensor, labels: torch.Tensor, num_classes: int, seed: int) -> Scorer:
    """The official scorer: a fresh head, drawn as VPT's and PAE's head is (kaiming_normal_, mode fan_out: std
    sqrt(2 / C)), zero bias, on raw features; labels are unused. It is a draw from the distribution of the run's
    own initial head, not that head itself: the pipeline runs MPA once per task and seed, for every method."""
    from ..prompts.base import init_head

    weight = init_head(
        torch.empty(num_classes, features.shape[1]), "kaiming_fan_out", torch.Generator().manual_seed(seed)
    ).to(features.device)
    return lambda f: f.float() @ weight.T


def _standardizer(features: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Per-dimension z-scoring with the fit set's statistics, so scorers do not depend on feature scale."""
    mean, std = features.mean(0), features.std(0, correction=0).clamp_min(1e-6)
    return lambda f: (f.float() - mean) / std


def _linear_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int, seed: int) -> Scorer:
    """Multinomial logistic regression, mean CE + PROBE_L2/2 ||W||^2 (bias free), full-batch L-BFGS from zero.

    Zero init and a deterministic solver make it seed-free. Same objective as scikit-learn's
    LogisticRegression(C=1 / (PROBE_L2 * N)) on the standardized features.
    """
    scale = _standardizer(features)
    z = scale(features)
    weight = torch.zeros(z.shape[1], num_classes, device=z.device, requires_grad=True)
    bias = torch.zeros(num_classes, device=z.device, requires_grad=True)
    opt = torch.optim.LBFGS(
        [weight, bias],
        max_iter=PROBE_MAX_ITER,
        tolerance_grad=1e-6,
        tolerance_change=1e-9,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z @ weight + bias, labels) + 0.5 * PROBE_L2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    w, b = weight.detach(), bias.detach()
    return lambda f: scale(f) @ w + b


def _ncm(features: torch.Tensor, labels: torch.Tensor, num_classes: int, seed: int) -> Scorer:
    """Nearest class mean on standardized features, logits = -||z - mu_k||^2 / (2 var).

    The temperature is not a free knob: var is the pooled within-class variance per dimension, so the
    logits are the class log-likelihoods of a shared isotropic Gaussian (equal priors). Classes absent
    from the fit set get -inf logits (never predicted).
    """
    scale = _standardizer(features)
    z = scale(features)
    counts = torch.bincount(labels, minlength=num_classes)
    present = int((counts > 0).sum())
    if len(labels) <= present:
        raise PaeError(
            f"the ncm scorer got {len(labels)} images in {present} classes, so no class has two images "
            "and the within-class variance is undefined.",
            "use a larger batch, or the 'linear_probe' scorer.",
        )
    means = torch.zeros(num_classes, z.shape[1], device=z.device).index_add_(0, labels, z)
    means /= counts.clamp_min(1)[:, None]
    var = (z - means[labels]).pow(2).sum() / (z.shape[1] * (len(labels) - present))
    absent = counts == 0

    def logits(f: torch.Tensor) -> torch.Tensor:
        sq = (scale(f)[:, None, :] - means[None]).pow(2).sum(-1)
        return (-sq / (2 * var)).masked_fill(absent, float("-inf"))

    return logits


_FITTERS = {"random_head": _random_head, "linear_probe": _linear_probe, "ncm": _ncm}
assert tuple(_FITTERS) == SCORERS, "pae.config.pae.SCORERS names the scorers the options accept"


def _check_scorer(kind: str) -> None:
    if kind not in _FITTERS:
        raise PaeError(f"unknown shortcut scorer '{kind}'.", f"use one of {', '.join(SCORERS)}.")


def _check_labels(labels: torch.Tensor, num_classes: int) -> None:
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise PaeError(
            f"labels span [{int(labels.min())}, {int(labels.max())}] but num_classes is {num_classes}.",
            "pass the task's number of classes, with labels in 0..num_classes-1.",
        )


# --------------------------------------------------------------------------------------------- scoring


def _features(features_fn: FeaturesFn, images: torch.Tensor, chunk_images: int) -> torch.Tensor:
    """features_fn on at most ``chunk_images`` images per call, without autograd."""
    with torch.no_grad():
        return torch.cat([features_fn(x) for x in images.split(chunk_images)])


def _band_losses(
    features_fn: FeaturesFn,
    images: torch.Tensor,
    labels: torch.Tensor,
    masks: torch.Tensor,
    scorer: Scorer,
    chunk_images: int,
) -> torch.Tensor:
    """Per-image cross-entropy (S, B) of the scorer on each band-passed batch; one FFT, masks in chunks."""
    if chunk_images < 1:
        raise PaeError(f"chunk_images is {chunk_images}.", "use at least 1 (it bounds images per forward pass).")
    labels = labels.to(images.device)
    spectrum = centred_spectrum(images)
    per_call = max(1, chunk_images // images.shape[0])
    out = []
    with torch.no_grad():
        for group in masks.split(per_call):
            x = band_pass_spectrum(spectrum, group).flatten(0, 1)  # mask-major: image s*B + b has label b
            logits = scorer(_features(features_fn, x, chunk_images)).float()
            ce = F.cross_entropy(logits, labels.repeat(len(group)), reduction="none")
            out.append(ce.view(len(group), -1))
    return torch.cat(out)


def score_bands(
    features_fn: FeaturesFn,
    images: torch.Tensor,
    labels: torch.Tensor,
    masks: torch.Tensor,
    scorer: Scorer,
    chunk_images: int = 2048,
) -> torch.Tensor:
    """Mean cross-entropy (S,) of the scorer on each band-passed batch: low loss = that band carries the task."""
    return _band_losses(features_fn, images, labels, masks, scorer, chunk_images).mean(1)


def _square_size(images: torch.Tensor) -> int:
    if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        raise PaeError(
            f"frequency bands need a batch of square images (B, C, S, S), got shape {tuple(images.shape)}.",
            "resize or crop the images to a square, as the prompted ViT sees them.",
        )
    return int(images.shape[-1])


def stratified_folds(labels: torch.Tensor, folds: int, seed: int) -> torch.Tensor:
    """Fold index per image: each class's images, in seeded random order, dealt round-robin to the folds."""
    n = len(labels)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(labels.device)
    order = perm[torch.sort(labels[perm], stable=True).indices]  # grouped by class, shuffled within
    grouped = labels[order]
    rank = torch.arange(n, device=labels.device) - torch.searchsorted(grouped, grouped)  # position within class
    fold = torch.empty_like(labels)
    fold[order] = rank % folds
    return fold


def _cross_fitted_losses(
    features_fn: FeaturesFn,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    masks: torch.Tensor,
    scorer: str,
    seed: int,
    folds: int,
    chunk_images: int,
) -> torch.Tensor:
    """Per-band mean CE where every image is scored by a scorer fitted without it.

    Images whose class has no example outside their own fold cannot be scored fairly and are left out.
    """
    labels = labels.to(images.device)
    features = _features(features_fn, images, chunk_images)
    fold = stratified_folds(labels, folds, seed)
    losses = []
    for f in range(folds):
        fit = fold != f
        held_out = (fold == f) & (torch.bincount(labels[fit], minlength=num_classes)[labels] > 0)
        if held_out.any():
            head = fit_scorer(scorer, features[fit], labels[fit], num_classes, seed)
            losses.append(_band_losses(features_fn, images[held_out], labels[held_out], masks, head, chunk_images))
    if not losses:
        raise PaeError(
            f"no class has images in two of the {folds} cross-fitting folds ({len(labels)} images).",
            "use a larger batch (at least two images of some class), or folds=1.",
        )
    return torch.cat(losses, dim=1).mean(1)


def discover_shortcuts(
    features_fn: FeaturesFn,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    num_bands: int,
    window: int,
    stride: int,
    scorer: str = "linear_probe",
    seed: int = 0,
    folds: int = 2,
    conjugate_pairs: bool = False,
    chunk_images: int = 2048,
) -> ShortcutResult:
    """PAE phase I: rank every band by the task loss of its band-pass batch and keep the ``num_bands`` lowest.

    ``images`` are normalised model inputs; scorers are fitted on features of unfiltered images.
    With ``folds`` >= 2 (default) the fitted scorers are cross-fitted: fitted on the other folds, they
    cannot reward a band for keeping what they memorised about an image rather than what predicts its
    class (with feature dim >= batch size an in-sample probe fits any labels). 'random_head' uses no
    labels, so it always scores the whole batch in-sample, as the official code does.
    """
    _check_scorer(scorer)
    _check_labels(labels, num_classes)
    masks = band_masks(_square_size(images), window, stride).to(images.device)
    if not 1 <= num_bands <= len(masks):
        raise PaeError(
            f"{num_bands} frequency shortcuts were requested but window {window} / stride {stride} "
            f"give only {len(masks)} bands on {images.shape[-1]} px images.",
            "use a smaller window or stride, or fewer prompt tokens (one band per token).",
        )
    if folds < 1:
        raise PaeError(f"folds is {folds}.", "use 1 (score in-sample) or 2 or more (cross-fitted scorers).")
    if conjugate_pairs:
        masks = conjugate_pair(masks)
    folds = 1 if scorer == "random_head" else folds
    if folds == 1:
        head = fit_scorer(scorer, _features(features_fn, images, chunk_images), labels, num_classes, seed)
        losses = score_bands(features_fn, images, labels, masks, head, chunk_images)
    else:
        losses = _cross_fitted_losses(
            features_fn, images, labels, num_classes, masks, scorer, seed, folds, chunk_images
        )
    selected = torch.sort(losses, stable=True).indices[:num_bands]
    return ShortcutResult(masks, losses, selected, scorer, folds, conjugate_pairs)


def dominant_frequency_maps(
    features_fn: FeaturesFn,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    window: int,
    stride: int,
    scorer_fn: Scorer,
    chunk_images: int = 2048,
) -> torch.Tensor:
    """Class-wise dominant frequency maps (Wang et al., ICCV 2023), (num_classes, S).

    Entry (k, s): class k's mean cross-entropy with band s and its conjugate partner REMOVED, minus its
    loss on the unfiltered images. High = class k relies on that band. Classes absent from ``labels`` are NaN.
    Fit ``scorer_fn`` on other images than these (Wang et al. use test images), or it rewards memorisation.
    """
    _check_labels(labels, num_classes)
    labels = labels.to(images.device)
    removed = ~conjugate_pair(band_masks(_square_size(images), window, stride).to(images.device))
    base = F.cross_entropy(scorer_fn(_features(features_fn, images, chunk_images)).float(), labels, reduction="none")
    increase = _band_losses(features_fn, images, labels, removed, scorer_fn, chunk_images) - base
    onehot = F.one_hot(labels, num_classes).float()  # (B, K)
    return (increase @ onehot / onehot.sum(0)).T
