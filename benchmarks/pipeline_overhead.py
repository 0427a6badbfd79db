"""Per-job cost of the orchestration (Snakemake, DVC, MLflow) around a training job, on CPU.

    export MLFLOW_DISABLE_TELEMETRY=true DVC_NO_ANALYTICS=1 HF_HUB_OFFLINE=1   # the script also sets them
    python benchmarks/pipeline_overhead.py              # 5 repeats, 20 Snakemake jobs, 100 epochs (1-2 min, 2 cores)
    python benchmarks/pipeline_overhead.py --quick      # smoke run: 2 repeats, 4 jobs, 5 epochs
    python benchmarks/pipeline_overhead.py --repeats 9 --out /tmp/overhead.json

Every number is wall-clock seconds (time.perf_counter), median and min over --repeats, so a user can set the
orchestration's cost against a training job's minutes. Writes the table to stdout and JSON to --out.

start-up   `python -m pae.cli --help` and `check-params`: what every table, figure and report job pays before it
           does any work (no torch: the parser reads the torch-free pae.config); `import pae.loop`: what a training,
           MPA or evaluate job pays (torch, timm).
snakemake  T(1): one trivial job, i.e. Snakemake's fixed start-up per invocation; per extra job = (T(N) - T(1)) /
           (N - 1), the scheduling cost of one more job (a difference of two timings: on a busy machine it can
           come out at or below zero); `snakemake -n reproduce_all` of this repository: DAG build and params
           validation that every invocation of the real workflow does first (dry run only).
mlflow     `from mlflow import MlflowClient` in a fresh interpreter (each training job imports it once); one
           pae.tracking.Tracker run as pae.loop makes it (60 params, E epochs x 20 metrics, 3 small artifacts,
           finish) on a fresh SQLite store (first run: creates and migrates the DB) and again on the same store
           (the steady per-job cost).
dvc        in a throwaway git + DVC project with one copy stage: `dvc repro` that runs the stage, `dvc repro`
           with nothing to do, `dvc status` when up to date: the cost of driving one stage through DVC.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # snakemake and dvc of the interpreter's own environment
OFFLINE = {"MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1"}
FULL = {"repeats": 5, "jobs": 20, "epochs": 100}
QUICK = {"repeats": 2, "jobs": 4, "epochs": 5}
PARAMS, METRICS, ARTIFACTS = 60, 20, 3
TRIVIAL_SNAKEFILE = """rule all:
    input: expand("out/{{i}}.txt", i=range({jobs}))

rule touch:
    output: "out/{{i}}.txt"
    shell: "touch {{output}}"
"""
DVC_YAML = """stages:
  copy:
    cmd: cp data.txt out.txt
    deps: [data.txt]
    outs: [out.txt]
"""


def run(cmd: list[str], cwd: Path) -> None:
    """Run a command and fail loudly: timing a command that errored would time its error path."""
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} (in {cwd}) exited {done.returncode}:\n{done.stderr[-3000:]}")


def timed(call: Callable[..., object], *args: Any) -> float:
    """Wall-clock seconds of one call."""
    start = time.perf_counter()
    call(*args)
    return time.perf_counter() - start


def row(component: str, what: str, times: list[float], derived: bool = False) -> dict[str, Any]:
    """One table line; derived rows are differences of timings, not timings."""
    return {
        "component": component,
        "what": what,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "repeats": len(times),
        "derived": derived,
        "times_s": times,
    }


def startup_rows(repeats: int) -> list[dict[str, Any]]:
    """Interpreter + package start-up, paid by every pipeline job before it does anything."""
    cases = {
        "python -m pae.cli --help (the parser: no torch)": [sys.executable, "-m", "pae.cli", "--help"],
        "python -m pae.cli check-params params/default.yaml (no torch)": [
            sys.executable,
            "-m",
            "pae.cli",
            "check-params",
            "params/default.yaml",
        ],
        'python -c "import pae.loop" (what a training job imports: torch, timm)': [
            sys.executable,
            "-c",
            "import pae.loop",
        ],
    }
    return [row("start-up", what, [timed(run, cmd, ROOT) for _ in range(repeats)]) for what, cmd in cases.items()]


def trivial_workflow(folder: Path, jobs: int) -> Path:
    """A Snakefile of `jobs` independent `touch` jobs: Snakemake's own cost with no work in the jobs."""
    folder.mkdir(parents=True)
    (folder / "Snakefile").write_text(TRIVIAL_SNAKEFILE.format(jobs=jobs))
    return folder


