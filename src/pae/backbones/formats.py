"""The official release formats of our backbones, each mapped to timm's state-dict layout.

``to_timm`` recognises a file's format from its own keys, so a path is enough, and returns timm keys.
Keys a release carries beyond the encoder are dropped here by name: classifier heads, Google's
``pre_logits`` representation layer, MAE's decoder and mask token, MoCo-v3's projector, predictor and
momentum encoder, DINOv2's mask token. Anything else is passed on under its own name, so that
``checkpoints.check_fits`` names it as the first unexpected key. Swin's official layout (downsampling at
the end of a stage) is renamed by timm's own Swin filter afterwards; DINOv2's [CLS]/register layout by
timm's ``_convert_dinov2`` here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import numpy as np
import torch

from ..errors import PaeError

MOCO_ENCODER = "module.base_encoder."
MOCO_DROPPED = ("module.momentum_encoder.", "module.predictor.", MOCO_ENCODER + "head.")  # projector MLP = head
MOCO_ARCHS = ("vit_small", "vit_base", "vit_conv_small", "vit_conv_base")  # MoCo-v3's own arch names
MOCO_PRETRAIN_URL = "https://dl.fbaipublicfiles.com/moco-v3/vit-b-300ep/vit-b-300ep.pth.tar"

_NPZ_IGNORED = ("head/", "pre_logits/")  # the 21k classifier and representation layer; VPT's loader skips both
_NPZ_BLOCK: dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]] = {  # under Transformer/encoderblock_i/
    "LayerNorm_0/scale": ("norm1.weight", lambda a: a),
    "LayerNorm_0/bias": ("norm1.bias", lambda a: a),
    "LayerNorm_2/scale": ("norm2.weight", lambda a: a),
    "LayerNorm_2/bias": ("norm2.bias", lambda a: a),
    "MlpBlock_3/Dense_0/kernel": ("mlp.fc1.weight", lambda a: a.T),
    "MlpBlock_3/Dense_0/bias": ("mlp.fc1.bias", lambda a: a),
    "MlpBlock_3/Dense_1/kernel": ("mlp.fc2.weight", lambda a: a.T),
    "MlpBlock_3/Dense_1/bias": ("mlp.fc2.bias", lambda a: a),
    # JAX attention kernels are per head: out (heads, head_dim, d), q/k/v (d, heads, head_dim)
    "MultiHeadDotProductAttention_1/out/kernel": ("attn.proj.weight", lambda a: a.reshape(-1, a.shape[-1]).T),
    "MultiHeadDotProductAttention_1/out/bias": ("attn.proj.bias", lambda a: a),
}
_NPZ_TOP = {
    "cls": ("cls_token", lambda a: a),
    "embedding/kernel": ("patch_embed.proj.weight", lambda a: a.transpose(3, 2, 0, 1)),  # HWIO -> OIHW
    "embedding/bias": ("patch_embed.proj.bias", lambda a: a),
    "Transformer/posembed_input/pos_embedding": ("pos_embed", lambda a: a),
    "Transformer/encoder_norm/scale": ("norm.weight", lambda a: a),
    "Transformer/encoder_norm/bias": ("norm.bias", lambda a: a),
}


def google_npz(arrays: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Google's ViT npz (``Transformer/encoderblock_0/...``, the in21k ViT-B/16, L/16, H/14 releases) -> timm ViT."""
    src = {k: v for k, v in arrays.items() if not k.startswith(_NPZ_IGNORED)}
    out: dict[str, torch.Tensor] = {}

    def move(google: str, timm_key: str, fn: Callable[[np.ndarray], np.ndarray]) -> None:
        if google in src:
            out[timm_key] = torch.from_numpy(np.ascontiguousarray(fn(src.pop(google))))

    for google, (timm_key, fn) in _NPZ_TOP.items():
        move(google, timm_key, fn)
    blocks = sorted({int(m[1]) for k in src if (m := re.match(r"Transformer/encoderblock_(\d+)/", k))})
    for i in blocks:
        g, t = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        for name, (timm_key, fn) in _NPZ_BLOCK.items():
            move(g + name, t + timm_key, fn)
        for part, flat in (("kernel", lambda a: a.reshape(a.shape[0], -1).T), ("bias", lambda a: a.reshape(-1))):
            names = [f"{g}MultiHeadDotProductAttention_1/{n}/{part}" for n in ("query", "key", "value")]
            if all(n in src for n in names):
                out[f"{t}attn.qkv.{'weight' if part == 'kernel' else 'bias'}"] = torch.from_numpy(
                    np.concatenate([flat(src.pop(n)) for n in names])
                )
    return out | {k: torch.from_numpy(np.asarray(v)) for k, v in src.items()}  # leftovers: reported as unexpected


def is_moco_linear_probe(obj: object) -> bool:
    """MoCo-v3's ``linear-vit-*.pth.tar``: main_lincls.py's DDP state dict (``module.head`` = an ImageNet-1k head)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
        return False
    return "best_acc1" in obj and obj.get("arch") in MOCO_ARCHS and "module.head.weight" in obj["state_dict"]


def moco_v3(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """MoCo-v3 pretraining (``vit-b-300ep.pth.tar``): the base encoder; its projector, predictor and momentum copy
    dropped."""
    kept = {k: v for k, v in state.items() if not k.startswith(MOCO_DROPPED)}
    return {k.removeprefix(MOCO_ENCODER): v for k, v in kept.items()}


def mae(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """MAE pretraining (``mae_pretrain_vit_base.pth``, under ``model``): timm names; decoder and mask token dropped."""
    return {k: v for k, v in state.items() if not k.startswith("decoder_") and k != "mask_token"}


def dinov2_hub(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DINOv2 torch-hub release (``dinov2_vitb14[_reg4]_pretrain.pth``): timm's own conversion (mask token dropped;
    with registers, the [CLS] position embedding is folded into the token, as timm's no_embed_class layout needs)."""
    from timm.models.vision_transformer import _convert_dinov2

    return _convert_dinov2(dict(state), model=None)


def timm_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm keys already (our safetensors, timm hub files, Swin's official keys); a DDP ``module.`` prefix removed."""
    return {k.removeprefix("module."): v for k, v in state.items()}


CONVERTERS: dict[str, Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]] = {
    "MoCo-v3": moco_v3,
    "MAE": mae,
    "DINOv2 hub": dinov2_hub,
    "Swin official": timm_layout,
    "timm": timm_layout,
}


def detect(state: Mapping[str, torch.Tensor]) -> str:
    """The release format of a flat state dict, from its keys (a name of ``CONVERTERS``)."""
    mask = state.get("mask_token")
    if any(k.startswith(MOCO_ENCODER) for k in state):
        return "MoCo-v3"
    if any(k.startswith("decoder_") for k in state) or (mask is not None and mask.dim() == 3):
        return "MAE"  # MAE's mask token is a decoder token (1, 1, d_dec); DINOv2's is (1, d)
    if mask is not None or "register_tokens" in state:
        return "DINOv2 hub"
    if "layers.0.downsample.reduction.weight" in state:
        return "Swin official"
    return "timm"


def moco_linear_probe_error(path: object) -> PaeError:
    return PaeError(
        f"'{path}' is MoCo-v3's linear-probe checkpoint (linear-vit-*.pth.tar: the frozen encoder plus an "
        "ImageNet-1k classifier trained with labels), not its self-supervised release.",
        f"use the pretraining checkpoint vit-b-300ep.pth.tar ({MOCO_PRETRAIN_URL}), whose keys start with "
        f"'{MOCO_ENCODER}'.",
    )
