"""Decoded images as uint8 tensors: decode once, cache on disk, keep on the training device.

Preprocessing and augmentation are torch ops on whole batches on the device, so the GPU never waits
for a DataLoader. Two storage layouts exist because the two protocols differ:
``square`` (VTAB: resize to SxS, no augmentation) and ``shorter`` (FGVC training: shorter side to S,
random crops taken on the device from a bottom/right zero-padded tensor with per-image sizes).
"""

from __future__ import annotations

import functools
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import PaeError
from ..files import atomic_write

CACHE_VERSION = "1"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ImageTensors:
    """One split: uint8 images (N, 3, H, W), int64 labels (N,), valid (h, w) per image if padded."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    sizes: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def balanced_subset(self, n: int) -> ImageTensors:
        """The first ``n`` images taking the classes in turn (each class's images in split order): a fixed subset,
        no random draw, with the classes as even as the split allows."""
        if not 0 < n < len(self):
            return self
        labels = self.labels.cpu()
        rank = torch.empty_like(labels)
        for c in labels.unique():
            where = (labels == c).nonzero().squeeze(1)
            rank[where] = torch.arange(len(where))
        order = torch.argsort(rank * (int(labels.max()) + 1) + labels, stable=True)[:n].sort().values
        sizes = None if self.sizes is None else self.sizes[order.to(self.sizes.device)]
        index = order.to(self.images.device)
        return ImageTensors(self.images[index], self.labels[index], self.classes, sizes)

    def to(self, device: torch.device | str) -> ImageTensors:
        sizes = None if self.sizes is None else self.sizes.to(device)
        return ImageTensors(self.images.to(device), self.labels.to(device), self.classes, sizes)


def resize_square(img: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize to size x size without antialiasing, as ``tf.image.resize`` (VTAB protocol)."""
    out = F.interpolate(img[None].float(), size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    return out[0].round().clamp(0, 255).to(torch.uint8)


def _decode(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise PaeError(
            f"image '{path}' listed in the split file does not exist.",
            "restore the file or remove its line from the split file.",
        ) from None
    except Exception as exc:
        raise PaeError(
            f"image '{path}' cannot be decoded ({type(exc).__name__}: {exc}).",
            "replace the corrupt file or remove its line from the split file.",
        ) from exc


def _square(path: Path, size: int) -> torch.Tensor:
    arr = np.asarray(_decode(path), dtype=np.uint8)
    return resize_square(torch.from_numpy(arr.copy()).permute(2, 0, 1), size)


def _shorter(path: Path, size: int, crop: int | None) -> torch.Tensor:
    """torchvision's Resize(size) on PIL (bilinear with PIL's antialias), then an optional CenterCrop(crop)."""
    im = _decode(path)
    w, h = im.size
    scale = size / min(w, h)
    nw, nh = (size, max(size, int(h * scale))) if w <= h else (max(size, int(w * scale)), size)
    im = im.resize((nw, nh), Image.BILINEAR)
    if crop is not None:
        left, top = round((nw - crop) / 2.0), round((nh - crop) / 2.0)
        im = im.crop((left, top, left + crop, top + crop))
    return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)


def decode_files(
    paths: list[Path], layout: str, size: int, crop: int | None = None, desc: str = "decode"
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Decode and resize images in parallel threads (PIL releases the GIL while decoding)."""
    from tqdm import tqdm

    if layout == "square":
        fn = lambda p: _square(p, size)  # noqa: E731
    elif layout == "shorter":
        fn = lambda p: _shorter(p, size, crop)  # noqa: E731
    else:
        raise ValueError(f"unknown layout {layout!r}")
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        decoded = list(tqdm(pool.map(fn, paths), total=len(paths), desc=desc, leave=False, disable=len(paths) < 500))
    if layout == "square" or crop is not None:
        return torch.stack(decoded), None
    sizes = torch.tensor([img.shape[1:] for img in decoded], dtype=torch.int64)
    out = torch.zeros(len(decoded), 3, int(sizes[:, 0].max()), int(sizes[:, 1].max()), dtype=torch.uint8)
    for i, img in enumerate(decoded):
        out[i, :, : img.shape[1], : img.shape[2]] = img
    return out, sizes


def fingerprint(parts: list[str], files: list[Path]) -> str:
    """Cache key: the preprocessing parameters plus each source file's path, size and mtime."""
    digest = hashlib.sha256(CACHE_VERSION.encode())
    for part in parts:
        digest.update(part.encode() + b"\0")
    for f in files:
        st = f.stat() if f.exists() else None
        digest.update(f"{f}|{st.st_size if st else -1}|{st.st_mtime_ns if st else -1}\n".encode())
    return digest.hexdigest()


def content_sha256(data: ImageTensors) -> str:
    """Hash of what the model sees (decoded pixels, labels, class names): identical data gives identical runs,
    whatever the files' paths or timestamps."""
    digest = hashlib.sha256()
    for tensor in (data.images, data.labels):
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    digest.update("\0".join(data.classes).encode())
    return digest.hexdigest()


def save_cache(path: Path, data: ImageTensors, key: str) -> None:
    tensors = {"images": data.images.contiguous(), "labels": data.labels.contiguous()}
    if data.sizes is not None:
        tensors["sizes"] = data.sizes.contiguous()
    metadata = {"fingerprint": key, "classes": "\n".join(data.classes)}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_cache(path: Path, key: str) -> ImageTensors | None:
    """The cached split, or None when absent, stale or unreadable (it is then rebuilt)."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("fingerprint") != key:
                return None
            names = set(f.keys())
            sizes = f.get_tensor("sizes") if "sizes" in names else None
            return ImageTensors(f.get_tensor("images"), f.get_tensor("labels"), meta["classes"].split("\n"), sizes)
    except Exception:
        return None


@functools.cache
def _channel_stats(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std as (1, 3, 1, 1) tensors, made once per device: building them from Python numbers every batch
    would be a host-to-device copy, which waits for the GPU."""
    return (torch.tensor(mean, device=device).view(1, 3, 1, 1), torch.tensor(std, device=device).view(1, 3, 1, 1))


def normalize(
    images: torch.Tensor, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD
) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float, scaled to [0, 1] and standardised per channel."""
    m, s = _channel_stats(mean, std, images.device)
    return (images.float() / 255.0 - m) / s


def random_crop_flip(images: torch.Tensor, sizes: torch.Tensor | None, crop: int, draws: torch.Tensor) -> torch.Tensor:
    """RandomCrop(crop) + RandomHorizontalFlip on the device, per image, inside each image's valid area.

    ``draws`` (B, 3) are uniform [0, 1) numbers already on the device (top, left, flip): training draws a whole
    epoch's at once, so a step never copies random numbers from the host (a copy that would wait for the GPU)."""
    b = images.shape[0]
    dev = images.device
    if sizes is None:  # filled on the device: a tensor from Python numbers would be a copy that waits for the GPU
        sizes = torch.empty(b, 2, dtype=torch.int64, device=dev)
        sizes[:, 0], sizes[:, 1] = images.shape[2], images.shape[3]
    rand = draws.to(dev)
    top = (rand[:, 0] * (sizes[:, 0] - crop + 1)).long()
    left = (rand[:, 1] * (sizes[:, 1] - crop + 1)).long()
    ar = torch.arange(crop, device=dev)
    rows = (top[:, None] + ar)[:, None, :, None]
    cols = left[:, None] + ar
    cols = torch.where(rand[:, 2:3] < 0.5, cols.flip(1), cols)[:, None, None, :]
    return images[
        torch.arange(b, device=dev)[:, None, None, None], torch.arange(3, device=dev)[None, :, None, None], rows, cols
    ]