def snakemake_time(folder: Path) -> float:
    """One full run: outputs are deleted first so that every job runs."""
    shutil.rmtree(folder / "out", ignore_errors=True)
    return timed(run, [str(BIN / "snakemake"), "--quiet", "--cores", "1", "-s", "Snakefile"], folder)


def snakemake_rows(repeats: int, jobs: int, tmp: Path) -> list[dict[str, Any]]:
    """Fixed start-up, per-job cost, and the real repository's dry run (never its real run)."""
    one, many = trivial_workflow(tmp / "snakemake-1", 1), trivial_workflow(tmp / f"snakemake-{jobs}", jobs)
    t_one, t_many = [], []
    for _ in range(repeats):  # interleaved, so a change in machine load hits both alike
        t_one.append(snakemake_time(one))
        t_many.append(snakemake_time(many))
    per_job = [(m - o) / (jobs - 1) for o, m in zip(t_one, t_many)]
    dry = [timed(run, [str(BIN / "snakemake"), "reproduce_all", "-n", "--quiet"], ROOT) for _ in range(repeats)]
    return [
        row("snakemake", "T(1): 1 trivial job, `snakemake --cores 1` (start-up + DAG + job)", t_one),
        row("snakemake", f"T({jobs}): {jobs} trivial jobs", t_many),
        row("snakemake", f"per extra job: (T({jobs}) - T(1)) / {jobs - 1}", per_job, derived=True),
        row("snakemake", "`snakemake -n reproduce_all` of this repo (DAG + params validation)", dry),
    ]


def artifact_folder(folder: Path) -> Path:
    """A few small files standing in for a run's outputs (config, metrics, log)."""
    folder.mkdir(parents=True)
    for i in range(ARTIFACTS):
        (folder / f"artifact_{i}.txt").write_text("x" * 10_000)
    return folder


@contextlib.contextmanager
def tracking_store(folder: Path) -> Iterator[None]:
    """Point MLflow at a SQLite store in `folder`; the Tracker reads the URI when it is created."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlruns.db'}"
    try:
        yield
    finally:
        if before is None:
            del os.environ["MLFLOW_TRACKING_URI"]
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before


def tracked_run(name: str, epochs: int, artifacts: Path) -> None:
    """One training job's tracking as pae.loop does it: params, one metrics batch per epoch, outputs, finish."""
    from pae.tracking import Tracker

    tracker = Tracker("pipeline-overhead", name, key=name)
    tracker.log_params({f"param_{i}": i for i in range(PARAMS)}, {"benchmark": "pipeline_overhead"})
    for epoch in range(epochs):
        tracker.log_metrics({f"metric_{i}": epoch + i / METRICS for i in range(METRICS)}, step=epoch)
    tracker.log_artifacts(artifacts)
    tracker.finish("FINISHED")


def warm_mlflow(tmp: Path, artifacts: Path) -> None:
    """Import MLflow, SQLAlchemy and alembic before timing (the import is its own row) and quiet MLflow's
    per-store 'Creating initial MLflow database tables' lines."""
    import mlflow  # noqa: F401 - configures the mlflow logger, which is lowered below

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    with tracking_store(tmp / "mlflow-warm-up"):
        tracked_run("warm-up", 1, artifacts)


def mlflow_rows(repeats: int, epochs: int, tmp: Path) -> list[dict[str, Any]]:
    """Import, first run on a fresh store (DB creation + migration), and the steady per-run cost."""
    imports = [timed(run, [sys.executable, "-c", "from mlflow import MlflowClient"], ROOT) for _ in range(repeats)]
    artifacts = artifact_folder(tmp / "artifacts")
    warm_mlflow(tmp, artifacts)
    first, steady = [], []
    for r in range(repeats):
        with tracking_store(tmp / f"mlflow-{r}"):
            first.append(timed(tracked_run, f"first-{r}", epochs, artifacts))
            steady.append(timed(tracked_run, f"next-{r}", epochs, artifacts))
    run_of = f"{PARAMS} params, {epochs} epochs x {METRICS} metrics, {ARTIFACTS} artifacts, finish"
    return [
        row("mlflow", 'python -c "from mlflow import MlflowClient"', imports),
        row("mlflow", f"first Tracker run, fresh SQLite store (creates + migrates DB): {run_of}", first),
        row("mlflow", f"Tracker run on an existing store: {run_of}", steady),
    ]


