"""FGVC datasets with VPT's json splits: ``{train,val,test}.json`` mapping image path -> class id.

Class ids are made contiguous over the sorted ids of the training split, as VPT's JSONDataset does.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import PaeError

SPLITS = ("train", "val", "test")
# Where VPT's loaders look for images, relative to the dataset root (src/data/datasets/json_dataset.py).
IMAGE_DIRS = {"cub": "images", "nabirds": "images", "stanforddogs": "Images", "stanfordcars": "", "oxfordflowers": ""}


def _read_json(root: Path, split: str) -> dict[str, int]:
    path = root / f"{split}.json"
    if not path.is_file():
        raise PaeError(
            f"FGVC split file '{path}' is missing.",
            f"add VPT's {split}.json (a mapping image path -> class id) to '{root}'.",
        )
    try:
        anno = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PaeError(
            f"FGVC split file '{path}' is not valid JSON ({exc}).", "restore the file from VPT's split release."
        ) from exc
    if not isinstance(anno, dict) or not anno:
        raise PaeError(
            f"FGVC split file '{path}' is empty or not a mapping.", "restore the file from VPT's split release."
        )
    bad = next((k for k, v in anno.items() if not isinstance(v, int) or isinstance(v, bool)), None)
    if bad is not None:
        raise PaeError(
            f"FGVC split file '{path}': entry '{bad}' has label {anno[bad]!r}, not an integer.", "fix that entry."
        )
    return anno


def read_split(root: str | Path, split: str, dataset: str | None = None) -> tuple[list[Path], list[int], list[str]]:
    root = Path(root)
    if not root.is_dir():
        raise PaeError(
            f"FGVC dataset folder '{root}' does not exist.",
            "set data.root to the folder holding train.json, val.json and test.json.",
        )
    name = (dataset or root.name).lower()
    class_ids = sorted(set(_read_json(root, "train").values()))
    to_index = {c: i for i, c in enumerate(class_ids)}
    anno = _read_json(root, split)
    unseen = next((k for k, v in anno.items() if v not in to_index), None)
    if unseen is not None:
        raise PaeError(
            f"FGVC split '{split}': '{unseen}' has class id {anno[unseen]}, which the training split never uses.",
            "use VPT's split files unchanged; every class must appear in train.json.",
        )
    image_dir = _image_dir(root, name, next(iter(anno)))
    files = [image_dir / k for k in anno]
    return files, [to_index[v] for v in anno.values()], [str(c) for c in class_ids]


def _image_dir(root: Path, name: str, first: str) -> Path:
    """VPT's image folder for a known dataset name; otherwise the candidate folder that holds the first image."""
    if name in IMAGE_DIRS:
        return root / IMAGE_DIRS[name]
    for sub in dict.fromkeys(IMAGE_DIRS.values()):
        if (root / sub / first).is_file():
            return root / sub
    raise PaeError(
        f"FGVC image '{first}' is neither under '{root}' nor its images/ or Images/ folder.",
        f"pass the dataset's name (one of {', '.join(IMAGE_DIRS)}) with --name, or set --root to the dataset folder.",
    )
