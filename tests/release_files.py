"""Writers of random-weight checkpoints in each official release layout, by hand, from a (tiny) timm model.

Each writer returns the timm state dict that loading the file must reproduce exactly: the model's own tensors,
except where the release stores a tensor differently (DINOv2 with registers keeps the [CLS] position apart).
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

TINY_VIT = {"depth": 2, "embed_dim": 64, "num_heads": 2}
TINY_SWIN = {"embed_dim": 16, "depths": (2, 2), "num_heads": (2, 4), "window_size": 4}


def tiny(arch: str, seed: int = 0, **overrides: object) -> nn.Module:
    """The real timm architecture, small (ViT: depth 2, d 64; Swin: 2 stages, d 16), every tensor random."""
    from pae.backbones import create_backbone, freeze

    torch.manual_seed(seed)
    swin = arch.startswith("swin")
    model = create_backbone(
        arch, 64 if swin else 28 if "patch14" in arch else 32, **(TINY_SWIN if swin else TINY_VIT) | overrides
    )
    for p in model.parameters():
        p.data.normal_(0.0, 0.5)
    return freeze(model)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def write_google_npz(model: nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """Google's original ViT npz layout (``ViT-B_16.npz``): JAX kernels (in, out), per-head attention, a 21k head."""
    d, heads = model.embed_dim, model.blocks[0].attn.num_heads
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    w = {
        "embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),  # OIHW -> HWIO
        "embedding/bias": sd["patch_embed.proj.bias"],
        "cls": sd["cls_token"],
        "Transformer/posembed_input/pos_embedding": sd["pos_embed"],
        "Transformer/encoder_norm/scale": sd["norm.weight"],
        "Transformer/encoder_norm/bias": sd["norm.bias"],
        "pre_logits/kernel": np.ones((d, d), np.float32),
        "pre_logits/bias": np.zeros(d, np.float32),
        "head/kernel": np.zeros((d, 11), np.float32),
        "head/bias": np.zeros(11, np.float32),
    }
    for i in range(len(model.blocks)):
        b, g = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        for j, name in enumerate(("query", "key", "value")):
            w[f"{g}MultiHeadDotProductAttention_1/{name}/kernel"] = sd[b + "attn.qkv.weight"][
                j * d : (j + 1) * d
            ].T.reshape(d, heads, -1)
            w[f"{g}MultiHeadDotProductAttention_1/{name}/bias"] = sd[b + "attn.qkv.bias"][j * d : (j + 1) * d].reshape(
                heads, -1
            )
        w[f"{g}MultiHeadDotProductAttention_1/out/kernel"] = sd[b + "attn.proj.weight"].T.reshape(heads, -1, d)
        w[f"{g}MultiHeadDotProductAttention_1/out/bias"] = sd[b + "attn.proj.bias"]
        for ln, ours in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            w[f"{g}{ln}/scale"], w[f"{g}{ln}/bias"] = sd[b + ours + ".weight"], sd[b + ours + ".bias"]
        for k in (0, 1):
            w[f"{g}MlpBlock_3/Dense_{k}/kernel"] = sd[f"{b}mlp.fc{k + 1}.weight"].T
            w[f"{g}MlpBlock_3/Dense_{k}/bias"] = sd[f"{b}mlp.fc{k + 1}.bias"]
    np.savez(path, **w)
    return _state(model)


