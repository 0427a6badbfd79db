"""Headline numbers of a set of runs as nested JSON, which `dvc metrics show` / `dvc metrics diff` read."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from .tables import group_runs

HEADLINE = ("final_test_top1", "convergence_epoch", "wall_time_s")


def summary(runs: list[dict]) -> dict:
    """{task: {method: {pae: {metric: mean over seeds}}}}; a metric undefined for every seed is omitted."""
    out: dict = {}
    for (task, method, pae), rs in group_runs(runs, "task", "method", "pae").items():
        means = {}
        for key in HEADLINE:
            values = [r[key] for r in rs if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
            if values:
                means[key] = round(statistics.fmean(values), 4)
        out.setdefault(task, {}).setdefault(method, {})[pae] = {**means, "seeds": len(rs)}
    return out


def write_summary(runs: list[dict], path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(summary(runs), indent=2, sort_keys=True) + "\n")
