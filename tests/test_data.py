"""Data layer: split files, protocol preprocessing, device-side crops, caching, and every bad-input message."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pae.data import DataSpec, load_split, train_input
from pae.data.tensors import random_crop_flip
from pae.errors import PaeError


def test_vtab_mini_splits(vtab_mini, tmp_path):
    spec = DataSpec("vtab1k", str(vtab_mini / "gtsrb"))
    train = load_split(spec, "train800val200", 28, tmp_path)
    test = load_split(spec, "test", 28, tmp_path)
    assert train.images.shape == (1000, 3, 28, 28) and train.images.dtype == torch.uint8
    assert len(test) == 2000 and len(train.classes) == 43
    assert int(train.labels.min()) >= 0 and int(train.labels.max()) < 43
    lines = (vtab_mini / "gtsrb" / "train800val200.txt").read_text().split()
    assert train.labels.tolist() == [int(x) for x in lines[1::2]]


def _task(tmp_path: Path, vtab_mini: Path) -> Path:
    """A writable copy of a small slice of vtab-mini/cifar10."""
    root = tmp_path / "task"
    src = vtab_mini / "cifar10"
    lines = (src / "train800.txt").read_text().splitlines()[:20]
    for line in lines:
        rel = line.rsplit(maxsplit=1)[0]
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / rel, root / rel)
    for split in ("train800", "val200", "train800val200", "test"):
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    shutil.copy(src / "classes.txt", root / "classes.txt")
    return root


def test_cache_is_reused_and_invalidated(vtab_mini, tmp_path):
    root = _task(tmp_path, vtab_mini)
    spec = DataSpec("vtab1k", str(root))
    first = load_split(spec, "test", 28, tmp_path / "cache")
    cached = list((tmp_path / "cache").rglob("*.safetensors"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    assert torch.equal(load_split(spec, "test", 28, tmp_path / "cache").images, first.images)
    assert cached[0].stat().st_mtime_ns == stamp  # read, not rewritten
    img = root / (root / "test.txt").read_text().split()[0]
    Image.new("RGB", (32, 32), (255, 0, 0)).save(img)  # change one source image
    again = load_split(spec, "test", 28, tmp_path / "cache")
    assert not torch.equal(again.images[0], first.images[0])
    assert int(again.images[0, 0].float().mean()) >= 250  # red channel of a solid red JPEG


@pytest.mark.parametrize(
    "breakage,message",
    [
        ("no_folder", "task folder .* does not exist"),
        ("no_split", r"split file .*val200.txt' is missing"),
        ("bad_line", r"val200.txt:2: expected '<image path> <integer label>'"),
        ("bad_label", r"label 12 of .* is outside 0..9"),
        ("duplicate", r"val200.txt:2: .* is listed twice"),
        ("empty", "lists no images"),
        ("missing_image", "listed in the split file does not exist"),
        ("corrupt_image", "cannot be decoded"),
        ("no_classes_bad_other_split", r"test.txt:1: expected '<image path> <integer label>'"),
    ],
)
def test_vtab_bad_input_messages(vtab_mini, tmp_path, breakage, message):
    root = _task(tmp_path, vtab_mini)
    split = root / "val200.txt"
    lines = split.read_text().splitlines()
    first_image = root / lines[0].rsplit(maxsplit=1)[0]
    if breakage == "no_folder":
        shutil.rmtree(root)
    elif breakage == "no_split":
        split.unlink()
    elif breakage == "bad_line":
        split.write_text(lines[0] + "\nimages/cat/0001.jpg three\n")
    elif breakage == "bad_label":
        split.write_text(lines[0].rsplit(maxsplit=1)[0] + " 12\n")
    elif breakage == "duplicate":
        split.write_text(lines[0] + "\n" + lines[0] + "\n")
    elif breakage == "empty":
        split.write_text("\n")
    elif breakage == "missing_image":
        first_image.unlink()
    elif breakage == "corrupt_image":
        first_image.write_bytes(b"not a jpeg")
    elif breakage == "no_classes_bad_other_split":  # class count then comes from every split's labels
        (root / "classes.txt").unlink()
        (root / "test.txt").write_text("images/cat/0001.jpg\n")
    with pytest.raises(PaeError, match=message) as info:
        load_split(DataSpec("vtab1k", str(root)), "val200", 28, tmp_path / "cache")
    assert "Fix:" in str(info.value)
    if breakage in ("missing_image", "corrupt_image"):
        assert first_image.name in str(info.value)
    assert not list((tmp_path / "cache").rglob("*.safetensors"))  # nothing half-written


def _fgvc(tmp_path: Path) -> Path:
    """A tiny FGVC dataset in VPT's layout (CUB: images/ sub-folder; json: path -> class id)."""
    root = tmp_path / "cub"
    rng = np.random.default_rng(0)
    anno: dict[str, dict[str, int]] = {"train": {}, "val": {}, "test": {}}
    for i, (w, h) in enumerate([(40, 30), (30, 50), (64, 32), (32, 32), (45, 60), (50, 40)]):
        rel = f"{i:03d}.c/img{i}.png"
        (root / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "images" / rel)
        anno["train" if i < 4 else ("val" if i == 4 else "test")][rel] = [3, 7][i % 2]
    for split, entries in anno.items():
        (root / f"{split}.json").write_text(json.dumps(entries))
    return root


