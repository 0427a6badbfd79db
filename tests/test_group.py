"""Several runs of one task as one group: the vmapped forward equals each run's own model, a group trains exactly
its single runs, a diverging run stops alone, runs that cannot share are refused, and the CLI names each run's
folder. Also the compile fallback and evaluation every k epochs."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from pae.cli import build_parser, main
from pae.cli import run_configs as train_configs
from pae.config.pae import PAEOptions
from pae.config.train import TrainConfig, check_group
from pae.errors import PaeError
from pae.forward import Compiled, GroupForward, SingleForward
from pae.loop import train, train_runs
from pae.methods import METHODS
from pae.prompts import build_model

from .conftest import random_vit

GROUPABLE = [m for m, spec in METHODS.items() if not spec.trains_backbone]


@pytest.mark.parametrize("method", GROUPABLE)
def test_the_group_forward_and_gradients_equal_each_runs_own_model(method):
    """Independent reference: each run's PromptedViT called on its own batch, and its own backward."""
    backbone = random_vit()
    models = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        model = build_model(method, backbone, 5, num_tokens=3, prompt_dropout=0.0)
        model.method.fit_to_data(backbone, torch.randn(16, 3, 28, 28))
        models.append(model)
    xs = [torch.randn(4, 3, 28, 28, generator=torch.Generator().manual_seed(s)) for s in (10, 11)]
    ys = [torch.tensor([0, 1, 2, 3]), torch.tensor([4, 3, 2, 1])]
    group = GroupForward(models)

    logits = group.train(xs)
    sum(F.cross_entropy(out, y) for out, y in zip(logits, ys)).backward()
    grouped = [{n: p.grad.clone() for n, p in m.named_parameters() if p.requires_grad} for m in models]
    for m in models:
        m.zero_grad(set_to_none=True)

    for model, x, y, out, grads in zip(models, xs, ys, logits, grouped):
        model.train()
        alone = model(x)
        torch.testing.assert_close(out, alone, rtol=1e-5, atol=1e-5)
        F.cross_entropy(alone, y).backward()
        for name, p in model.named_parameters():
            if p.requires_grad:
                scale = p.grad.abs().max().item()  # float32 noise relative to the gradient's size
                torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-5 * scale, msg=name)
    shared = xs[0]
    expected = torch.stack([m.eval()(shared).argmax(-1) for m in models])
    assert torch.equal(group.classify(shared), expected)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    from pae.backbones.checkpoints import save_backbone

    path = tmp_path_factory.mktemp("backbone") / "vit.safetensors"
    save_backbone(random_vit("vit_small_patch14_dinov2", 518).state_dict(), path, {})
    return path


def config(task: Path, weights: Path, out: Path, **changes) -> TrainConfig:
    """VPT-deep with the full Koopman-Lyapunov regularizer on 48 images, without dropout (a group draws its dropout
    masks from one generator, so only without dropout can it equal its single runs bit for bit)."""
    base = TrainConfig(
        data_kind="vtab1k",
        data_root=str(task),
        weights=str(weights),
        img_size=28,
        method="vpt_deep",
        epochs=2,
        warmup_epochs=1,
        lr=0.01,
        batch_size=16,
        threads=1,
        mlflow=False,
        cache_dir=str(out.parent / "cache"),
        out_dir=str(out),
        options={"num_tokens": 3, "prompt_dropout": 0.0},
        pae=PAEOptions(koopman=True, lyapunov=True, koopman_dim=8),
    )
    return replace(base, **changes)


def test_a_group_trains_exactly_its_single_runs(tiny_task, weights, tmp_path):
    grid = [dict(lr=0.01, seed=1), dict(lr=0.05, weight_decay=0.01, seed=1), dict(lr=0.01, seed=2)]
    alone = [train(config(tiny_task, weights, tmp_path / f"alone{i}", **g)) for i, g in enumerate(grid)]
    grouped = train_runs([config(tiny_task, weights, tmp_path / f"group{i}", **g) for i, g in enumerate(grid)])
    for i, (a, g) in enumerate(zip(alone, grouped)):
        assert g["group_size"] == 3 and a["group_size"] == 1
        assert (g["lr"], g["weight_decay"], g["seed"]) == (a["lr"], a["weight_decay"], a["seed"])
        for key in ("final_test_top1", "initial_test_top1", "convergence_epoch"):
            assert g[key] == a[key], key
        assert g["final_train_loss"] == pytest.approx(a["final_train_loss"], rel=1e-5)
        ta = load_file(str(tmp_path / f"alone{i}" / "checkpoint.safetensors"))
        tg = load_file(str(tmp_path / f"group{i}" / "checkpoint.safetensors"))
        assert ta.keys() == tg.keys()
        for name in ta:
            torch.testing.assert_close(tg[name], ta[name], rtol=1e-4, atol=1e-6, msg=name)
    assert grouped[0]["final_train_loss"] != grouped[1]["final_train_loss"]  # the runs really differ


