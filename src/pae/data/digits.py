"""scikit-learn's digits (1,797 real 8x8 scans, shipped with the package): the embedded offline default.

Split like VTAB-1k so the same protocol runs on it: a fixed stratified train800 / val200 and the
remaining 797 images as test.
"""

from __future__ import annotations

import hashlib
import importlib.util
from functools import cache
from pathlib import Path

import numpy as np
import torch

SPLITS = ("train800", "val200", "train800val200", "test")


@cache
def source_key() -> str:
    """What every split is made of: scikit-learn's bundled data file and this file's split rule, by content.

    A cached split is checked against it without importing scikit-learn (about 2 s, paid by every job that loads
    data); content, not timestamps, so a cache restored by `dvc pull` into a fresh clone is still found."""
    sklearn = importlib.util.find_spec("sklearn")
    if sklearn is None or not sklearn.submodule_search_locations:
        return "no scikit-learn"  # read_split then fails, naming the missing package
    data = Path(sklearn.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(data.read_bytes() if data.is_file() else b"no data file")
    return digest.hexdigest()


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
