"""The report index opens with the experiment's scope and carries the init diagnosis; the committed default report
is such an index."""

from __future__ import annotations

import json
import re
from pathlib import Path

from pae.reports.index import index_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_the_index_opens_with_the_scope_and_inlines_the_diagnosis(tmp_path):
    (tmp_path / "init_diagnosis.md").write_text("## Epoch-0 diagnosis\n\nMPA prompts take 1% of attention.\n")
    text = index_markdown(tmp_path, "x", {"scope": "A smoke test.\n", "run": {}})
    assert text.splitlines()[:5] == ["# Report: x", "", "## Scope", "", "A smoke test."]
    diagnosis = text[text.index("## Why PAE's init starts where it does") :]
    assert "### Epoch-0 diagnosis" in diagnosis and "MPA prompts take 1% of attention." in diagnosis
    assert "![init_diagnosis](init_diagnosis.png)" in diagnosis


def test_the_committed_default_report_states_its_scope_and_the_init_diagnosis_with_numbers():
    text = (ROOT / "reports/default/README.md").read_text()
    assert text.splitlines()[2] == "## Scope" and "smoke test" in text[:600]
    diagnosis = text[text.index("## Why PAE's init starts where it does") :]
    assert re.search(r"take \d+% of \[CLS\]'s attention", diagnosis)  # measured shares, not prose
    assert (ROOT / "reports/default/init_diagnosis.json").is_file()


def test_the_reading_puts_the_ablation_cost_next_to_the_epoch_0_numbers(tmp_path):
    """Planted files: the init costs 20 points, the worst variant without it 3; the init's prompts get 1% and 3% of
    [CLS]'s attention in two layers (mean 2%), random ones 10% and 30% (20%); relative gradients with medians 0.01
    and 1.0 (a 100x smaller step)."""
    ablation = {
        "t": {
            "m": {
                "none": {"final_test_top1": 60.0},
                "init": {"final_test_top1": 40.0},
                "koopman": {"final_test_top1": 57.0},
                "none+batch_mask": {"final_test_top1": 58.5},
            }
        }
    }
    layers = [{"cls_to_prompts": c, "uniform_share": 0.25} for c in (0.01, 0.03)]
    diagnosis = {
        "task": "t",
        "method": "m",
        "mpa": {"layers": layers, "relative_grad": [0.01, 0.02, 0.005]},
        "random": {"layers": [{"cls_to_prompts": c} for c in (0.1, 0.3)], "relative_grad": [1.0, 2.0, 0.5]},
    }
    (tmp_path / "ablation.json").write_text(json.dumps(ablation))
    (tmp_path / "init_diagnosis.json").write_text(json.dumps(diagnosis))
    (tmp_path / "init_diagnosis.md").write_text("## Epoch-0 diagnosis\n")
    text = index_markdown(tmp_path, "x", {"run": {}, "backbone": {"name": "vit_b16_in21k"}})
    reading = text[text.index("### What the diagnosis says about the cost") :]
    assert "init -20.00, koopman -3.00, none+batch_mask -1.50" in reading
    assert "no variant without the init loses more than 3.00 points; the init alone loses 20.00" in reading
    assert "take 2.0% of [CLS]'s attention" in reading and "would give 25%" in reading and "get 20.0%" in reading
    assert "moves them 100x less" in reading
    assert "Backbone `vit_b16_in21k` (timm `vit_base_patch16_224.orig_in21k`)" in text
    assert "What the diagnosis says" not in index_markdown(tmp_path / "none", "x", {"run": {}})  # no files: no text