def test_a_diverging_run_stops_alone_and_the_others_finish(tiny_task, weights, tmp_path):
    outs = [tmp_path / "fine", tmp_path / "diverges"]
    cfgs = [config(tiny_task, weights, outs[0]), config(tiny_task, weights, outs[1], lr=1e30)]
    with pytest.raises(PaeError, match=r"1 of 2 runs diverged \('diverges'\).*training diverged in epoch 2"):
        train_runs(cfgs)
    assert (outs[0] / "metrics.json").is_file() and not outs[1].exists()
    # VPT's per-epoch schedule runs epoch 1 at lr 0 (warmup from 0), so the lr of 1e30 first acts in epoch 2
    assert sorted(p.name for p in (tmp_path / ".diverges.state").glob("state-*")) == [
        "state-00000-000000.pt",
        "state-00001-000000.pt",
    ]


def test_a_diverged_search_point_is_a_result_the_selection_skips(tiny_task, weights, tmp_path):
    """Under the tune protocol a diverging lr is an outcome of the search, not a failed job."""
    from pae.selection import select_hparams

    outs = [tmp_path / "lr0.01", tmp_path / "lr1e30"]
    metrics = train_runs(
        [
            config(tiny_task, weights, outs[0], protocol="tune"),
            config(tiny_task, weights, outs[1], protocol="tune", lr=1e30),
        ]
    )
    assert metrics[1]["diverged"] is True and metrics[1]["final_val200_top1"] is None
    assert "training diverged in epoch 2" in metrics[1]["error"]
    assert json.loads((outs[1] / "metrics.json").read_text()) == metrics[1]
    assert not (tmp_path / ".lr1e30.state").exists()  # the job succeeded: nothing is left to resume
    chosen = select_hparams([o / "metrics.json" for o in outs], tmp_path / "selected.json")
    assert chosen["lr"] == 0.01 and chosen["val200_top1"] == metrics[0]["final_val200_top1"]


def test_a_diverged_run_is_left_out_on_a_rerun_until_its_config_changes(tiny_task, weights, tmp_path):
    out = tmp_path / "run"
    for _ in range(2):  # the second attempt fails at once from the recorded divergence, without training
        with pytest.raises(PaeError, match="training diverged in epoch 2"):
            train(config(tiny_task, weights, out, lr=1e30))
    assert (tmp_path / ".run.state" / "diverged.json").is_file()
    assert train(config(tiny_task, weights, out, lr=0.01))["final_test_top1"] is not None  # a lower lr trains
    assert not (tmp_path / ".run.state").exists()


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(method="vpt_shallow"), "runs of one group differ in 'method'"),
        (dict(epochs=3), "runs of one group differ in 'epochs'"),
        (dict(weights=None, seed=7), "without --weights the backbone is random"),
    ],
)
def test_runs_that_cannot_share_are_refused(tmp_path, change, message):
    first = config(tmp_path, tmp_path / "w", tmp_path / "a")
    if "weights" in change:
        first = replace(first, weights=None)
    with pytest.raises(PaeError, match=message):
        check_group([first, replace(first, out_dir=str(tmp_path / "b"), **change)])


def test_full_fine_tuning_and_a_shared_folder_are_refused(tmp_path):
    full = config(tmp_path, tmp_path / "w", tmp_path / "a", method="full")
    with pytest.raises(PaeError, match="fine-tunes the backbone"):
        check_group([full, replace(full, lr=0.1, out_dir=str(tmp_path / "b"))])
    with pytest.raises(PaeError, match="write the same --out-dir"):
        check_group([TrainConfig(out_dir=str(tmp_path / "a")), TrainConfig(out_dir=str(tmp_path / "a"), lr=0.1)])


def _configs(*args: str) -> list[TrainConfig]:
    return train_configs(build_parser().parse_args(["train", *args]))


