"""Every catalogue backbone from a file in its official release layout (tiny random weights, nothing downloads):
exact round trips, one-line refusals naming the first offending key, MoCo-v3's linear-probe file refused."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import timm
import torch

from pae.backbones import backbone_family, create_backbone
from pae.backbones.catalogue import CATALOGUE, PROTOCOL_MEAN, backbone
from pae.backbones.checkpoints import load_weights, read_release
from pae.errors import PaeError

from .release_files import WRITERS, tiny, write_google_npz, write_moco_v3_linear_probe

RELEASED = [b.name for b in CATALOGUE.values() if b.release in WRITERS]


def _written(name: str, tmp_path, seed: int = 1):
    entry = backbone(name)
    write, suffix = WRITERS[entry.release]
    path = tmp_path / f"{name}.{suffix}"
    return entry, path, write(tiny(entry.arch, seed=seed), path)


def _one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text and " Fix: " in text
    return text


@pytest.mark.parametrize("name", RELEASED)
def test_release_format_round_trips_exactly(tmp_path, name):
    entry, path, expected = _written(name, tmp_path)
    assert read_release(path)[0] == entry.release
    model = tiny(entry.arch, seed=2)
    load_weights(model, path, entry.arch)
    loaded = model.state_dict()
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("name", RELEASED)
def test_wrong_architecture_is_refused_in_one_line(tmp_path, name):
    entry, path, _ = _written(name, tmp_path)
    narrow = {"embed_dim": 32} if entry.family == "swin" else {"embed_dim": 32, "num_heads": 2}
    with pytest.raises(PaeError) as excinfo:
        load_weights(tiny(entry.arch, **narrow), path, entry.arch)
    text = _one_line_error(excinfo)
    assert f"({entry.release} format) does not fit '{entry.arch}': key '" in text and "has shape" in text


def test_moco_v3_linear_probe_file_is_refused_naming_the_pretraining_file(tmp_path):
    path = tmp_path / "linear-vit-b-300ep.pth.tar"
    write_moco_v3_linear_probe(tiny("vit_base_patch16_224"), path)
    with pytest.raises(PaeError, match="linear-probe checkpoint") as excinfo:
        load_weights(tiny("vit_base_patch16_224"), path, "vit_base_patch16_224")
    assert "vit-b-300ep.pth.tar (https://dl.fbaipublicfiles.com/moco-v3/" in _one_line_error(excinfo)


def test_npz_names_its_first_unexpected_and_missing_key(tmp_path):
    source, arch = tiny("vit_base_patch16_224.orig_in21k"), "vit_base_patch16_224.orig_in21k"
    write_google_npz(source, tmp_path / "full.npz")
    arrays = dict(np.load(tmp_path / "full.npz"))
    np.savez(tmp_path / "extra.npz", **arrays, **{"Transformer/encoderblock_0/Unknown/kernel": np.zeros(3)})
    with pytest.raises(PaeError, match=r"unexpected key 'Transformer/encoderblock_0/Unknown/kernel' \(1 unexpected"):
        load_weights(tiny(arch), tmp_path / "extra.npz", arch)
    del arrays["Transformer/encoderblock_1/LayerNorm_2/scale"]
    np.savez(tmp_path / "missing.npz", **arrays)
    with pytest.raises(PaeError, match="key 'blocks.1.norm2.weight' is missing"):
        load_weights(tiny(arch), tmp_path / "missing.npz", arch)


def test_another_patch_size_is_refused_not_resampled(tmp_path):
    """Same width and depth, patch 16 into patch 14: timm's filter would resample the kernel and load it."""
    write_google_npz(tiny("vit_base_patch16_224.orig_in21k"), tmp_path / "b16.npz")
    with pytest.raises(PaeError, match=r"key 'patch_embed.proj.weight' has shape \(64, 3, 16, 16\)"):
        load_weights(tiny("vit_huge_patch14_224.orig_in21k"), tmp_path / "b16.npz", "vit_huge_patch14_224.orig_in21k")


def test_backbone_family_names_vit_and_swin():
    """One loader for both families; the family it reports is the one the catalogue files each entry under."""
    swin = create_backbone("swin_base_patch4_window7_224", 64, embed_dim=16, depths=(2, 2), num_heads=(2, 4))
    vit = create_backbone("vit_base_patch16_224", 32, depth=1, embed_dim=64, num_heads=2)
    assert (backbone_family(swin), backbone_family(vit)) == ("swin", "vit")
    for entry in CATALOGUE.values():
        assert backbone_family(tiny(entry.arch)) == entry.family, entry.name


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_catalogue_entry_agrees_with_timm(name):
    """The timm name exists (with its pretrained tag where timm has the weights) and builds the stated family;
    the pretraining normalisation is timm's, and the papers' protocol is ImageNet's (VPT feeds it to every backbone)."""
    entry = backbone(name)
    assert timm.is_model(entry.arch) and entry.img_size % (14 if "patch14" in entry.arch else 16) == 0
    if "." in entry.arch:
        cfg = timm.models.get_pretrained_cfg(entry.arch)
        assert entry.arch in timm.list_pretrained(entry.arch) and cfg.mean == entry.mean and cfg.std == entry.std
    assert (type(tiny(entry.arch)).__name__ == "SwinTransformer") == (entry.family == "swin")
    assert PROTOCOL_MEAN == (0.485, 0.456, 0.406)


def test_catalogue_imports_without_torch():
    code = (
        "import sys, pae.backbones.catalogue as c; assert c.CATALOGUE and 'torch' not in sys.modules, "
        "sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
