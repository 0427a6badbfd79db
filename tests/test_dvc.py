"""DVC versions the experiment: a finished tiny project pushed to a local-folder remote and pulled into a fresh
clone needs no training, for Snakemake nor for `dvc repro table@accuracy`; the generated dvc.yaml is current; an
edit retrains only what it can change (the code inputs of pae.pipeline.code_inputs)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import yaml

from .test_pipeline import EXPERIMENT, ROOT, dry_run_jobs, run

REPORT_STAGES = ("table", "figure", "shortcut_maps", "init_diagnosis", "report")
TRAINING = {"train", "tune", "tune_group0", "evaluate", "shortcuts", "init_prompts", "prepare_data", "import_backbone"}


@pytest.fixture(scope="module")
def finished(tiny_pipeline: tuple[Path, dict, dict], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A copy of the tiny project after its full run (other tests change the original), as `make reproduce` leaves
    it: DVC has committed the outputs, and git holds dvc.lock and the reports."""
    source, env, _ = tiny_pipeline
    root = tmp_path_factory.mktemp("dvc") / "project"
    shutil.copytree(source, root, symlinks=True)
    env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlruns.db", "PYTHONPATH": str(root / "src")}
    run(["dvc", "commit", "-f", "-q"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "the finished experiment"], root, env)
    return root, env


def test_the_committed_dvc_yaml_is_what_the_params_and_code_generate(tmp_path):
    out = tmp_path / "dvc.yaml"
    run([sys.executable, "-m", "pae.cli", "dvc-yaml", "--out", str(out)], ROOT, {})
    assert out.read_text() == (ROOT / "dvc.yaml").read_text(), "regenerate it: python -m pae.cli dvc-yaml"


@pytest.mark.slow
def test_push_then_pull_into_a_fresh_clone_restores_the_experiment_without_training(finished, tmp_path):
    root, env = finished
    assert "up to date" in run(["dvc", "status"], root, env).stdout  # `make reproduce` leaves DVC clean
    remote = tmp_path / "remote"
    run(["dvc", "remote", "add", "-d", "store", str(remote)], root, env)
    run(["git", "commit", "-qam", "remote"], root, env)
    run(["dvc", "push", "-q"], root, env)

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(root), str(clone)], tmp_path, env)
    env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{clone}/mlruns.db", "PYTHONPATH": str(clone / "src")}
    # Before the pull a clone lacks only the cached outputs; its code and params are what dvc.lock records.
    status = yaml.safe_load(run(["dvc", "status", "--json"], clone, env).stdout)
    changes = [c for entries in status.values() for entry in entries for c in entry.get("changed deps", {})]
    assert status and not [c for c in changes if c.startswith(("src/", "params/", "workflow/"))], status

    run(["dvc", "pull", "-q"], clone, env)  # `make pull`: the pull, then Snakemake marks the pulled files current
    run(["snakemake", "--cores", "1", "--touch", "reproduce_all"], clone, env)  # (checkout gave them new mtimes)
    assert (clone / f"results/{EXPERIMENT}/runs/tiny/vpt_deep/all/seed1/checkpoint.safetensors").is_file()
    assert "up to date" in run(["dvc", "status"], clone, env).stdout
    assert not TRAINING & set(dry_run_jobs(clone, env))  # at most tables and figures, never a job that trains

    metrics = sorted((clone / f"results/{EXPERIMENT}").rglob("metrics.json"))
    metrics += sorted((clone / f"results/{EXPERIMENT}").rglob("checkpoint.safetensors"))
    before = {p: p.stat().st_mtime_ns for p in metrics}
    (clone / f"reports/{EXPERIMENT}/accuracy.md").unlink()
    done = run(["dvc", "repro", "table@accuracy"], clone, env)
    assert (clone / f"reports/{EXPERIMENT}/accuracy.md").is_file()
    assert {p: p.stat().st_mtime_ns for p in metrics} == before, done.stdout  # no run was retrained
    assert all(log.stat().st_size == 0 for log in (clone / "logs").rglob("train_*.log"))  # touched, never written


@pytest.mark.slow
@pytest.mark.parametrize(
    "edited,retrained",
    [
        ("src/pae/methods/linear.py", {"linear"}),  # one method's file: its jobs only
        ("src/pae/prompts/vpt.py", {"vpt_shallow", "vpt_deep"}),  # VPT's prompts: the methods built on them
        ("src/pae/reports/tables.py", set()),  # report code: tables and figures, no job
    ],
)
def test_an_edit_reruns_only_the_jobs_it_can_change(finished, edited, retrained):
    root, env = finished
    path = root / edited
    original = path.read_text()
    try:
        path.write_text(original + "\n# an edit\n")
        planned = run(["snakemake", "--cores", "2", "-n", "--printshellcmds", "reproduce_all"], root, env).stdout
        jobs = dry_run_jobs(root, env)
        status = yaml.safe_load(run(["dvc", "status", "--json"], root, env).stdout)
    finally:
        path.write_text(original)
    # DVC reads the same code lists: the stages that see the edit are the same methods' training stages.
    seen = {stage for stage, entries in status.items() for e in entries if edited in e.get("changed deps", {})}
    assert {s for s in seen if not s.startswith(REPORT_STAGES)} == {f"train_tiny_{m}" for m in retrained}, status
    trained = {
        line.split("--method ")[1].split()[0]
        for line in planned.splitlines()
        if "pae.cli train" in line and "--method " in line
    }
    assert trained == retrained, planned[-3000:]
    assert not {"shortcuts", "init_prompts", "prepare_data", "import_backbone"} & set(jobs)
    assert {"table", "figure", "report"} <= set(jobs)


def test_each_method_file_is_an_input_of_its_own_stages_only():
    """The issue's example on the real default: iVPT's prompt file is a code input of iVPT's training stage in
    dvc.yaml and of no other stage (nor of any job Snakemake runs for another method)."""
    from pae.pipeline.code_inputs import code_inputs

    code = code_inputs()
    ivpt = "src/pae/prompts/ivpt.py"
    assert [m for m, files in code.per_method.items() if ivpt in files] == ["ivpt"]
    assert ivpt not in code.shared + code.report + code.backbone
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert [name for name, stage in stages.items() if ivpt in stage.get("deps", [])] == ["train_digits_ivpt"]
