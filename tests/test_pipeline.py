"""The real DAG end to end on a tiny params file, in a fresh git + DVC project: every declared output, numbers that
match the runs and MLflow, nothing recomputed on a rerun, and a changed param reruns only the jobs that read it."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT

BIN = Path(sys.executable).parent
EXPERIMENT = "tiny"


# (method, PAE label) of the tiny grid's runs: 3 methods x (none, PAE) with shallow taking init only, + the
# ablation's koopman variant of vpt_deep
TINY_RUNS = [
    ("linear", "none"),
    ("vpt_deep", "init+koopman+lyapunov"),
    ("vpt_deep", "koopman"),
    ("vpt_deep", "none"),
    ("vpt_shallow", "init"),
    ("vpt_shallow", "none"),
]


def tiny_params(task: Path, backbone: Path) -> dict:
    """The whole grid in miniature: 3 methods x +-PAE (shallow: init only), an ablation variant, a 2-lr search."""
    return {
        "experiment": EXPERIMENT,
        "backbone": {
            "arch": "vit_small_patch14_dinov2",
            "source": str(backbone),
            "file": "data/backbones/tiny.safetensors",
        },
        "img_size": 28,
        "tasks": {"tiny": {"kind": "vtab1k", "root": str(task), "group": "natural"}},
        "pae_variants": {
            "none": {},
            "init": {"init": True},
            "koopman": {"koopman": True},
            "all": {"init": True, "koopman": True, "lyapunov": True},
        },
        "run": {
            "tasks": ["tiny"],
            "methods": ["linear", "vpt_shallow", "vpt_deep"],
            "pae": ["none", "all"],
            "seeds": [1],
        },
        "ablation": {"methods": ["vpt_deep"], "pae": ["none", "koopman", "all"]},
        "search": {"lr": [0.01, 0.05], "weight_decay": [0.0], "seed": 1, "lrs_per_job": 2},
        "train": {
            "epochs": 2,
            "warmup_epochs": 0,
            "lr": 0.01,
            "batch_size": 16,
            "num_tokens": 2,
            "prompt_dropout": 0.0,
        },
        "pae": {
            "scorer": "ncm",
            "window": 14,
            "stride": 7,
            "init_images": 16,
            "folds": 1,
            "koopman_dim": 8,
            "koopman_weight": 0.5,
            "lyapunov_weight": 0.2,
        },
        "resources": {"train": {"threads": 1, "gpus": 0, "mem_mb": 2000}},
    }


def run(cmd: list[str], cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    if check and done.returncode:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in sorted((cwd / "logs").rglob("*.log"))[-3:])
        raise AssertionError(
            f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}\n{logs}"
        )
    return done


def make_project(root: Path, params: dict) -> dict:
    """A copy of the repository's files at ``root`` with ``params`` as its default params, under git and DVC; the
    environment to run its jobs in."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in files:
        wanted = name.startswith(("src/", "workflow/", "params/")) or "/" not in name
        if wanted and (ROOT / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, root / name)
    (root / "params" / "default.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlruns.db",
        "PYTHONPATH": str(root / "src"),
        "DVC_NO_ANALYTICS": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    run([sys.executable, "-m", "pae.cli", "dvc-yaml"], root, env)  # the stages of these params
    run(["git", "init", "-q"], root, env)
    run(["dvc", "init", "-q"], root, env)
    run(["dvc", "config", "cache.type", "hardlink,symlink"], root, env)  # as the repository's .dvc/config
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "tiny project"], root, env)
    return env


def random_backbone_file(folder: Path) -> Path:
    """A random ViT-S/14 in safetensors: the tiny projects' backbone source (nothing downloads)."""
    from pae.backbones.checkpoints import save_backbone

    from .conftest import random_vit

    weights = folder / "random_vit.safetensors"
    if not weights.is_file():
        save_backbone(random_vit("vit_small_patch14_dinov2", 518).state_dict(), weights, {})
    return weights


def tiny_project(root: Path, task: Path) -> dict:
    """The tiny params' project at ``root`` (see ``make_project``)."""
    return make_project(root, tiny_params(task, random_backbone_file(root.parent)))


