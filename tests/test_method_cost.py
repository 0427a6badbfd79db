"""The parameter table: our modules reproduce the papers' reported ViT-B/16 counts; the report is written."""

from __future__ import annotations

from pae.backbones import create_backbone, freeze
from pae.reports.method_cost import PAPER_COUNTS, backbone_rows, cost_rows, paper_rows, write_cost_report

from .conftest import random_vit


def test_our_modules_reproduce_the_papers_vit_b_counts():
    rows = paper_rows(freeze(create_backbone("vit_base_patch16_224", 224)))
    assert [r["method"] for r in rows] == [m for m, *_ in PAPER_COUNTS]
    for r in rows:
        assert r["relative_difference"] < 5e-4, r  # the papers print 4 significant digits


def test_cost_report_lists_every_method_asked_for(tmp_path):
    backbone = random_vit("vit_small_patch14_dinov2", 28)
    cost = cost_rows(backbone, 28, batch=2, methods=["linear", "vpt_deep", "bpt_bilinear"], num_tokens=3, bpt_rank=4)
    assert [r["method"] for r in cost] == ["linear", "vpt_deep", "bpt_bilinear"]
    assert [r["prompt_params"] for r in cost] == [0, 12 * 3 * 384, 12 * (3 * 4 + 384 * 4)]
    assert all(r["step_time_s"] > 0 for r in cost)
    report = write_cost_report(
        [
            {
                "method": "vpt_shallow",
                "settings": "num_tokens=100",
                "ours": 76_800,
                "paper": 76_800,
                "relative_difference": 0.0,
                "source": "x",
            }
        ],
        cost,
        tmp_path,
        "test setting",
    ).read_text()
    assert "| vpt_deep | 13,824 |" in report and "test setting" in report
    assert (tmp_path / "cost.csv").read_text().count("\n") == 4


def test_vpt_deep_counts_per_backbone_are_tokens_times_each_blocks_width():
    """Written out from the architectures' published shapes: ViT-B/L/H depth x width, Swin-B's 2-2-18-2 blocks at
    128, 256, 512, 1024; the head adds (width + 1) x 100 on a ViT, (1024 + 1) x 100 on Swin-B."""
    rows = {(r["backbone"], r["method"]): r for r in backbone_rows(["vit_b16_in21k", "vit_h14_in21k", "swin_b_22k"])}
    assert rows[("vit_b16_in21k", "vpt_deep")]["prompt_params"] == 10 * 12 * 768
    assert rows[("vit_h14_in21k", "vpt_deep")]["prompt_params"] == 10 * 32 * 1280
    swin = rows[("swin_b_22k", "vpt_deep")]
    assert swin["prompt_params"] == 10 * (2 * 128 + 2 * 256 + 18 * 512 + 2 * 1024)
    assert swin["trainable_params"] == swin["prompt_params"] + 1025 * 100
    assert rows[("swin_b_22k", "vpt_shallow")]["prompt_params"] == 10 * 128
    assert rows[("swin_b_22k", "vfpt")]["prompt_params"] == swin["prompt_params"]  # Fourier prompts add no parameter
    assert ("swin_b_22k", "e2vpt") not in rows and ("vit_b16_in21k", "e2vpt") in rows  # only where a method runs