def write_mae(model: nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """MAE's ``mae_pretrain_vit_base.pth``: timm-named encoder under ``model`` plus decoder keys and the mask token."""
    d, dd, n = model.embed_dim, 32, model.pos_embed.shape[1]
    decoder = {
        "mask_token": torch.randn(1, 1, dd),
        "decoder_embed.weight": torch.randn(dd, d),
        "decoder_embed.bias": torch.randn(dd),
        "decoder_pos_embed": torch.randn(1, n, dd),
        "decoder_blocks.0.norm1.weight": torch.randn(dd),
        "decoder_blocks.0.attn.qkv.weight": torch.randn(3 * dd, dd),
        "decoder_norm.weight": torch.randn(dd),
        "decoder_pred.weight": torch.randn(16 * 16 * 3, dd),
    }
    torch.save({"model": _state(model) | decoder}, path)
    return _state(model)


def _mlp(prefix: str, dims: tuple[int, ...], last_bn: bool) -> dict[str, torch.Tensor]:
    """MoCo-v3's _build_mlp keys: Linear (no bias) / BatchNorm1d / ReLU, the last BN without affine."""
    out, layer = {}, 0
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        out[f"{prefix}{layer}.weight"] = torch.randn(b, a)
        last = i == len(dims) - 2
        if not last or last_bn:
            bn = f"{prefix}{layer + 1}."
            if not last:
                out[bn + "weight"], out[bn + "bias"] = torch.randn(b), torch.randn(b)
            out[bn + "running_mean"], out[bn + "running_var"] = torch.randn(b), torch.rand(b)
            out[bn + "num_batches_tracked"] = torch.tensor(1000)
        layer += 3
    return out


def write_moco_v3(model: nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """MoCo-v3's ``vit-b-300ep.pth.tar``: base encoder (its projector MLP as ``head``), momentum encoder, predictor."""
    d = model.embed_dim
    encoder = _state(model) | _mlp("head.", (d, 48, 48, 16), last_bn=True)
    state = {f"module.base_encoder.{k}": v for k, v in encoder.items()}
    state |= {f"module.momentum_encoder.{k}": v.clone() for k, v in encoder.items()}
    state |= _mlp("module.predictor.", (16, 48, 16), last_bn=True)
    torch.save(
        {
            "epoch": 300,
            "arch": "vit_base",
            "state_dict": state,
            "optimizer": {"state": {}, "param_groups": [{"lr": 1.5e-4, "params": [0]}]},
            "scaler": {"scale": 65536.0, "growth_factor": 2.0},
        },
        path,
    )
    return _state(model)


def write_moco_v3_linear_probe(model: nn.Module, path: Path) -> None:
    """MoCo-v3's ``linear-vit-b-300ep.pth.tar`` (main_lincls.py): the DDP state dict with an ImageNet-1k head."""
    state = {f"module.{k}": v for k, v in _state(model).items()}
    state |= {"module.head.weight": torch.randn(1000, model.embed_dim), "module.head.bias": torch.zeros(1000)}
    torch.save(
        {
            "epoch": 90,
            "arch": "vit_base",
            "state_dict": state,
            "best_acc1": torch.tensor(76.7),
            "optimizer": {"state": {}, "param_groups": []},
        },
        path,
    )


def write_dinov2_hub(model: nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """DINOv2's torch-hub ``.pth`` (a flat state dict): a mask token; with registers, ``register_tokens`` and a
    position embedding that still covers [CLS] (timm folds that position into the token)."""
    hub, expected = _state(model), _state(model)
    if getattr(model, "num_reg_tokens", 0):
        cls, pos0 = torch.randn(1, 1, model.embed_dim), torch.randn(1, 1, model.embed_dim)
        hub["register_tokens"] = hub.pop("reg_token")
        hub["cls_token"], hub["pos_embed"] = cls, torch.cat([pos0, hub["pos_embed"]], dim=1)
        expected["cls_token"] = cls + pos0[:, 0]
    hub["mask_token"] = torch.zeros(1, model.embed_dim)
    torch.save(hub, path)
    return expected


def write_swin_official(model: nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """Microsoft's Swin ``.pth`` (``model``): downsampling at the end of stage i (timm: start of i+1), the relative
    position indices and shift masks as buffers, a 22k-style head ``head.weight``."""
    official = {
        re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m[1]) - 1}.downsample", k): v
        for k, v in _state(model).items()
    }
    for name, block in model.named_modules():
        if hasattr(block, "attn_mask"):
            official[f"{name}.attn.relative_position_index"] = block.attn.relative_position_index.clone()
            if block.attn_mask is not None:
                official[f"{name}.attn_mask"] = block.attn_mask.clone()
    official |= {"head.weight": torch.randn(11, model.num_features), "head.bias": torch.randn(11)}
    torch.save({"model": official}, path)
    return _state(model)


WRITERS = {
    "Google npz": (write_google_npz, "npz"),
    "MAE": (write_mae, "pth"),
    "MoCo-v3": (write_moco_v3, "pth.tar"),
    "DINOv2 hub": (write_dinov2_hub, "pth"),
    "Swin official": (write_swin_official, "pth"),
}
