"""Adding a method is its file plus its test: this file registers a toy method, and the CLI, the params check, the
DAG and the tables take it from the registry, with no line anywhere else naming it.

The file doubles as the method's plugin module ($PAE_PLUGINS or a params file's ``plugins``), so it imports only
absolute names at module level."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from pae.config.options import option
from pae.methods import METHODS, ordered, register_method
from pae.methods.registry import PLUGINS_ENV
from pae.prompts.base import LayerPrompts, dims

HERE = Path(__file__).resolve()


@dataclass
class ToyOptions:
    num_tokens: int = option(2, "toy: prompt tokens per layer")
    prompt_dropout: float = option(0.0, "toy: dropout on the prompts")
    toy_decay: float = option(0.5, "toy: factor between one layer's prompts and the next's")


class ToyPrompts(LayerPrompts):
    """One learnable prompt set, scaled by decay^l at block l: a deep trajectory from p x d parameters."""

    def __init__(self, depth: int, dim: int, tokens: int, decay: float, dropout: float) -> None:
        super().__init__(depth, tokens, dropout)
        self.base = nn.Parameter(torch.randn(tokens, dim) * 0.02)
        self.register_buffer("decay", decay ** torch.arange(depth, dtype=torch.float32))

    def prompt_set(self, layer: int) -> torch.Tensor:
        return self.decay[layer] * self.base

    def trajectory(self) -> torch.Tensor:
        return self.decay[:, None, None] * self.base

    @torch.no_grad()
    def initialize(self, prompts: torch.Tensor) -> None:
        self.base.copy_(prompts[0])


@register_method(
    "toy", summary="toy: one prompt set decayed over depth (the registry's test plugin)", options=ToyOptions, order=50
)
def toy(backbone: nn.Module, o: ToyOptions) -> ToyPrompts:
    depth, dim, _ = dims(backbone)
    return ToyPrompts(depth, dim, o.num_tokens, o.toy_decay, o.prompt_dropout)


def test_the_registry_describes_a_method_to_the_cli_and_the_params_check(capsys):
    from pae.cli import build_parser, main
    from pae.params import load_params, validate_params

    assert METHODS["toy"].deep and METHODS["toy"].has_prompts and not METHODS["toy"].trains_backbone
    names = [spec.name for spec in ordered()]
    assert names[0] == "linear" and names.index("toy") == len(names) - 1  # its order (50) puts it last
    assert main(["methods"]) == 0 and "toy: one prompt set decayed" in capsys.readouterr().out
    args = build_parser().parse_args(["train", "--method", "toy", "--toy-decay", "0.8"])
    assert args.toy_decay == 0.8
    params = load_params(HERE.parents[1] / "params" / "default.yaml")
    params["run"]["methods"] = ["linear", "toy"]
    params["train"]["toy_decay"] = 0.9
    assert validate_params(params)["run"]["methods"] == ["linear", "toy"]


def test_a_method_of_a_plugin_trains_and_reloads_through_the_cli(tiny_task, tmp_path):
    env = {**os.environ, PLUGINS_ENV: str(HERE), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlruns.db'}"}
    out = tmp_path / "run"
    train = [
        sys.executable,
        "-m",
        "pae.cli",
        "train",
        "--kind",
        "vtab1k",
        "--root",
        str(tiny_task),
        "--img-size",
        "28",
        "--method",
        "toy",
        "--toy-decay",
        "0.8",
        "--kv-tokens",
        "3",
        "--pae-koopman",
        "--pae-koopman-dim",
        "8",
        "--epochs",
        "2",
        "--warmup-epochs",
        "0",
        "--lr",
        "0.01",
        "--batch-size",
        "16",
        "--device",
        "cpu",
        "--out-dir",
        str(out),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--experiment",
        "toy",
    ]
    done = subprocess.run(train, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "method 'toy' does not read --kv-tokens; ignored" in done.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["method"], metrics["pae"], metrics["prompt_params"]) == ("toy", "koopman", 2 * 384)
    assert json.loads((out / "config.json").read_text())["options"] == {
        "num_tokens": 2,
        "prompt_dropout": 0.0,
        "toy_decay": 0.8,
    }
    evaluate = [
        sys.executable,
        "-m",
        "pae.cli",
        "evaluate",
        "--run-dir",
        str(out),
        "--out",
        str(tmp_path / "e.json"),
        "--device",
        "cpu",
    ]
    done = subprocess.run(evaluate, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    measured = json.loads((tmp_path / "e.json").read_text())[str(out)]
    assert measured["test_top1"] == pytest.approx(metrics["final_test_top1"])


@pytest.mark.slow
def test_a_method_of_a_plugin_runs_through_a_tiny_dag(tiny_task, tmp_path):
    from .test_pipeline import EXPERIMENT, make_project, random_backbone_file, run, tiny_params

    params = tiny_params(tiny_task, random_backbone_file(tmp_path))
    params.update(plugins=[str(HERE)], search={"lr": [], "weight_decay": []}, ablation={"methods": [], "pae": []})
    params["run"].update(methods=["linear", "toy"], pae=["none", "all"])
    params["train"]["toy_decay"] = 0.7
    root = tmp_path / "project"
    env = make_project(root, params)
    run(["snakemake", "--cores", "2", "reproduce_all"], root, env)
    runs = sorted((root / f"results/{EXPERIMENT}/runs/tiny").glob("*/*/seed1/metrics.json"))
    labels = [(p.parts[-4], p.parts[-3]) for p in runs]
    assert labels == [("linear", "none"), ("toy", "all"), ("toy", "none")]  # a deep method: PAE's every part
    assert (
        json.loads((root / f"results/{EXPERIMENT}/runs/tiny/toy/all/seed1/config.json").read_text())["options"][
            "toy_decay"
        ]
        == 0.7
    )
    accuracy = (root / f"reports/{EXPERIMENT}/accuracy.md").read_text()
    assert accuracy.index("| linear |") < accuracy.index("| toy |")  # the table's order is the registry's
