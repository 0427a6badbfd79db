"""The stages around training: MPA as its own jobs gives exactly the inline result, VPT's selection rule, and the
evaluate stage that rebuilds a run from its checkpoint."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file, save_file

from pae.config.pae import PAEOptions
from pae.config.train import TrainConfig
from pae.errors import PaeError
from pae.evaluate import evaluate_run
from pae.loop import train
from pae.mpa import build_init_prompts, find_task_shortcuts
from pae.prompts.base import as_stages
from pae.selection import select_hparams


@pytest.fixture(scope="module")
def config(tiny_task, tmp_path_factory) -> TrainConfig:
    cache = tmp_path_factory.mktemp("cache")
    return TrainConfig(
        data_kind="vtab1k",
        data_root=str(tiny_task),
        img_size=28,
        method="vpt_deep",
        epochs=2,
        warmup_epochs=0,
        lr=0.01,
        batch_size=16,
        seed=3,
        device="cpu",
        mlflow=False,
        cache_dir=str(cache),
        options={"num_tokens": 3, "prompt_dropout": 0.1},
        pae=PAEOptions(
            init=True, koopman=True, scorer="ncm", window=14, stride=7, init_images=16, folds=1, koopman_dim=8
        ),
    )


@pytest.mark.parametrize(
    "arch, img_size, shapes",
    [
        ("vit_small_patch14_dinov2", 28, [(12, 3, 384)]),
        ("swin_tiny_patch4_window7_224", 32, [(2, 3, 96), (2, 3, 192), (6, 3, 384), (2, 3, 768)]),  # per stage
    ],
    ids=["vit", "swin"],
)
def test_mpa_as_its_own_stages_trains_exactly_like_mpa_inside_the_run(config, tmp_path, arch, img_size, shapes):
    config = replace(config, arch=arch, img_size=img_size)
    record = find_task_shortcuts(config, tmp_path / "shortcuts.json")
    prompts = build_init_prompts(config, tmp_path / "shortcuts.json", tmp_path / "prompts.safetensors")
    assert [tuple(s.shape) for s in as_stages(prompts)] == shapes
    assert len(record["selected"]) == 3 and record["grid"] == 3
    # the dominant-frequency maps: one row per class, one value per band, on 16 held-out training images
    assert len(record["class_maps"]) == 10 and all(m is None or len(m) == 9 for m in record["class_maps"])
    assert record["class_map_images"] == 16
    inline = train(replace(config, out_dir=str(tmp_path / "inline")))
    staged = train(
        replace(config, out_dir=str(tmp_path / "staged"), init_prompts=str(tmp_path / "prompts.safetensors"))
    )
    assert (
        staged["final_test_top1"] == inline["final_test_top1"]
        and staged["final_train_loss"] == inline["final_train_loss"]
    )
    a, b = (
        load_file(str(tmp_path / "inline/checkpoint.safetensors")),
        load_file(str(tmp_path / "staged/checkpoint.safetensors")),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    recorded = json.loads((tmp_path / "staged/shortcuts.json").read_text())
    assert recorded["selected"] == record["selected"] and recorded["seconds"] >= record["seconds"]


def test_init_prompts_refuse_another_tasks_record(config, tmp_path):
    find_task_shortcuts(config, tmp_path / "s.json")
    with pytest.raises(PaeError, match="not this run's"):
        build_init_prompts(replace(config, seed=4), tmp_path / "s.json", tmp_path / "p.safetensors")
    assert not (tmp_path / "p.safetensors").exists()


def config_root(cfg: TrainConfig):
    from pathlib import Path

    return Path(cfg.data_root)


def _tune_run(path, lr, wd, val, protocol="tune"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "task": "t",
                "method": "vpt_deep",
                "protocol": protocol,
                "lr": lr,
                "weight_decay": wd,
                "final_val200_top1": val,
                "mlflow_run_id": f"id-{lr}-{wd}",
            }
        )
    )
    return path


def test_selection_takes_the_best_val200_and_breaks_ties_toward_the_smaller_lr(tmp_path):
    runs = [
        _tune_run(tmp_path / f"{i}/metrics.json", lr, wd, val)
        for i, (lr, wd, val) in enumerate([(0.1, 0.0, 60.0), (0.05, 0.001, 71.5), (0.01, 0.0, 71.5), (0.5, 0.0, None)])
    ]
    chosen = select_hparams(runs, tmp_path / "selected.json")
    assert (chosen["lr"], chosen["weight_decay"], chosen["val200_top1"]) == (0.01, 0.0, 71.5)
    assert json.loads((tmp_path / "selected.json").read_text()) == chosen and len(chosen["candidates"]) == 4


def test_selection_refuses_runs_that_were_not_tuned_on_val200(tmp_path):
    runs = [_tune_run(tmp_path / "a/metrics.json", 0.1, 0.0, 50.0, protocol="final")]
    with pytest.raises(PaeError, match="not trained on the tune protocol"):
        select_hparams(runs, tmp_path / "selected.json")
    assert not (tmp_path / "selected.json").exists()


def test_evaluate_rebuilds_the_run_from_its_checkpoint_and_catches_a_foreign_one(config, tmp_path):
    cfg = replace(config, method="bpt_fwhiten", pae=PAEOptions(), out_dir=str(tmp_path / "run"))
    metrics = train(cfg)
    result = evaluate_run(tmp_path / "run", "cpu")
    assert result["test_top1"] == metrics["final_test_top1"]
    per_class = result["test_per_class_top1"]
    assert len(per_class) == 10 and all(v is None or 0 <= v <= 100 for v in per_class.values())
    # a head that always answers class k scores k's share of the test set: pick a k whose share differs
    labels = [int(line.split()[1]) for line in (config_root(config) / "test.txt").read_text().splitlines()]
    k = next(c for c in range(10) if abs(100.0 * labels.count(c) / len(labels) - metrics["final_test_top1"]) > 1)
    tensors = load_file(str(tmp_path / "run/checkpoint.safetensors"))
    tensors["head.weight"].zero_()
    tensors["head.bias"] = torch.nn.functional.one_hot(torch.tensor(k), 10).float()
    save_file(tensors, str(tmp_path / "run/checkpoint.safetensors"))
    with pytest.raises(PaeError, match="does not belong to this run"):
        evaluate_run(tmp_path / "run", "cpu")
    del tensors["method.b"]
    save_file(tensors, str(tmp_path / "run/checkpoint.safetensors"))
    with pytest.raises(PaeError, match="lacks 'method.b'"):
        evaluate_run(tmp_path / "run", "cpu")
    (tmp_path / "run/checkpoint.safetensors").write_bytes(b"truncated")
    with pytest.raises(PaeError, match="cannot be read"):
        evaluate_run(tmp_path / "run", "cpu")
