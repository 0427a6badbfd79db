"""The GPU check's planning (pure Python: planted throughput numbers -> a grid that fits the budget) and its
refusal of a missing bundle. The check itself runs end to end at CPU sizes in CI (`make device-dry-run`)."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from pae.errors import PaeError

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("device_grid", ROOT / "benchmarks" / "device_grid.py")
grid = importlib.util.module_from_spec(spec)
sys.modules["device_grid"] = grid  # dataclasses look their module up there
spec.loader.exec_module(grid)

IMAGES = {
    "cifar10": {"train800": 800, "val200": 200, "test": 2000},
    "gtsrb": {"train800": 800, "val200": 200, "test": 2000},
    "clothing10": {"train800": 800, "val200": 200, "test": 713},
}


def predicted(epochs: int, n_tasks: int, n_lrs: int, measured) -> float:
    return sum(
        grid.group_seconds(grid.GPU, measured, epochs, n_lrs, IMAGES[t], v)
        for t in grid.GPU.tasks[:n_tasks]
        for v in grid.VARIANTS
    )


@pytest.mark.parametrize("images_per_s", [2_000.0, 8_000.0, 30_000.0, 200_000.0])
def test_the_plan_fits_the_budget_and_every_larger_grid_would_not(images_per_s):
    measured = grid.Measured(images_per_s=images_per_s, compile_s=20.0, mpa_s=3.0)
    plan = grid.choose_plan(grid.GPU, measured, IMAGES, budget_s=420.0)
    chosen = (plan["epochs"], len(plan["tasks"]), len(plan["lrs"]))
    assert plan["fits"] and plan["predicted_s"] <= 420.0
    assert predicted(*chosen, measured) == pytest.approx(plan["predicted_s"], abs=0.1)
    assert plan["seeds"] == [1, 2, 3] and plan["variants"] == list(grid.VARIANTS)
    assert plan["eval_every"] == max(1, plan["epochs"] // 10)
    preferred = [(e, t, n) for e in grid.GPU.epoch_options() for t in (3, 2, 1) for n in (3, 2, 1)]
    for option in preferred[: preferred.index(chosen)]:  # more epochs, tasks or lr points: over the budget
        assert predicted(*option, measured) > 420.0, option


def test_a_fast_device_gets_the_whole_grid_and_a_slow_one_gives_up_lrs_then_tasks_then_epochs():
    fast = grid.choose_plan(grid.GPU, grid.Measured(1e6, 0.0, 0.0), IMAGES, 420.0)
    assert (fast["epochs"], fast["tasks"], fast["lrs"]) == (100, list(grid.GPU.tasks), sorted(grid.GPU.lrs))
    medium = grid.choose_plan(grid.GPU, grid.Measured(8_000.0, 5.0, 3.0), IMAGES, 420.0)
    assert (medium["epochs"], medium["tasks"], medium["lrs"]) == (100, ["cifar10"], [0.005])
    slow = grid.choose_plan(grid.GPU, grid.Measured(2_000.0, 20.0, 3.0), IMAGES, 420.0)
    assert slow["epochs"] < 100 and slow["tasks"] == ["cifar10"] and slow["fits"]


def test_where_nothing_fits_the_smallest_grid_is_planned_and_says_so():
    plan = grid.choose_plan(grid.GPU, grid.Measured(10.0, 60.0, 30.0), IMAGES, 100.0)
    assert not plan["fits"] and (plan["epochs"], plan["tasks"], len(plan["lrs"])) == (10, ["cifar10"], 1)


def test_init_variants_pay_mpa_once_per_run():
    measured = grid.Measured(8_000.0, 0.0, 5.0)
    without = grid.group_seconds(grid.GPU, measured, 100, 2, IMAGES["cifar10"], "koopman_lyapunov")
    with_init = grid.group_seconds(grid.GPU, measured, 100, 2, IMAGES["cifar10"], "all")
    assert with_init - without == pytest.approx(grid.SAFETY * 6 * 5.0)


def test_epoch_options_shrink_to_a_tenth():
    assert grid.GPU.epoch_options() == [100, 50, 20, 10]
    assert replace(grid.GPU, max_epochs=2).epoch_options() == [2, 1]


def test_a_missing_or_cut_bundle_is_refused_with_the_fix(tmp_path):
    with pytest.raises(PaeError, match="make device-bundle"):
        grid.check_bundle(tmp_path / "device-bundle")
    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "manifest.json").write_text('{"files": {"w.safetensors": {"bytes": 10, "sha256": "x"}}}')
    (bundle / "w.safetensors").write_bytes(b"12345")
    with pytest.raises(PaeError, match="not 10 bytes long"):
        grid.check_bundle(bundle)
