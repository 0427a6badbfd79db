"""Training: the schedule equation, an end-to-end VPT-deep run on real data, MLflow, and CLI error handling."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys

import pytest

from pae.cli import main
from pae.config.train import TrainConfig
from pae.loop import lr_at, train


def test_lr_schedule_is_warmup_then_cosine():
    base, warm, total = 0.5, 10, 110
    assert lr_at(0, total, warm, base) == 0.0  # VPT: the first unit runs at lr 0
    assert lr_at(5, total, warm, base) == pytest.approx(0.25)
    assert lr_at(10, total, warm, base) == pytest.approx(base)
    assert lr_at(60, total, warm, base) == pytest.approx(base / 2)
    assert lr_at(35, total, warm, base) == pytest.approx(base * 0.5 * (1 + math.cos(math.pi * 0.25)))
    assert lr_at(110, total, warm, base) == pytest.approx(0.0, abs=1e-12)


@pytest.fixture()
def mlflow_store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.mark.slow
def test_vpt_deep_on_cifar10_learns_and_writes_everything(vtab_mini, dinov2_weights, tmp_path, mlflow_store):
    """Real data, real backbone, reduced resolution (28 px) and epochs so it runs on 2 CPU cores."""
    common = dict(
        data_kind="vtab1k",
        data_root=str(vtab_mini / "cifar10"),
        weights=str(dinov2_weights),
        img_size=28,
        batch_size=64,
        cache_dir=str(tmp_path / "cache"),
        experiment="test",
        lr=0.005,
    )
    probe = train(TrainConfig(**common, method="linear", epochs=1, warmup_epochs=0, out_dir=str(tmp_path / "linear")))
    out = tmp_path / "vpt"
    # VPT's fan-out head needs its 100 epochs (in 4 it stays near chance: README, "The default"), and its
    # per-epoch warmup would spend epoch 1 at lr 0: the fan-in head and no warmup, as the default experiment
    metrics = train(
        TrainConfig(
            **common, method="vpt_deep", epochs=4, warmup_epochs=0, head_init="kaiming_fan_in", out_dir=str(out)
        )
    )

    start = probe["initial_test_top1"]  # the linear probe's starting point: frozen features, untrained head
    assert 5.0 < start < 20.0  # about chance on 10 classes
    assert metrics["final_test_top1"] > start + 10.0, (start, metrics)
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.safetensors",
        "config.json",
        "grad_norms.csv",
        "history.csv",
        "metrics.json",
    ]
    with open(out / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3, 4]
    assert all(math.isfinite(float(rows[-1][f"grad_norm_l{i}"])) for i in range(12))
    assert float(rows[-1]["test_top1"]) == metrics["final_test_top1"]
    assert json.loads((out / "metrics.json").read_text()) == metrics

    from safetensors.torch import load_file

    ckpt = load_file(str(out / "checkpoint.safetensors"))
    assert ckpt["method.embeddings"].shape == (12, 10, 384) and ckpt["head.weight"].shape == (10, 384)

    from mlflow import MlflowClient

    client = MlflowClient(mlflow_store)
    run = client.get_run(metrics["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.params["method"] == "vpt_deep"
    assert run.data.metrics["final_test_top1"] == pytest.approx(metrics["final_test_top1"])
    logged = sorted(client.get_metric_history(run.info.run_id, "test_top1"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in logged] == [
        (int(r["epoch"]), pytest.approx(float(r["test_top1"]))) for r in rows
    ]
    assert run.data.tags["backbone_sha256"] and run.data.tags["pae.arch"] == "vit_small_patch14_dinov2"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"metrics.json", "history.csv"}


def _cli_error(capsys, args):
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Fix:" in err
    return err


@pytest.mark.parametrize(
    "args,message",
    [
        (["--method", "vpt_deeep"], "unknown method 'vpt_deeep'"),
        (["--kind", "vtab1k", "--root", "/nonexistent/task"], "task folder '/nonexistent/task' does not exist"),
        (["--weights", "/nonexistent/w.safetensors"], "does not exist"),
        (["--lr", "-1"], "lr must be positive"),
    ],
)
def test_train_cli_bad_input(capsys, tmp_path, mlflow_store, args, message):
    out = tmp_path / "out"
    err = _cli_error(
        capsys,
        [
            "train",
            "--epochs",
            "1",
            "--warmup-epochs",
            "0",
            "--img-size",
            "14",
            "--out-dir",
            str(out),
            "--cache-dir",
            str(tmp_path / "c"),
            *args,
        ],
    )
    assert message in err
    assert not out.exists() and not (tmp_path / "mlruns.db").exists()  # nothing half-written, no run recorded


def test_train_cli_wrong_architecture_checkpoint(capsys, tmp_path, dinov2_weights, mlflow_store):
    err = _cli_error(
        capsys,
        [
            "train",
            "--weights",
            str(dinov2_weights),
            "--arch",
            "vit_tiny_patch16_224",
            "--img-size",
            "32",
            "--out-dir",
            str(tmp_path / "o"),
            "--cache-dir",
            str(tmp_path / "c"),
        ],
    )
    assert "written for architecture 'vit_small_patch14_dinov2', not 'vit_tiny_patch16_224'" in err
    assert not (tmp_path / "o").exists()


def test_cli_process_exit_code_and_one_line(tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}"}
    proc = subprocess.run(
        [sys.executable, "-m", "pae.cli", "train", "--method", "nope", "--out-dir", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "unknown method 'nope'" in proc.stderr


def test_out_dir_with_foreign_files_is_refused_before_any_work(capsys, tmp_path, mlflow_store):
    out = tmp_path / "results"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    err = _cli_error(
        capsys,
        [
            "train",
            "--epochs",
            "1",
            "--warmup-epochs",
            "0",
            "--img-size",
            "14",
            "--out-dir",
            str(out),
            "--cache-dir",
            str(tmp_path / "c"),
        ],
    )
    assert "holds files that are not a run's outputs (first: 'notes.txt')" in err
    assert (out / "notes.txt").read_text() == "precious" and not (tmp_path / "mlruns.db").exists()


def test_parallel_jobs_share_a_fresh_mlflow_store(tmp_path):
    """Parallel Snakemake jobs create the SQLite store at once; every one must get its run."""
    code = "from pae.tracking import Tracker; t = Tracker('race', 'job'); t.finish('FINISHED'); print(t.run_id)"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlruns.db'}"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    results = [(*p.communicate(timeout=300), p.returncode) for p in procs]
    assert all(rc == 0 for _, _, rc in results), [err[-500:] for _, err, rc in results if rc]
    from mlflow import MlflowClient

    runs = MlflowClient(env["MLFLOW_TRACKING_URI"]).search_runs(
        [MlflowClient(env["MLFLOW_TRACKING_URI"]).get_experiment_by_name("race").experiment_id]
    )
    assert sorted(r.info.run_id for r in runs) == sorted(out.strip() for out, _, _ in results)
