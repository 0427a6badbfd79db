"""Read backbone weights from local files and load them into a timm ViT with shape checks.

Formats: safetensors (preferred), Google's ``.npz`` (ViT-B_16.npz), and torch pickles loaded with
``weights_only=True`` (never arbitrary code). Position embeddings are resampled to the model's grid.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..errors import PaeError
from ..files import atomic_write

# Metadata keys we write into backbone safetensors files.
META_ARCH = "pae.arch"
META_POS_ANTIALIAS = "pae.pos_embed_antialias"
META_SOURCE = "pae.source"


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


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat state dict; unwraps the usual ``{'model': ...}`` containers."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any parse failure means the same thing to the user
        raise PaeError(f"backbone checkpoint '{path}' cannot be read ({type(exc).__name__}: {exc}).",
                       "re-download or re-export it; only safetensors and weights-only torch checkpoints are accepted.") from exc
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise PaeError(f"backbone checkpoint '{path}' holds no tensor state dict.", "export the model's state_dict().")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_weights(model: torch.nn.Module, path: str | Path, arch: str) -> None:
    """Load a checkpoint file into ``model`` (a timm VisionTransformer without head).

    Every key and shape must match after timm's own format conversion; the first mismatch is named.
    """
    from timm.models.vision_transformer import _load_weights, checkpoint_filter_fn

    path = Path(path)
    if not path.is_file():
        raise PaeError(f"backbone checkpoint '{path}' does not exist.",
                       "pass the path of a .safetensors/.pth/.npz file, or run `python -m pae.cli import-backbone` first.")
    try:
        meta = read_metadata(path)
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file
        raise PaeError(f"backbone checkpoint '{path}' cannot be read ({type(exc).__name__}: {exc}).",
                       "re-download or re-import it (`python -m pae.cli import-backbone`).") from exc
    if meta.get(META_ARCH) and meta[META_ARCH] != arch:
        raise PaeError(f"backbone checkpoint '{path}' was written for architecture '{meta[META_ARCH]}', not '{arch}'.",
                       f"set the backbone architecture to '{meta[META_ARCH]}' or pass a checkpoint made for '{arch}'.")
    if path.suffix == ".npz":
        try:
            _load_weights(model, str(path))  # timm's loader for Google's big_vision/jax npz format
        except Exception as exc:  # noqa: BLE001 - missing keys, wrong shapes, unreadable archive
            raise PaeError(f"npz checkpoint '{path}' does not load into '{arch}' ({type(exc).__name__}: {exc}).",
                           f"pass an npz of '{arch}' in Google's ViT layout, or set the architecture it was trained as.") from exc
        return
    state = read_state_dict(path)
    antialias = meta.get(META_POS_ANTIALIAS, "true") == "true"
    state = checkpoint_filter_fn(state, model, interpolation="bicubic", antialias=antialias)
    state = {k: v for k, v in state.items() if not k.startswith(("head.", "fc_norm.")) or k in model.state_dict()}
    check_fits(model.state_dict(), state, path, arch)
    model.load_state_dict(state, strict=True)


def check_fits(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], path: Path, arch: str) -> None:
    """Raise naming the first missing, unexpected or mis-shaped key."""
    fix = f"pass a checkpoint of '{arch}' (or set the architecture the checkpoint was trained as)."
    for key, value in expected.items():
        if key not in state:
            raise PaeError(f"backbone checkpoint '{path}' does not fit '{arch}': key '{key}' is missing.", fix)
        if tuple(state[key].shape) != tuple(value.shape):
            raise PaeError(f"backbone checkpoint '{path}' does not fit '{arch}': key '{key}' has shape "
                           f"{tuple(state[key].shape)}, the model expects {tuple(value.shape)}.", fix)
    extra = sorted(set(state) - set(expected))
    if extra:
        raise PaeError(f"backbone checkpoint '{path}' does not fit '{arch}': unexpected key '{extra[0]}' "
                       f"({len(extra)} unexpected in all).", fix)


def describe(path: str | Path) -> dict[str, str]:
    """Provenance of a backbone file for logs and MLflow tags."""
    return {"backbone_file": str(path), "backbone_sha256": sha256_of(path), **{k: v for k, v in read_metadata(path).items()}}