def test_fgvc_protocol_shapes_and_labels(tmp_path):
    root = _fgvc(tmp_path)
    spec = DataSpec("fgvc", str(root))
    train = load_split(spec, "train", 28, tmp_path / "cache", for_training=True)
    test = load_split(spec, "test", 28, tmp_path / "cache")
    assert train.classes == ["3", "7"] and train.labels.tolist() == [0, 1, 0, 1]
    short = round(28 * 256 / 224)  # Resize(256) scaled to 28 px
    assert train.sizes is not None and bool((train.sizes.min(dim=1).values == short).all())
    assert tuple(train.sizes[2].tolist()) == (short, 2 * short)  # 64x32 keeps its aspect
    assert test.images.shape == (1, 3, 28, 28)  # Resize + CenterCrop at decode time
    batch = train_input(spec, train.images, train.sizes, 28, torch.rand(4, 3))
    assert batch.shape == (4, 3, 28, 28) and batch.dtype == torch.float32


def test_fgvc_bad_input(tmp_path):
    root = _fgvc(tmp_path)
    renamed = root.rename(tmp_path / "CUB_200_2011")  # unknown name: the images/ folder is found by looking
    assert len(load_split(DataSpec("fgvc", str(renamed)), "test", 28, tmp_path)) == 1
    shutil.move(renamed / "images", tmp_path / "elsewhere")
    with pytest.raises(PaeError, match="pass the dataset's name .* with --name"):
        load_split(DataSpec("fgvc", str(renamed)), "test", 28, tmp_path)
    root = renamed
    (root / "test.json").write_text(json.dumps({"x.png": 99}))
    with pytest.raises(PaeError, match="class id 99, which the training split never uses"):
        load_split(DataSpec("fgvc", str(root)), "test", 28, tmp_path)
    (root / "val.json").write_text("{broken")
    with pytest.raises(PaeError, match="is not valid JSON"):
        load_split(DataSpec("fgvc", str(root)), "val", 28, tmp_path)


def test_random_crop_flip_takes_valid_windows():
    """Pixels encode their own (row, col): every crop must be a contiguous window inside the valid area."""
    h, w, crop = 12, 20, 8
    rows = torch.arange(h)[:, None].expand(h, w)
    cols = torch.arange(w)[None, :].expand(h, w)
    img = torch.stack([rows, cols, torch.zeros(h, w, dtype=torch.long)]).to(torch.uint8)
    images = img[None].repeat(64, 1, 1, 1)
    sizes = torch.tensor([[h, w]] * 32 + [[10, 9]] * 32)  # second half: only 10x9 is real image
    out = random_crop_flip(images, sizes, crop, torch.rand(64, 3, generator=torch.Generator().manual_seed(0))).long()
    flips = 0
    for i in range(64):
        r, c = out[i, 0], out[i, 1]
        assert bool((r == r[:, :1]).all()) and torch.equal(r[:, 0], r[0, 0] + torch.arange(crop))
        row = c[0]
        flipped = bool(row[0] > row[-1])
        flips += flipped
        assert torch.equal(row.flip(0) if flipped else row, row.min() + torch.arange(crop))
        assert r.max() < sizes[i, 0] and c.max() < sizes[i, 1]
    assert 10 < flips < 54  # about half are flipped


