"""Accuracy table: one row per (task, method), mean and sample std over seeds, with the MLflow run ids."""
from __future__ import annotations

import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path

from ..errors import PaeError


def load_runs(paths: list[str | Path]) -> list[dict]:
    runs = []
    for p in paths:
        try:
            runs.append(json.loads(Path(p).read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise PaeError(f"run metrics '{p}' cannot be read ({exc}).", "rerun the training job that writes it.") from exc
    return runs


def accuracy_rows(runs: list[dict], metric: str = "final_test_top1") -> list[dict]:
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for run in runs:
        groups[(run["task"], run["method"])].append(run)
    rows = []
    for (task, method), rs in sorted(groups.items()):
        values = [r[metric] for r in rs]
        rows.append({
            "task": task, "method": method, "seeds": len(rs),
            "top1_mean": statistics.fmean(values),
            "top1_std": statistics.stdev(values) if len(values) > 1 else float("nan"),
            "initial_top1": statistics.fmean(r[metric.replace("final_", "initial_")] for r in rs),
            "trainable_params": rs[0]["trainable_params"],
            "wall_time_s": statistics.fmean(r["wall_time_s"] for r in rs),
            "mlflow_run_ids": " ".join(str(r.get("mlflow_run_id")) for r in rs),
        })
    return rows


def write_accuracy_table(runs: list[dict], out_md: str | Path, out_csv: str | Path) -> None:
    rows = accuracy_rows(runs)
    for out in (out_md, out_csv):
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out_csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| task | method | test top-1 (%) | untrained start (%) | seeds | trainable params | wall time (s) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        std = "" if r["seeds"] < 2 else f" ± {r['top1_std']:.2f}"
        lines.append(f"| {r['task']} | {r['method']} | {r['top1_mean']:.2f}{std} | {r['initial_top1']:.2f} | {r['seeds']} "
                     f"| {r['trainable_params']:,} | {r['wall_time_s']:.1f} |")
    lines.append("")
    lines.append("Mean (± sample std over seeds) of the final-epoch test top-1; run ids for each cell are in the CSV.")
    Path(out_md).write_text("\n".join(lines) + "\n")
