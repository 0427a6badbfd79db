"""Read backbone weights from local files and load them into a timm ViT or Swin with key and shape checks.

Files: safetensors (preferred), Google's ``.npz``, and torch pickles loaded with ``weights_only=True`` (never
arbitrary code); their release layouts are mapped in ``formats.py``. Position embeddings are resampled to the
model's grid.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import PaeError
from ..files import atomic_write
from . import formats

# Metadata keys we write into backbone safetensors files.
META_ARCH = "pae.arch"
META_POS_ANTIALIAS = "pae.pos_embed_antialias"
META_SOURCE = "pae.source"
META_DTYPE = "pae.dtype"  # written by write_half only: other files hold fp32
META_HALF_OF = "pae.half_of"  # the sha256 of the fp32 file a half copy was made from


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_metadata(path: str | Path) -> dict[str, str]:
    """Metadata of a safetensors file ({} for other formats)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return {}
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def save_backbone(state_dict: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str]) -> None:
    """Write a backbone state dict as safetensors, atomically (temp file + rename)."""
    tensors = {k: v.contiguous() for k, v in state_dict.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def read_checkpoint(path: Path) -> object:
    """What a checkpoint file holds: a dict of numpy arrays (npz), of tensors (safetensors), or a weights-only
    pickle."""
    try:
        if path.suffix == ".npz":
            with np.load(path) as archive:
                return {k: archive[k] for k in archive.files}
        if path.suffix == ".safetensors":
            return load_file(str(path))
        # MAE's training checkpoints also pickle their argparse.Namespace; it is a plain attribute bag
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # any parse failure means the same thing to the user
        raise PaeError(
            f"backbone checkpoint '{path}' cannot be read ({type(exc).__name__}: {exc}).",
            "re-download or re-export it; only npz, safetensors and weights-only torch checkpoints are accepted.",
        ) from exc


def read_release(path: str | Path) -> tuple[str, dict[str, torch.Tensor]]:
    """(release format, state dict in timm's layout) of a checkpoint file; unwraps ``{'model': ...}``-style
    containers."""
    path = Path(path)
    obj = read_checkpoint(path)
    if path.suffix == ".npz":
        return "Google npz", formats.google_npz(obj)
    if formats.is_moco_linear_probe(obj):
        raise formats.moco_linear_probe_error(path)
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise PaeError(f"backbone checkpoint '{path}' holds no tensor state dict.", "export the model's state_dict().")
    name = formats.detect(obj)
    return name, formats.CONVERTERS[name](obj)


def load_weights(model: nn.Module, path: str | Path, arch: str) -> None:
    """Load a checkpoint file in any supported release format into ``model`` (a headless timm ViT or Swin).

    Every key and shape must match after the format's mapping and timm's own filter (position embeddings and
    Swin's relative position tables resampled to the model); the first mismatch is named.
    """
    path = Path(path)
    if not path.is_file():
        raise PaeError(
            f"backbone checkpoint '{path}' does not exist.",
            "pass the path of a .safetensors/.pth/.npz file, or run `python -m pae.cli import-backbone` first.",
        )
    try:
        meta = read_metadata(path)
    except Exception as exc:  # a truncated or foreign file
        raise PaeError(
            f"backbone checkpoint '{path}' cannot be read ({type(exc).__name__}: {exc}).",
            "re-download or re-import it (`python -m pae.cli import-backbone`).",
        ) from exc
    if meta.get(META_ARCH) and meta[META_ARCH] != arch:
        raise PaeError(
            f"backbone checkpoint '{path}' was written for architecture '{meta[META_ARCH]}', not '{arch}'.",
            f"set the backbone architecture to '{meta[META_ARCH]}' or pass a checkpoint made for '{arch}'.",
        )
    release, state = read_release(path)
    expected = model.state_dict()
    state = cast_like(state, expected)
    patch = "patch_embed.proj.weight"  # timm would resample another patch size: that is another model, refuse it
    if patch in state and patch in expected and state[patch].shape[-2:] != expected[patch].shape[-2:]:
        raise fit_error(path, arch, release, shape_problem(patch, state[patch], expected[patch]))
    try:
        state = timm_filter(model, state, antialias=meta.get(META_POS_ANTIALIAS, "true") == "true")
    except Exception as exc:  # timm's resampling meets a foreign layout
        raise fit_error(path, arch, release, f"timm's filter failed ({type(exc).__name__}: {exc})") from exc
    state = {k: v for k, v in state.items() if not k.startswith(("head.", "fc_norm.")) or k in expected}
    check_fits(expected, state, path, arch, release)
    model.load_state_dict(state, strict=True)


def cast_like(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating tensors in the model's dtype before anything else touches them: an fp16 file (the device bundle
    halves its bytes) then loads into an fp32 model, and timm resamples position embeddings in fp32."""
    return {k: v.to(expected[k].dtype) if k in expected and v.is_floating_point() else v for k, v in state.items()}


def write_half(src: str | Path, dst: str | Path) -> Path:
    """A copy of a safetensors backbone with its floating tensors in fp16 and its metadata kept: half the bytes,
    for a machine that takes few (the device bundle); ``load_weights`` casts them back to the model's dtype."""
    tensors = load_file(str(src))
    half = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    save_backbone(half, dst, {**read_metadata(src), META_DTYPE: "float16", META_HALF_OF: sha256_of(src)})
    return Path(dst)


def timm_filter(model: nn.Module, state: dict[str, torch.Tensor], antialias: bool) -> dict[str, torch.Tensor]:
    """timm's checkpoint filter for the model's family: resamples position tables, renames Swin's official layout."""
    from timm.models import swin_transformer, vision_transformer

    if isinstance(model, swin_transformer.SwinTransformer):
        return swin_transformer.checkpoint_filter_fn(state, model)
    return vision_transformer.checkpoint_filter_fn(state, model, interpolation="bicubic", antialias=antialias)


def fit_error(path: Path, arch: str, release: str, problem: str) -> PaeError:
    return PaeError(
        f"backbone checkpoint '{path}' ({release} format) does not fit '{arch}': {problem}.",
        f"pass a checkpoint of '{arch}' (or set the architecture the checkpoint was trained as).",
    )


def shape_problem(key: str, got: torch.Tensor, want: torch.Tensor) -> str:
    return f"key '{key}' has shape {tuple(got.shape)}, the model expects {tuple(want.shape)}"


def check_fits(
    expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], path: Path, arch: str, release: str = "timm"
) -> None:
    """Raise naming the first missing, unexpected or mis-shaped key (timm names, after the format's mapping)."""
    for key, value in expected.items():
        if key not in state:
            raise fit_error(path, arch, release, f"key '{key}' is missing")
        if tuple(state[key].shape) != tuple(value.shape):
            raise fit_error(path, arch, release, shape_problem(key, state[key], value))
    extra = sorted(set(state) - set(expected))
    if extra:
        raise fit_error(path, arch, release, f"unexpected key '{extra[0]}' ({len(extra)} unexpected in all)")


def describe(path: str | Path) -> dict[str, str]:
    """Provenance of a backbone file for logs and MLflow tags."""
    return {
        "backbone_file": str(path),
        "backbone_sha256": sha256_of(path),
        **{k: v for k, v in read_metadata(path).items()},
    }
