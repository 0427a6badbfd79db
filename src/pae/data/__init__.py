"""Datasets as device-resident uint8 tensors: VTAB-1k folders, VPT's FGVC json splits, scikit-learn digits.

``load_split`` is the one entry point: it reads a split, decodes it once into a cached uint8 tensor
following the dataset's protocol (VPT's), and returns it. ``augment`` turns a uint8 training batch
into the float model input (``evaluate_input`` does so for evaluation).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config.train import DATA_KINDS, TrainConfig
from ..errors import PaeError
from . import digits, fgvc, vtab1k
from .tensors import (
    ImageTensors,
    content_sha256,
    decode_files,
    fingerprint,
    load_cache,
    normalize,
    random_crop_flip,
    resize_square,
    save_cache,
)

KINDS = DATA_KINDS
SPLITS_OF = {"vtab1k": vtab1k.SPLITS, "fgvc": fgvc.SPLITS, "digits": digits.SPLITS}
# (training split, evaluation splits) of the final protocol: VTAB retrains on 1,000 images; FGVC trains on train.
FINAL_SPLITS = {
    "vtab1k": ("train800val200", ("test",)),
    "digits": ("train800val200", ("test",)),
    "fgvc": ("train", ("val", "test")),
}
TUNE_SPLITS = {
    "vtab1k": ("train800", ("val200", "test")),
    "digits": ("train800", ("val200", "test")),
    "fgvc": ("train", ("val", "test")),
}


@dataclass(frozen=True)
class DataSpec:
    """Which dataset: ``kind`` is vtab1k | fgvc | digits; ``root`` its folder (not for digits)."""

    kind: str
    root: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise PaeError(f"unknown dataset kind '{self.kind}'.", f"use one of {', '.join(KINDS)}.")
        if self.kind != "digits" and not self.root:
            raise PaeError(f"dataset kind '{self.kind}' needs a root folder.", "set data.root to the dataset folder.")

    @property
    def label(self) -> str:
        return self.name or (Path(self.root).name if self.root else self.kind)

    def cache_dir(self, base: str | Path) -> Path:
        """The task's folder in the cache, named by its root as given (not resolved: a relative root names the same
        folder in every clone, so a cache restored by `dvc pull` is found)."""
        where = str(self.root) if self.root else "sklearn"
        return Path(base) / f"{self.kind}-{self.label}-{hashlib.sha256(where.encode()).hexdigest()[:8]}"


def _fgvc_resize(img_size: int) -> int:
    return round(img_size * 256 / 224)  # Resize(256) before a 224 crop, scaled with the resolution


def load_split(
    spec: DataSpec, split: str, img_size: int, cache_dir: str | Path, for_training: bool = False
) -> ImageTensors:
    """One split as uint8 tensors at the model resolution, decoded once and cached under ``cache_dir``.

    FGVC training splits keep the shorter-side-resized images (random crops come later, per step);
    all other splits are stored exactly as the model sees them before normalisation.
    """
    if split not in SPLITS_OF[spec.kind]:  # the one split check: the readers below trust it
        raise PaeError(f"unknown {spec.kind} split '{split}'.", f"use one of {', '.join(SPLITS_OF[spec.kind])}.")
    # What the cached split is made of (besides its files' paths, sizes and times): for digits, the data and split
    # rule by content (no scikit-learn import when the cache is current); otherwise each image's class.
    if spec.kind == "digits":  # no files: cached all the same, so the prepared task is one DVC-tracked folder
        files, source, layout, size, crop = [], [digits.source_key()], "square", img_size, None
    elif spec.kind == "vtab1k":
        files, labels, classes = vtab1k.read_split(spec.root, split)
        source, layout, size, crop = [*classes, *map(str, labels)], "square", img_size, None
    else:
        files, labels, classes = fgvc.read_split(spec.root, split, spec.name)
        source, layout, size = [*classes, *map(str, labels)], "shorter", _fgvc_resize(img_size)
        crop = None if for_training else img_size
    key = fingerprint([spec.kind, split, layout, str(size), str(crop), *source], files)
    path = spec.cache_dir(cache_dir) / f"{split}-{layout}{size}-{crop or 'nocrop'}.safetensors"
    cached = load_cache(path, key)
    if cached is not None:
        return cached
    if spec.kind == "digits":
        images, labels, classes = digits.read_split(split)
        images, sizes = torch.stack([resize_square(img, img_size) for img in images]), None
    else:
        images, sizes = decode_files(files, layout, size, crop, desc=f"{spec.label}/{split}")
    data = ImageTensors(images, torch.tensor(labels, dtype=torch.int64), classes, sizes)
    save_cache(path, data, key)
    return data


def prepare(cfg: TrainConfig, splits: list[str] | None = None, summary_path: str | None = None) -> dict:
    """Decode a task's splits (default: all) into the cache; a summary with a content hash per split, written to
    ``summary_path`` when given (the pipeline's prepare_data output)."""
    from ..files import write_json

    spec = DataSpec(cfg.data_kind, cfg.data_root, cfg.data_name)
    training = {FINAL_SPLITS[spec.kind][0], TUNE_SPLITS[spec.kind][0]}  # the splits `train` fits on
    summary: dict = {"task": spec.label, "kind": spec.kind, "img_size": cfg.img_size, "splits": {}}
    for split in splits or SPLITS_OF[spec.kind]:
        data = load_split(spec, split, cfg.img_size, cfg.cache_dir, for_training=split in training)
        summary["classes"] = data.classes
        summary["splits"][split] = {
            "images": len(data),
            "shape": list(data.images.shape[1:]),
            "sha256": content_sha256(data),
        }
    if summary_path:
        write_json(summary, summary_path)
    return summary


def train_input(
    spec: DataSpec, images: torch.Tensor, sizes: torch.Tensor | None, img_size: int, draws: torch.Tensor | None = None
) -> torch.Tensor:
    """A training batch as model input: FGVC gets RandomCrop + flip (VPT) from ``draws`` (B, 3); VTAB and digits
    none."""
    if spec.kind == "fgvc":
        if draws is None:
            raise ValueError("FGVC training input needs augmentation draws")
        images = random_crop_flip(images, sizes, img_size, draws)
    return normalize(images)


def eval_input(images: torch.Tensor) -> torch.Tensor:
    return normalize(images)


__all__ = [
    "FINAL_SPLITS",
    "KINDS",
    "SPLITS_OF",
    "TUNE_SPLITS",
    "DataSpec",
    "ImageTensors",
    "content_sha256",
    "eval_input",
    "load_split",
    "prepare",
    "train_input",
]