def dvc_project(folder: Path) -> Path:
    """A git + DVC project with one stage that copies a small file."""
    folder.mkdir(parents=True)
    run(["git", "init", "-q"], folder)
    run([str(BIN / "dvc"), "init", "-q"], folder)
    (folder / "data.txt").write_text("x" * 1000)
    (folder / "dvc.yaml").write_text(DVC_YAML)
    return folder


def dvc_rows(repeats: int, tmp: Path) -> list[dict[str, Any]]:
    """First repro, no-op repro and status; a fresh project per repeat so that the first repro runs the stage."""
    dvc = str(BIN / "dvc")
    first, noop, status = [], [], []
    for r in range(repeats):
        folder = dvc_project(tmp / f"dvc-{r}")
        first.append(timed(run, [dvc, "repro", "-q"], folder))
        noop.append(timed(run, [dvc, "repro", "-q"], folder))
        status.append(timed(run, [dvc, "status", "-q"], folder))  # -q: exit 1 unless up to date
    return [
        row("dvc", "`dvc repro`, first (runs the 1 copy stage, writes dvc.lock + cache)", first),
        row("dvc", "`dvc repro`, nothing to do", noop),
        row("dvc", "`dvc status`, up to date", status),
    ]


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def context() -> dict[str, Any]:
    """The machine and versions the numbers hold for; the load says how busy the machine was at the start."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_1min": os.getloadavg()[0],
        "python": platform.python_version(),
        **{name: version(name) for name in ("torch", "snakemake", "dvc", "mlflow")},
    }


def table(rows: list[dict[str, Any]], info: dict[str, Any], settings: dict[str, int]) -> str:
    lines = ["| component | what | median s | min s | repeats |", "|---|---|---:|---:|---:|"]
    lines += [
        f"| {r['component']} | {r['what']} | {r['median_s']:.4f} | {r['min_s']:.4f} | {r['repeats']} |" for r in rows
    ]
    lines.append(
        f"\n{info['cpu']}, {info['cores']} cores (1-min load {info['load_1min']:.2f} at start), "
        f"Python {info['python']}, torch {info['torch']}, snakemake {info['snakemake']}, dvc {info['dvc']}, "
        f"mlflow {info['mlflow']}; wall clock, {settings['repeats']} repeats, {settings['jobs']} Snakemake jobs, "
        f"{settings['epochs']} epochs."
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, help=f"timings per measurement (default {FULL['repeats']})")
    parser.add_argument("--jobs", type=int, help=f"N trivial Snakemake jobs, at least 2 (default {FULL['jobs']})")
    parser.add_argument("--epochs", type=int, help=f"epochs of metrics per MLflow run (default {FULL['epochs']})")
    parser.add_argument(
        "--quick", action="store_true", help="smoke-test sizes: " + ", ".join(f"{k} {v}" for k, v in QUICK.items())
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "pipeline_overhead.json")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():  # an explicit flag wins over --quick
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.repeats < 1 or args.jobs < 2 or args.epochs < 1:
        parser.error("need --repeats >= 1, --jobs >= 2, --epochs >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.update(OFFLINE)
    settings = {"repeats": args.repeats, "jobs": args.jobs, "epochs": args.epochs}
    info = context()
    with tempfile.TemporaryDirectory(prefix="pipeline-overhead-") as folder:
        tmp = Path(folder)
        rows = [
            *startup_rows(args.repeats),
            *snakemake_rows(args.repeats, args.jobs, tmp),
            *mlflow_rows(args.repeats, args.epochs, tmp),
            *dvc_rows(args.repeats, tmp),
        ]
    print(table(rows, info, settings))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": settings, "context": info, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
