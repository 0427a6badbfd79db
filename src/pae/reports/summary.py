"""The pipeline's table job, and the headline numbers of its runs as nested JSON, which `dvc metrics show` /
`dvc metrics diff` read."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from ..files import write_text
from ..run_folder import CONVERGENCE_EPOCH, TEST_TOP1, WALL_TIME_S
from .tables import TABLE_WRITERS, group_runs, load_runs

HEADLINE = (TEST_TOP1, CONVERGENCE_EPOCH, WALL_TIME_S)


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
    write_text(json.dumps(summary(runs), indent=2, sort_keys=True) + "\n", path)


def write_table(
    kind: str,
    metrics_files: list[str | Path],
    out_md: str | Path,
    out_csv: str | Path,
    out_json: str | Path | None = None,
) -> None:
    """The pipeline's table job: table ``kind`` from runs' metrics.json, and their headline means as JSON."""
    runs = load_runs(metrics_files)
    TABLE_WRITERS[kind](runs, out_md, out_csv)
    if out_json:
        write_summary(runs, out_json)
