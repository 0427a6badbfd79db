"""Tables from runs' metrics.json: accuracy (one row per task, method, PAE variant; mean and sample std over
seeds) and the PAE ablation (one row per method and variant: per-task top-1, diagnostics, speed-up); CSVs
carry the MLflow run id of every cell."""
from __future__ import annotations

import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path

from ..diagnostics import speedup
from ..errors import PaeError


def load_runs(paths: list[str | Path]) -> list[dict]:
    runs = []
    for p in paths:
        try:
            runs.append(json.loads(Path(p).read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise PaeError(f"run metrics '{p}' cannot be read ({exc}).", "rerun the training job that writes it.") from exc
    return runs


def group_runs(runs: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    """Runs grouped by the values of ``keys`` (a run without PAE counts as pae 'none'), groups sorted."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        groups[tuple(run.get(k, "none") for k in keys)].append(run)
    return dict(sorted(groups.items()))


def accuracy_rows(runs: list[dict], metric: str = "final_test_top1") -> list[dict]:
    rows = []
    for (task, method, pae), rs in group_runs(runs, "task", "method", "pae").items():
        values = [r[metric] for r in rs]
        rows.append({
            "task": task, "method": method, "pae": pae, "seeds": len(rs),
            "top1_mean": statistics.fmean(values),
            "top1_std": statistics.stdev(values) if len(values) > 1 else float("nan"),
            "initial_top1": statistics.fmean(r[metric.replace("final_", "initial_")] for r in rs),
            "trainable_params": rs[0]["trainable_params"],
            "wall_time_s": statistics.fmean(r["wall_time_s"] for r in rs),
            "mlflow_run_ids": " ".join(str(r.get("mlflow_run_id")) for r in rs),
        })
    return rows


def write_csv(rows: list[dict], path: str | Path) -> None:
    """Rows of equal keys as CSV, header from the first row."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_accuracy_table(runs: list[dict], out_md: str | Path, out_csv: str | Path) -> None:
    rows = accuracy_rows(runs)
    Path(out_md).parent.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out_csv)
    lines = ["| task | method | PAE | test top-1 (%) | untrained start (%) | seeds | trainable params | wall time (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        std = "" if r["seeds"] < 2 else f" ± {r['top1_std']:.2f}"
        lines.append(f"| {r['task']} | {r['method']} | {r['pae']} | {r['top1_mean']:.2f}{std} | {r['initial_top1']:.2f} | {r['seeds']} "
                     f"| {r['trainable_params']:,} | {r['wall_time_s']:.1f} |")
    lines.append("")
    lines.append("Mean (± sample std over seeds) of the final-epoch test top-1; run ids for each cell are in the CSV.")
    Path(out_md).write_text("\n".join(lines) + "\n")


ABLATION_ORDER = ("none", "init", "koopman", "koopman+lyapunov", "init+koopman+lyapunov")
ABLATION_COLUMNS = {  # metrics.json key -> column title; means over tasks and seeds
    "convergence_epoch": "epochs to 99% of best",
    "grad_flip_rate_shallow": "grad flip rate, shallow half",
    "grad_flip_rate_deep": "grad flip rate, deep half",
    "grad_cv_deep": "grad CV, deep half",
    "koopman_spectral_radius": "rho(K)",
    "koopman_lift_norm": "||U||",
    "pae_init_s": "init time (s)",
    "wall_time_s": "wall time (s)",
}


def ablation_rows(runs: list[dict], metric: str = "final_test_top1") -> tuple[list[str], list[dict]]:
    """One row per (method, PAE variant): top-1 per task (mean over seeds), its mean over tasks, diagnostics."""
    tasks = sorted({r["task"] for r in runs})
    rows = []
    by_variant = group_runs(runs, "method", "pae")
    order = {v: i for i, v in enumerate(ABLATION_ORDER)}
    for (method, pae), rs in sorted(by_variant.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 99), kv[0][1])):
        per_task = {t: [r[metric] for r in rs if r["task"] == t] for t in tasks}
        row = {"method": method, "pae": pae, "seeds": len({r["seed"] for r in rs})}
        row.update({t: statistics.fmean(v) if v else float("nan") for t, v in per_task.items()})
        done = [row[t] for t in tasks if per_task[t]]
        row["mean"] = statistics.fmean(done) if len(done) == len(tasks) else float("nan")
        for key in ABLATION_COLUMNS:
            values = [r[key] for r in rs if isinstance(r.get(key), (int, float))]
            row[key] = statistics.fmean(values) if values else float("nan")
        row["mlflow_run_ids"] = " ".join(str(r.get("mlflow_run_id")) for r in rs)
        rows.append(row)
    base = {r["method"]: r["convergence_epoch"] for r in rows if r["pae"] == "none"}
    for row in rows:  # PAE's headline metric: the base's mean epochs to converge over this variant's (NaN stays NaN)
        row["speedup"] = speedup(base.get(row["method"], float("nan")), row["convergence_epoch"])
    return tasks, rows


def write_ablation_table(runs: list[dict], out_md: str | Path, out_csv: str | Path) -> None:
    tasks, rows = ablation_rows(runs)
    write_csv(rows, out_csv)
    head = ["method", "PAE", *tasks, "mean", *ABLATION_COLUMNS.values(), "speed-up vs none"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["method"], r["pae"], *(f"{r[t]:.2f}" for t in tasks), f"{r['mean']:.2f}",
                 *(f"{r[k]:.3g}" for k in ABLATION_COLUMNS), f"{r['speedup']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Final-epoch test top-1 (%) per task, mean over seeds; diagnostics are means over tasks and seeds "
              "(definitions: src/pae/diagnostics.py). Run ids are in the CSV."]
    Path(out_md).parent.mkdir(parents=True, exist_ok=True)
    Path(out_md).write_text("\n".join(lines) + "\n")
