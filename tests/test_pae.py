"""PAE as a plug-in: it works on every prompt method through trajectory()/initialize() alone, and in training."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from pae.config.pae import PAEOptions
from pae.config.train import TrainConfig
from pae.errors import PaeError
from pae.evolution import PAE
from pae.evolution.pae import discover, record_prompts
from pae.evolution.task_init import task_aware_prompts, zero_prompt_features
from pae.loop import train
from pae.methods import METHODS, options_for
from pae.prompts import build_model

from .conftest import random_vit

PROMPT_METHODS = [m for m, spec in METHODS.items() if spec.has_prompts]
DEEP = [m for m, spec in METHODS.items() if spec.deep]
ALL_ON = PAEOptions(init=True, koopman=True, lyapunov=True, window=8, stride=4, koopman_dim=16)


@pytest.fixture(scope="module")
def backbone():
    return random_vit("vit_small_patch14_dinov2", 28)


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(0)
    return torch.randn(24, 3, 28, 28), torch.arange(24) % 3


@pytest.mark.parametrize("name", DEEP)
def test_all_of_pae_runs_on_every_deep_method_without_knowing_it(backbone, batch, name):
    model = build_model(name, backbone, 3, **options_for(name, {"num_tokens": 4, "bpt_rank": 8}))
    model.method.fit_to_data(backbone, batch[0])
    pae = PAE(ALL_ON, model.method)
    record = discover(ALL_ON, backbone, *batch, num_classes=3, num_tokens=4, seed=0)
    pae.initialize(model.method, record_prompts(backbone, batch[0], record, 12))
    # the official MPA: a random head scoring each band through the backbone with all-zero prompts
    expected, _ = task_aware_prompts(
        backbone, *batch, 3, 4, 12, 8, 4, scorer="random_head", seed=0, features_fn=zero_prompt_features(backbone, 4)
    )
    got = model.method.trajectory().detach()
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3 * expected.abs().max().item())  # bilinear: p <= r
    assert (
        len(record["selected"]) == 4 and record["window"] == 8 and len(record["band_losses"]) == 36
    )  # ((28 - 8) // 4 + 1) ** 2
    terms = pae.loss_terms(model.method)
    total = sum(weight * value for weight, value in terms.values())
    assert set(terms) == {"koopman", "lyapunov"} and torch.isfinite(total)
    (model(batch[0]).logsumexp(1).mean() + total).backward()
    assert pae.regularizer.K.grad is not None and pae.regularizer.lifts[0].weight.grad.abs().sum() > 0
    assert sum(p.grad.abs().sum() for p in model.method.per_layer_parameters() if p.grad is not None) > 0


@pytest.mark.parametrize("name", ["vpt_shallow", "bpt_bilinear_shallow"])
def test_shallow_methods_take_the_init_and_refuse_the_chain(backbone, batch, name):
    model = build_model(name, backbone, 3, num_tokens=4)
    pae = PAE(PAEOptions(init=True, window=8, stride=4), model.method)
    options = PAEOptions(init=True, window=8, stride=4)
    record = discover(options, backbone, *batch, num_classes=3, num_tokens=4, seed=0)
    pae.initialize(model.method, record_prompts(backbone, batch[0], record, 12))  # the shallow method takes layer 0
    expected, _ = task_aware_prompts(
        backbone, *batch, 3, 4, 1, 8, 4, scorer="random_head", seed=0, features_fn=zero_prompt_features(backbone, 4)
    )
    torch.testing.assert_close(model.method.trajectory().detach(), expected)
    with pytest.raises(PaeError, match="initial prompts have shape"):
        pae.initialize(model.method, torch.zeros(12, 5, 384))
    with pytest.raises(PaeError, match="needs at least 2 prompt layers"):
        PAE(PAEOptions(koopman=True), model.method)


def test_chain_start_drops_the_first_layer_as_the_official_code(backbone):
    method = build_model("vpt_deep", backbone, 3, num_tokens=2).method
    pae = PAE(PAEOptions(koopman=True, lyapunov=True, koopman_dim=8, chain_start=1), method)
    assert pae.regularizer.transitions == 10
    terms = pae.loss_terms(method)
    torch.testing.assert_close(terms["koopman"][1], pae.regularizer(method.trajectory()[1:])["koopman"])


@pytest.mark.parametrize(
    "options, message",
    [
        (PAEOptions(lyapunov=True), "acts on the Koopman step"),
        (PAEOptions(init=True, scorer="svm"), "unknown pae_scorer 'svm'"),
        (PAEOptions(koopman=True, koopman_mode="per_layer"), "unknown pae_koopman_mode"),
        (PAEOptions(init=True, init_images=0), "pae_init_images must be positive"),
    ],
)
def test_bad_pae_settings_are_named(backbone, options, message):
    with pytest.raises(PaeError, match=message):
        PAE(options, build_model("vpt_deep", backbone, 3).method)


def test_pae_needs_prompts(backbone):
    with pytest.raises(PaeError, match="has no prompts"):
        PAE(PAEOptions(init=True), build_model("linear", backbone, 3).method)


def test_training_with_pae_records_everything(tiny_task, dinov2_weights, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    out = tmp_path / "run"
    cfg = TrainConfig(
        data_kind="vtab1k",
        data_root=str(tiny_task),
        weights=str(dinov2_weights),
        img_size=28,
        method="vpt_deep",
        epochs=3,
        warmup_epochs=0,
        lr=0.005,
        batch_size=16,
        out_dir=str(out),
        cache_dir=str(tmp_path / "cache"),
        experiment="pae",
    )
    cfg.options.num_tokens = 3
    cfg.pae = PAEOptions(init=True, koopman=True, lyapunov=True, window=8, stride=4, init_images=32, koopman_dim=32)
    metrics = train(cfg)
    assert metrics["pae"] == "init+koopman+lyapunov" and metrics["pae_params"] == 384 * 32 + 2 * 32 * 32
    assert metrics["pae_init_s"] > 0 and 0 <= metrics["convergence_epoch"] <= 3
    assert metrics["koopman_spectral_radius"] > 0 and metrics["koopman_lift_norm"] > 0
    assert 0.0 <= metrics["grad_flip_rate_deep"] <= 1.0  # over the 3 epoch means
    shortcuts = json.loads((out / "shortcuts.json").read_text())
    assert len(shortcuts["selected"]) == 3 and shortcuts["scorer"] == "random_head"  # the official scorer
    history = (out / "history.csv").read_text().splitlines()
    assert "koopman_loss" in history[0] and len(history) == 1 + 4  # header, epochs 0..3
    assert len((out / "grad_norms.csv").read_text().splitlines()) == 1 + 3 * 3  # 48 images / 16 per step, 3 epochs
    ckpt = load_file(str(out / "checkpoint.safetensors"))
    assert ckpt["pae.regularizer.K"].shape == (32, 32)
    config = json.loads((out / "config.json").read_text())
    assert config["pae"]["koopman_dim"] == 32 and config["options"]["num_tokens"] == 3

    from mlflow import MlflowClient

    run = MlflowClient().get_run(metrics["mlflow_run_id"])
    assert run.data.tags["pae"] == "init+koopman+lyapunov" and run.data.params["pae.koopman_dim"] == "32"
    assert len(MlflowClient().get_metric_history(run.info.run_id, "koopman_loss")) == 3


def test_ablation_table_rows_speedup_and_order(tmp_path):
    from pae.reports.tables import write_ablation_table

    def run(task, pae, top1, epochs, seed=1):
        return {
            "task": task,
            "method": "vpt_deep",
            "pae": pae,
            "seed": seed,
            "final_test_top1": top1,
            "convergence_epoch": epochs,
            "wall_time_s": 1.0,
            "pae_init_s": 0.0,
            "mlflow_run_id": f"{task}{pae}{seed}",
        }

    runs = [
        run("a", "init+koopman+lyapunov", 60.0, 2),
        run("b", "init+koopman+lyapunov", 70.0, 4),
        run("a", "none", 50.0, 6),
        run("b", "none", 40.0, 6),
        run("b", "none", 44.0, 6, seed=2),
    ]
    write_ablation_table(runs, tmp_path / "a.md", tmp_path / "a.csv")
    lines = (tmp_path / "a.md").read_text().splitlines()
    assert lines[2].startswith("| vpt_deep | none | 50.00 | 42.00 | 46.00 |")  # b: mean of two seeds
    assert lines[3].startswith("| vpt_deep | init+koopman+lyapunov | 60.00 | 70.00 | 65.00 |")
    assert lines[3].endswith("| 2.00 |")  # speed-up: 6 epochs / mean(2, 4)