@pytest.fixture(scope="module")
def project(tiny_pipeline: tuple[Path, dict, dict]) -> tuple[Path, dict]:
    """The tiny project after one full local run (conftest.py; test_slurm.py compares a SLURM run with its tables)."""
    return tiny_pipeline[:2]


def declared_outputs(root: Path, env: dict) -> list[str]:
    out = run(["snakemake", "--cores", "2", "--summary", "reproduce_all"], root, env).stdout
    return [line.split("\t")[0] for line in out.splitlines()[1:] if line.strip()]


def test_every_declared_output_exists_and_tables_hold_the_runs_numbers(project):
    root, env = project
    outputs = declared_outputs(root, env)
    assert len(outputs) > 30 and not [p for p in outputs if not (root / p).exists()]
    runs = {
        p: json.loads((root / p).read_text())
        for p in outputs
        if p.startswith(f"results/{EXPERIMENT}/runs/") and p.endswith("metrics.json")
    }
    assert sorted((r["method"], r["pae"]) for r in runs.values()) == TINY_RUNS
    summary = json.loads((root / f"reports/{EXPERIMENT}/accuracy.json").read_text())
    for r in runs.values():
        if (r["method"], r["pae"]) != ("vpt_deep", "koopman"):  # the accuracy table holds the main grid
            assert summary["tiny"][r["method"]][r["pae"]]["final_test_top1"] == pytest.approx(
                r["final_test_top1"], abs=1e-3
            )
        assert math.isfinite(r["final_test_top1"])
    with open(root / f"reports/{EXPERIMENT}/accuracy.csv") as f:
        ids = {i for row in csv.DictReader(f) for i in row["mlflow_run_ids"].split()}
    assert {r["mlflow_run_id"] for r in runs.values() if r["pae"] != "koopman"} <= ids
    # the search picked, by val200, one of its two lrs, and the final run trained with it
    selected = json.loads((root / f"results/{EXPERIMENT}/tune/tiny/vpt_deep/none/selected.json").read_text())
    assert selected["lr"] in (0.01, 0.05) and len(selected["candidates"]) == 2
    assert runs[f"results/{EXPERIMENT}/runs/tiny/vpt_deep/none/seed1/metrics.json"]["lr"] == selected["lr"]
    best = max(c["final_val200_top1"] for c in selected["candidates"])
    assert selected["val200_top1"] == best
    # the evaluate stage rebuilt each run from its checkpoint and got the recorded test top-1
    for path, r in runs.items():  # one evaluate job per task and method: results/<exp>/evaluations/<task>/<method>.json
        run_dir = str(Path(path).parent)
        task_method = run_dir.split("/runs/")[1].split("/")[:2]
        ev = json.loads((root / f"results/{EXPERIMENT}/evaluations/{'/'.join(task_method)}.json").read_text())
        assert ev[run_dir]["test_top1"] == pytest.approx(r["final_test_top1"], abs=1e-6)
    index = (root / f"reports/{EXPERIMENT}/README.md").read_text()
    for name in (
        "accuracy.md",
        "convergence.md",
        "ablation.md",
        "cost.md",
        "learning_curves.png",
        "gradient_oscillation.png",
        "shortcut_maps.png",
        "koopman_spectrum.png",
    ):
        assert name in index


def test_mlflow_holds_one_run_per_training_job_with_the_tables_numbers(project):
    import mlflow

    root, env = project
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    found = mlflow.search_runs(experiment_names=[EXPERIMENT], output_format="list")
    training = [r for r in found if r.data.tags.get("kind") != "report"]
    metrics_files = list((root / f"results/{EXPERIMENT}").glob("*/tiny/*/*/*/metrics.json"))
    assert len(metrics_files) == 6 + 6 * 2  # six final runs, and each one's search over two lrs
    by_id = {r.info.run_id: r for r in training}
    assert len(training) == len(by_id) == len(metrics_files)  # exactly one MLflow run per training job
    for path in metrics_files:
        record = json.loads(path.read_text())
        logged = by_id[record["mlflow_run_id"]]
        assert logged.info.status == "FINISHED"
        key = "final_test_top1" if record["protocol"] == "final" else "final_val200_top1"  # a search sees no test
        assert logged.data.metrics[key] == pytest.approx(record[key])
        assert logged.data.tags["git_commit"] and len(logged.data.tags["data_sha256"]) == 64
        assert len(logged.data.tags["backbone_sha256"]) == 64
    reports = [r for r in found if r.data.tags.get("kind") == "report"]
    assert len(reports) == 1
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(reports[0].info.run_id)}
    assert {"accuracy.md", "README.md", "learning_curves.png"} <= artifacts