def test_digits_splits_are_disjoint_and_stratified(tmp_path):
    spec = DataSpec("digits")
    parts = {s: load_split(spec, s, 14, tmp_path) for s in ("train800", "val200", "test")}
    assert [len(parts[s]) for s in parts] == [800, 200, 797]
    assert torch.bincount(parts["train800"].labels).tolist() == [80] * 10
    trainval = load_split(spec, "train800val200", 14, tmp_path)
    assert len(trainval) == 1000


CACHED_DIGITS = """
import sys
from pae.data import DataSpec, load_split
test = load_split(DataSpec("digits"), "test", 14, sys.argv[1])
print(len(test), int(test.labels.sum()), "sklearn" in sys.modules)
"""


def test_a_cached_digits_split_loads_without_scikit_learn_and_is_rebuilt_when_its_source_changes(tmp_path, monkeypatch):
    """Every job loads its data: a current digits cache is read without importing scikit-learn (about 2 s a job);
    the split's labels are sklearn's held-out images, drawn as the split rule (written out below) draws them."""
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    from pae.data import digits

    expected = load_split(DataSpec("digits"), "test", 14, tmp_path)  # builds the cache (imports sklearn)
    scans = load_digits()
    hold_out = sorted(set(range(len(scans.target))) - set(digits_train_indices(scans.target)))
    assert expected.labels.tolist() == scans.target[hold_out].tolist()
    done = subprocess.run([sys.executable, "-c", CACHED_DIGITS, str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [str(len(expected)), str(int(expected.labels.sum())), "False"]

    cached = next(tmp_path.rglob("test-*.safetensors"))
    stamp = cached.stat().st_mtime_ns
    digits.source_key.cache_clear()
    monkeypatch.setattr(digits, "source_key", lambda: "another split rule")
    assert torch.equal(load_split(DataSpec("digits"), "test", 14, tmp_path).images, expected.images)
    assert cached.stat().st_mtime_ns != stamp  # rebuilt, not trusted


def digits_train_indices(labels: np.ndarray) -> list[int]:
    """The train800val200 images as the split rule draws them (80 + 20 per class, seed 0), written out."""
    rng, out = np.random.default_rng(0), []
    for c in range(10):
        out += rng.permutation(np.flatnonzero(labels == c)).tolist()[:100]
    return out


def test_unknown_kind_and_split():
    with pytest.raises(PaeError, match="unknown dataset kind 'imagenet'"):
        DataSpec("imagenet", "/x")
    with pytest.raises(PaeError, match="unknown digits split 'train'"):
        load_split(DataSpec("digits"), "train", 14, "/tmp")


def test_fgvc_eval_preprocessing_equals_torchvision(tmp_path):
    """Resize(256) + CenterCrop(224) as VPT runs them with torchvision on PIL images."""
    from torchvision import transforms

    root = _fgvc(tmp_path)
    ours = load_split(DataSpec("fgvc", str(root)), "test", 224, tmp_path / "cache").images[0]
    rel = next(iter(json.loads((root / "test.json").read_text())))
    ref = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.PILToTensor()])
    assert torch.equal(ours, ref(Image.open(root / "images" / rel).convert("RGB")))


def test_a_balanced_subset_takes_the_classes_in_turn_in_split_order():
    from pae.data.tensors import ImageTensors

    labels = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 2, 2])
    data = ImageTensors(torch.arange(10).view(10, 1, 1, 1).to(torch.uint8), labels, ["a", "b", "c"])
    subset = data.balanced_subset(6)  # two of each class, each class's first images
    assert subset.images.flatten().tolist() == [0, 1, 6, 7, 8, 9] and subset.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert data.balanced_subset(8).labels.bincount().tolist() == [4, 2, 2]  # the small classes run out first
    assert data.balanced_subset(0) is data and data.balanced_subset(10) is data  # 0 or all: the split itself
