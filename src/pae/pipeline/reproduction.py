"""Is the committed state true? A rerun of the default against what the repository holds: the committed dvc.lock
must record the code and params this checkout has (a stale lock hides real changes), and every regenerated
accuracy must lie within the README's tolerance of the committed one (float rounding differs across CPUs and
thread counts; see README, "Reproducing the numbers")."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    import torch

from ..errors import PaeError
from ..run_folder import PAE_INIT_S, TEST_TOP1, WALL_TIME_S

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


TOLERANCE = 2.0  # points of top-1 a default cell may move across CPUs (README, "Reproducing the numbers")


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


def stage_names(dvc_yaml: dict) -> set[str]:
    """The stages a dvc.yaml defines, ``foreach`` expanded as DVC names them (``table@accuracy``)."""
    names = set()
    for name, stage in dvc_yaml.get("stages", {}).items():
        items = stage.get("foreach")
        names |= {f"{name}@{item}" for item in items} if items is not None else {name}
    return names


def lock_changes(status: dict, lock: dict, dvc_yaml: dict, tracked: frozenset[str] = frozenset()) -> list[str]:
    """What makes a committed dvc.lock untrue before anything runs, from ``dvc status --json``: a changed command,
    a changed dependency or output that is code or params or that git tracks (the committed tables and figures), a
    stage dvc.yaml has and the lock lacks, and lock entries of stages dvc.yaml no longer has. Cached outputs are left
    out: a fresh clone cannot have them, and `make reproduce` or `make pull` brings them."""
    defined, locked = stage_names(dvc_yaml), set(lock.get("stages", {}))
    out = []
    for stage, changes in status.items():
        if stage not in locked:
            continue  # named once below
        for change in changes:
            if change == "changed command":
                out.append(f"{stage}: its command changed")
                continue
            for kind in ("changed deps", "changed outs") if isinstance(change, dict) else ():
                for path, what in change.get(kind, {}).items():
                    if path.startswith(SOURCE_PREFIXES) or path in tracked:
                        keys = f" ({', '.join(sorted(what))})" if isinstance(what, dict) else ""
                        out.append(f"{stage}: {path}{keys}")
    out += [f"{stage}: in dvc.yaml, not in dvc.lock" for stage in sorted(defined - locked)]
    out += [f"{stage}: in dvc.lock, not in dvc.yaml" for stage in sorted(locked - defined)]
    return out


def check_lock(root: Path = Path(".")) -> str:
    """Raise PaeError unless the committed dvc.lock records this checkout's code, params and stages (seconds, no
    rerun: .ci/run asks it before the tests, so a stale lock fails CI at once rather than after the default)."""
    import subprocess
    import sys

    files = {name: Path(root) / name for name in ("dvc.lock", "dvc.yaml")}
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise PaeError(f"no {missing[0]}.", "run `python -m pae.cli dvc-yaml`, then `make reproduce`.")
    done = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        raise PaeError(f"`dvc status --json` failed: {done.stderr.strip()[-500:]}", "run it and fix what it says.")
    listed = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True)
    tracked = frozenset(listed.stdout.splitlines()) if listed.returncode == 0 else frozenset()
    lock, dvc_yaml = (yaml.safe_load(path.read_text()) for path in files.values())
    changes = lock_changes(json.loads(done.stdout or "{}"), lock, dvc_yaml, tracked)
    if changes:
        raise PaeError(
            "dvc.lock records other code, params, committed outputs or stages than this checkout has:\n  "
            + "\n  ".join(changes),
            "run `make reproduce` (after `python -m pae.cli dvc-yaml` if stages were removed) and commit dvc.lock "
            "with reports/default.",
        )
    return f"ok: dvc.lock records this checkout's code, params and {len(lock['stages'])} stages"


# ---------------------------------------------------------------------------------------------- bit for bit

# JSON keys that differ on every run by design: the timings runs and MPA record, and the MLflow run id
UNREPEATABLE = frozenset({WALL_TIME_S, PAE_INIT_S, "seconds", "class_map_seconds", "mlflow_run_id"})


def _comparable(record: object, ignore: frozenset[str]) -> object:
    """A JSON record without timings, run ids and the ``ignore`` keys, at any depth."""
    if isinstance(record, dict):
        return {k: _comparable(v, ignore) for k, v in record.items() if k not in ignore and k not in UNREPEATABLE}
    if isinstance(record, list):
        return [_comparable(v, ignore) for v in record]
    return record


def _bits(t: torch.Tensor) -> torch.Tensor:
    """A tensor's bytes: equal bits, not equal values (NaN equals NaN, -0.0 differs from 0.0)."""
    import torch

    return t.reshape(-1).contiguous().view(torch.uint8)


def file_difference(a: Path, b: Path, ignore: frozenset[str] = frozenset()) -> str | None:
    """Why two files differ, or None: safetensors by their tensors bit for bit (names, dtypes, shapes, bytes; not
    the header's metadata), JSON with timings, run ids and ``ignore`` keys left out, anything else byte for byte."""
    if a.suffix == ".safetensors":
        from safetensors.torch import load_file

        ta, tb = load_file(str(a)), load_file(str(b))
        if ta.keys() != tb.keys():
            return f"tensor names differ: {sorted(ta.keys() ^ tb.keys())[:3]}"
        for name in sorted(ta):
            x, y = ta[name], tb[name]
            if x.dtype != y.dtype or x.shape != y.shape or not _bits(x).equal(_bits(y)):
                return f"tensor '{name}' differs"
        return None
    if a.suffix == ".json":
        ja, jb = (_comparable(json.loads(p.read_text()), ignore) for p in (a, b))
        if ja == jb:
            return None
        keys = sorted(k for k in ja.keys() | jb.keys() if ja.get(k) != jb.get(k)) if isinstance(ja, dict) else []
        return f"JSON differs (first keys: {keys[:3]})" if keys else "JSON differs"
    return None if a.read_bytes() == b.read_bytes() else "bytes differ"


def tree_differences(a: Path, b: Path, ignore: frozenset[str] = frozenset()) -> list[str]:
    """Every file of two result trees (or two run folders) that differs, is missing from one, or is new in it.

    Used to show that a refactor changes no number: the same params run by two versions of the code on one
    machine must give identical checkpoints, metrics, curves and MPA prompts (``pae.cli compare-results``)."""
    a, b = Path(a), Path(b)
    files = {p.relative_to(root) for root in (a, b) for p in root.rglob("*") if p.is_file()}
    out = []
    for rel in sorted(files):
        if not (a / rel).is_file() or not (b / rel).is_file():
            out.append(f"{rel}: only in {a if (a / rel).is_file() else b}")
        elif why := file_difference(a / rel, b / rel, ignore):
            out.append(f"{rel}: {why}")
    return out


def compare_results(a: Path, b: Path, ignore: frozenset[str] = frozenset()) -> str:
    """Raise PaeError naming every file that differs (``tree_differences``); return a one-line summary. A path that is
    not a folder is refused: two typos would otherwise compare as two equal empty trees."""
    for folder in (a, b):
        if not Path(folder).is_dir():
            raise PaeError(f"'{folder}' is not a folder.", "give two results trees or two run folders.")
    differences = tree_differences(a, b, ignore)
    if differences:
        raise PaeError(
            f"{len(differences)} files differ between '{a}' and '{b}':\n  " + "\n  ".join(differences),
            "if both trees ran the same params on one machine, the code changed a number.",
        )
    files = sum(1 for p in Path(a).rglob("*") if p.is_file())
    return f"identical: {files} files (tensors bit for bit; timings and MLflow run ids aside)"