def test_the_cli_makes_one_run_per_combination_in_its_own_folder(tmp_path):
    runs = _configs(
        "--lr",
        "0.005",
        "1e-05",
        "--weight-decay",
        "0",
        "0.001",
        "--seed",
        "3",
        "--out-dir",
        str(tmp_path / "lr{lr}_wd{wd}_s{seed}"),
    )
    assert [(c.lr, c.weight_decay, c.seed) for c in runs] == [
        (0.005, 0.0, 3),
        (0.005, 0.001, 3),
        (1e-05, 0.0, 3),
        (1e-05, 0.001, 3),
    ]
    assert [Path(c.out_dir).name for c in runs] == [
        "lr0.005_wd0_s3",
        "lr0.005_wd0.001_s3",
        "lr1e-05_wd0_s3",
        "lr1e-05_wd0.001_s3",
    ]  # the text as typed names the folder
    single = _configs("--lr", "0.1", "--out-dir", str(tmp_path / "plain{x}"))  # other braces are just characters
    assert len(single) == 1 and single[0].lr == 0.1 and single[0].out_dir == str(tmp_path / "plain{x}")
    seeds = _configs("--seed", "1", "2", "--out-dir", "s{seed}", "--init-prompts", "mpa/seed{seed}/prompts.safetensors")
    assert [(c.seed, c.out_dir, c.init_prompts) for c in seeds] == [
        (1, "s1", "mpa/seed1/prompts.safetensors"),
        (2, "s2", "mpa/seed2/prompts.safetensors"),
    ]


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["--seed", "1", "2", "--out-dir", "runs/x"],
            "several --seed values are given, but --out-dir 'runs/x' has no {seed}",
        ),
        (["--lr", "0.1", "--out-dir", "runs/{wd}"], "--out-dir 'runs/{wd}' has {wd}, but no --weight-decay is given"),
        (
            ["--seed", "1", "2", "--out-dir", "r{seed}", "--init-prompts", "p.safetensors"],
            "several --seed values are given, but --init-prompts 'p.safetensors' has no {seed}",
        ),
    ],
)
def test_the_cli_refuses_folder_templates_that_do_not_separate_the_runs(capsys, args, message):
    assert main(["train", *args]) == 2
    assert message in capsys.readouterr().err


def test_stages_of_one_run_refuse_a_group(capsys, tmp_path):
    assert main(["shortcuts", "--seed", "1", "2", "--out", str(tmp_path / "s.json")]) == 2
    assert "this stage takes one run, but the flags give 2" in capsys.readouterr().err


def test_compile_falls_back_to_eager_once_when_the_backend_fails(capsys):
    def broken_backend(graph, example_inputs):
        raise RuntimeError("no compiler here")

    calls = []

    def double(x):
        calls.append(1)
        return 2 * x

    fn = Compiled(double, backend=broken_backend)
    x = torch.arange(3.0)
    assert torch.equal(fn(x), 2 * x) and torch.equal(fn(x), 2 * x)
    err = capsys.readouterr().err
    assert err.count("torch.compile is unavailable here") == 1 and "no compiler here" in err
    with pytest.raises(TypeError):  # a real error is raised by the eager call, not hidden
        fn("not a tensor", 1)
    again = Compiled(double, backend=broken_backend)  # the next group's forward: eager at once, no second warning
    assert again.fn is double and torch.equal(again(x), 2 * x)
    assert "torch.compile" not in capsys.readouterr().err


def test_eval_every_skips_epochs_but_always_evaluates_the_last(tiny_task, weights, tmp_path):
    out = tmp_path / "sparse"
    metrics = train(config(tiny_task, weights, out, epochs=3, eval_every=2, pae=PAEOptions()))

    with open(out / "history.csv") as f:
        test = [float(r["test_top1"]) for r in csv.DictReader(f)]
    assert [math.isfinite(v) for v in test] == [True, False, True, True]  # epoch 0, 2 and the last, 3
    assert metrics["final_test_top1"] == test[3] and metrics["best_test_top1"] == max(test[2], test[3])


@pytest.mark.slow
def test_the_compiled_forwards_equal_the_eager_ones(capsys):
    """The GPU fast path's graph: torch.compile (inductor, here on the CPU) of one model and of a vmapped group,
    forward and backward, against the eager computation; and no fallback to eager was taken."""
    backbone = random_vit()
    models = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        models.append(build_model("vpt_deep", backbone, 5, num_tokens=3, prompt_dropout=0.0))
    xs = [torch.randn(4, 3, 28, 28, generator=torch.Generator().manual_seed(s)) for s in (10, 11)]

    def outputs_and_grads(forward, runs):
        for m in models:
            m.zero_grad(set_to_none=True)
        logits = forward.train(xs[:runs])
        sum(out.square().mean() for out in logits).backward()
        return logits, [models[i].method.embeddings.grad.clone() for i in range(runs)]

    for make, runs in ((lambda c: SingleForward(models[0], c), 1), (lambda c: GroupForward(models, c), 2)):
        eager, eager_grads = outputs_and_grads(make(False), runs)
        compiled, compiled_grads = outputs_and_grads(make(True), runs)
        for a, b in zip(compiled + compiled_grads, eager + eager_grads):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item())
    assert "torch.compile is unavailable" not in capsys.readouterr().err
