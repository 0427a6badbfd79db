"""Is the committed state true? A rerun of the default against what the repository holds: the committed dvc.lock
must record the code and params this checkout has (a stale lock hides real changes), and every regenerated
accuracy must lie within the README's tolerance of the committed one (float rounding differs across CPUs and
thread counts; see README, "Reproducing the numbers")."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from ..errors import PaeError
from ..run_folder import TEST_TOP1

SOURCE_PREFIXES = ("src/", "workflow/", "params/")  # dependencies that are code or params, never computed


def lock_inputs(lock: dict) -> dict[str, object]:
    """Each stage's code and params dependencies with their recorded hash or value: stage/path -> md5 or params."""
    out: dict[str, object] = {}
    for name, entry in lock.get("stages", {}).items():
        for dep in entry.get("deps", []):
            if dep["path"].startswith(SOURCE_PREFIXES):
                out[f"{name}: {dep['path']}"] = dep.get("md5") or dep.get("hash")
        for file, values in entry.get("params", {}).items():
            for key, value in values.items():
                out[f"{name}: {file}:{key}"] = value
    return out


def stale_inputs(committed: dict, current: dict) -> list[str]:
    """The code and params dependencies on which the committed lock and the current one disagree."""
    old, new = lock_inputs(committed), lock_inputs(current)
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


def accuracy_cells(table: dict) -> dict[str, float]:
    """'task / method / PAE' -> mean test top-1 of an accuracy.json (task -> method -> PAE label -> numbers)."""
    return {
        f"{task} / {method} / {pae}": float(cell[TEST_TOP1])
        for task, methods in table.items()
        for method, variants in methods.items()
        for pae, cell in variants.items()
        if cell.get(TEST_TOP1) is not None
    }


def accuracy_drift(committed: dict, current: dict, tolerance: float) -> list[str]:
    """Cells that moved by more than ``tolerance`` points, appeared or disappeared."""
    old, new = accuracy_cells(committed), accuracy_cells(current)
    problems = [
        f"{k}: only in the {'committed' if k in old else 'regenerated'} table" for k in sorted(old.keys() ^ new.keys())
    ]
    problems += [
        f"{k}: {old[k]:.2f} committed, {new[k]:.2f} now ({new[k] - old[k]:+.2f} points)"
        for k in sorted(old.keys() & new.keys())
        if abs(new[k] - old[k]) > tolerance
    ]
    return problems


def check_reproduction(
    committed_lock: Path, lock: Path, committed_accuracy: Path, accuracy: Path, tolerance: float
) -> str:
    """Raise PaeError naming every stale input and every drifted accuracy; return a one-line summary."""
    stale = stale_inputs(*(yaml.safe_load(Path(p).read_text()) for p in (committed_lock, lock)))
    drift = accuracy_drift(*(json.loads(Path(p).read_text()) for p in (committed_accuracy, accuracy)), tolerance)
    if stale:
        raise PaeError(
            "the committed dvc.lock records other code or params than this checkout has:\n  " + "\n  ".join(stale),
            "run `make reproduce` and commit dvc.lock with reports/default.",
        )
    if drift:
        raise PaeError(
            f"regenerated accuracies differ from the committed ones by more than {tolerance} points:\n  "
            + "\n  ".join(drift),
            "if the code changed the numbers, rerun `make reproduce` and commit "
            "reports/default; if not, this CPU rounds differently beyond the README's tolerance: report it.",
        )
    cells = len(accuracy_cells(json.loads(Path(accuracy).read_text())))
    return f"ok: dvc.lock matches the code and params; {cells} accuracies within {tolerance} points of the committed"