def dry_run_jobs(root: Path, env: dict) -> dict[str, int]:
    """Job counts per rule that a dry run would execute now ({} when nothing is to be done)."""
    out = run(["snakemake", "--cores", "2", "-n", "reproduce_all"], root, env).stdout
    if "Nothing to be done" in out:
        return {}
    stats = out[out.index("Job stats:") :].splitlines()[3:]
    counts = {}
    for line in stats:
        m = re.fullmatch(r"(\w+)\s+(\d+)", line.strip())
        if not m:
            break
        counts[m.group(1)] = int(m.group(2))
    return counts


def test_a_rerun_recomputes_nothing_and_a_changed_param_only_its_users(project):
    root, env = project
    assert dry_run_jobs(root, env) == {}
    run(["dvc", "commit", "-f", "-q"], root, env)  # DVC records what Snakemake built, without rerunning it
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "dvc.lock"], root, env)
    assert "up to date" in run(["dvc", "status"], root, env).stdout
    untouched = {p: p.stat().st_mtime_ns for p in (root / f"results/{EXPERIMENT}").rglob("*.json")}

    params = yaml.safe_load((root / "params/default.yaml").read_text())
    params["pae"]["koopman_weight"] = 0.25  # read only by the runs with the Koopman regularizer
    (root / "params/default.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    jobs = dry_run_jobs(root, env)
    # vpt_deep 'all' and 'koopman': each a final run and its search (one job for both lrs) and selection; the one
    # evaluate job of tiny/vpt_deep
    assert (jobs["train"], jobs["evaluate"], jobs["tune_group0"], jobs["select_hparams"]) == (2, 1, 2, 2)
    assert not {"import_backbone", "prepare_data", "shortcuts", "init_prompts", "shortcut_maps"} & set(jobs)
    status = run(["dvc", "status"], root, env).stdout
    # DVC sees the param in VPT-deep's training stage (its runs feed the tables), not in the other methods' stages
    assert "train_tiny_vpt_deep" in status and "train_tiny_vpt_shallow" not in status
    assert "mpa_tiny" not in status and "backbone" not in status

    run(["dvc", "repro", "-q", "table@accuracy"], root, env)
    changed = {p.relative_to(root).as_posix() for p, t in untouched.items() if p.exists() and p.stat().st_mtime_ns != t}
    runs_changed = {str(Path(p).parent) for p in changed if p.startswith(f"results/{EXPERIMENT}/runs/")}
    # DVC's stage is a task and method: both Koopman runs of VPT-deep retrain (the ablation's too), nothing else
    koopman_runs = {f"results/{EXPERIMENT}/runs/tiny/vpt_deep/{v}/seed1" for v in ("all", "koopman")}
    assert runs_changed == koopman_runs
    assert not any("/mpa/" in p or "/prepared/" in p for p in changed)
    assert "table@accuracy" not in run(["dvc", "status"], root, env).stdout


def test_the_slurm_profile_plans_the_same_dag(project):
    """The cluster profile is valid for Snakemake and the official plugin, and schedules every job but local ones;
    without grouping, the search is one job per (lr, wd) point."""
    root, env = project
    out = run(
        ["snakemake", "-n", "--forceall", "--profile", "workflow/profiles/slurm", "reproduce_all"], root, env
    ).stdout
    assert re.search(r"^train\s+6$", out, re.M) and re.search(r"^tune_group0\s+6$", out, re.M)
    params = yaml.safe_load((root / "params/default.yaml").read_text())
    params["search"]["lrs_per_job"] = 0
    (root / "pointwise.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run(
        [
            "snakemake",
            "-n",
            "--forceall",
            "--profile",
            "workflow/profiles/slurm",
            "reproduce_all",
            "--configfile",
            "pointwise.yaml",
        ],
        root,
        env,
    ).stdout
    assert re.search(r"^train\s+6$", out, re.M) and re.search(r"^tune\s+12$", out, re.M)
