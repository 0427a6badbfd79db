"""scikit-learn's digits (1,797 real 8x8 scans, shipped with the package): the embedded offline default.

Split like VTAB-1k so the same protocol runs on it: a fixed stratified train800 / val200 and the
remaining 797 images as test.
"""

from __future__ import annotations

import numpy as np
import torch

SPLITS = ("train800", "val200", "train800val200", "test")


def read_split(split: str) -> tuple[torch.Tensor, list[int], list[str]]:
    """uint8 RGB images (N, 3, 8, 8), labels and class names of one split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng(0)
    parts: dict[str, list[int]] = {"train800": [], "val200": [], "test": []}
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c)).tolist()
        parts["train800"] += idx[:80]
        parts["val200"] += idx[80:100]
        parts["test"] += idx[100:]
    parts["train800val200"] = parts["train800"] + parts["val200"]
    order = np.array(sorted(parts[split]))
    gray = np.rint(digits.images[order] * (255.0 / 16.0)).astype(np.uint8)
    images = torch.from_numpy(gray)[:, None].expand(-1, 3, -1, -1).contiguous()
    return images, labels[order].tolist(), [str(c) for c in range(10)]
