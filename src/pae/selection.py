"""VPT's hyper-parameter selection: the search runs' val200 top-1 picks the (lr, weight decay) the final runs use."""

from __future__ import annotations

import math
from pathlib import Path

from .errors import PaeError
from .files import read_json, write_json
from .run_folder import read_metrics, top1_key

SELECTION_SPLIT = "val200"
SCORE = top1_key(SELECTION_SPLIT)


def select_hparams(metrics_files: list[str | Path], out: str | Path) -> dict:
    """VPT's rule: the (lr, weight decay) with the best final val200 top-1; ties go to the smaller lr, then wd."""
    runs = [read_metrics(p) for p in metrics_files]
    if not runs:
        raise PaeError("no search runs were given.", "list the tune runs' metrics.json files.")
    not_tune = [r for r in runs if r.get("protocol") != "tune" or SCORE not in r]
    if not_tune:
        r = not_tune[0]
        raise PaeError(
            f"run {r.get('task')}/{r.get('method')}/lr {r.get('lr')} was not trained on the tune "
            "protocol (train800 -> val200).",
            "select only among runs made with --protocol tune.",
        )
    scored = [r for r in runs if r[SCORE] is not None and math.isfinite(r[SCORE])]
    if not scored:
        raise PaeError(
            f"every search run ended without a finite {SELECTION_SPLIT} top-1.", "widen the search toward smaller lrs."
        )
    best = min(scored, key=lambda r: (-r[SCORE], r["lr"], r["weight_decay"]))
    record = {
        "lr": best["lr"],
        "weight_decay": best["weight_decay"],
        f"{SELECTION_SPLIT}_top1": best[SCORE],
        "mlflow_run_id": best.get("mlflow_run_id"),
        "candidates": [
            {k: r.get(k) for k in ("lr", "weight_decay", SCORE, "mlflow_run_id")}
            for r in sorted(runs, key=lambda r: (r["lr"], r["weight_decay"]))
        ],
    }
    write_json(record, out)
    return record


def read_selection(path: str | Path) -> tuple[float, float]:
    """The (lr, weight decay) a search selected (`pae.cli select`'s output), for the final runs."""
    chosen = read_json(path, "rerun the search's select job.")
    return chosen["lr"], chosen["weight_decay"]
