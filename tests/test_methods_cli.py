"""Every prompt method trains from the same CLI on real data and logs to MLflow the same way."""
from __future__ import annotations

import json

import pytest

from pae.cli import main
from pae.prompts import METHODS


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One store for all methods (creating a SQLite store costs seconds), as in a real grid."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlruns.db'}"


@pytest.mark.parametrize("method", [m for m in METHODS if m != "full"])
def test_every_method_trains_from_the_cli_and_logs_to_mlflow(method, tiny_task, dinov2_weights, store, tmp_path,
                                                             monkeypatch, capsys):
    uri = store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    out = tmp_path / "run"
    extra = ["--bpt-init", "whitening"] if method == "bpt_bilinear" else []
    code = main(["train", "--kind", "vtab1k", "--root", str(tiny_task), "--weights", str(dinov2_weights),
                 "--img-size", "28", "--method", method, "--num-tokens", "4", "--epochs", "2", "--warmup-epochs", "0",
                 "--lr", "0.005", "--batch-size", "16", "--fit-images", "40", "--out-dir", str(out),
                 "--cache-dir", str(tmp_path / "cache"), "--experiment", "methods", *extra])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == method and metrics["epochs"] == 2
    assert 0.0 <= metrics["final_test_top1"] <= 100.0
    assert (metrics["prompt_params"] > 0) == (method != "linear")
    if method == "bpt_fwhiten":  # the fitted, fixed whitening is a buffer: the checkpoint must carry it to rebuild the run
        from safetensors.torch import load_file
        assert load_file(str(out / "checkpoint.safetensors"))["method.b"].shape == (12, 384, 384)

    from mlflow import MlflowClient
    run = MlflowClient(uri).get_run(metrics["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.params["method"] == method
    assert [m.step for m in MlflowClient(uri).get_metric_history(run.info.run_id, "test_top1")] == [0, 1, 2]
