"""The epoch-0 diagnosis of PAE's init: attention probabilities against timm's own attention and a planted answer,
token norms and cosines on planted tokens, the hooked forward, the run checks, and the CLI on two tiny runs."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from timm.models.vision_transformer import Attention

from pae.cli import main
from pae.config.pae import PAEOptions
from pae.config.train import TrainConfig
from pae.errors import PaeError
from pae.prompts import build_model
from pae.prompts.kv_attention import attention_with_kv
from pae.reports.init_diagnosis import (
    attention_probabilities,
    check_pair,
    prompt_attention,
    prompt_cosines,
    token_norms,
    traced_forward,
)

from .conftest import random_vit


def values(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    b, t, _ = x.shape
    return attn.qkv(x).reshape(b, t, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)[2]


def project(attn: Attention, mixed: torch.Tensor) -> torch.Tensor:
    """timm's attention output from the per-head mixed values (B, heads, T, head_dim)."""
    b, _, t, _ = mixed.shape
    return attn.proj(attn.norm(mixed.transpose(1, 2).reshape(b, t, attn.attn_dim)))


@torch.no_grad()
def test_probabilities_times_values_give_timms_attention_output():
    block = random_vit().blocks[3]
    x = block.norm1(torch.randn(2, 10, 384))
    probs = attention_probabilities(block.attn, x)
    assert probs.shape == (2, 6, 10, 10) and torch.allclose(probs.sum(-1), torch.ones(2, 6, 10))
    torch.testing.assert_close(project(block.attn, probs @ values(block.attn, x)), block.attn(x), atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_probabilities_with_key_prompts_give_e2vpts_attention_output():
    attn = random_vit().blocks[0].attn
    x, k_extra, v_extra = torch.randn(2, 9, 384), torch.randn(2, 6, 4, 64), torch.randn(2, 6, 4, 64)
    probs = attention_probabilities(attn, x, k_extra)
    mixed = probs @ torch.cat([values(attn, x), v_extra], dim=2)
    torch.testing.assert_close(project(attn, mixed), attention_with_kv(attn, x, k_extra, v_extra), atol=1e-5, rtol=1e-4)


def planted_attention(strength: float) -> Attention:
    """Every query is the same vector u; a token's key is u times its first feature: prompts (feature 1) get the
    logit ``strength``, every other token 0."""
    attn = Attention(8, num_heads=2, qkv_bias=True)
    with torch.no_grad():
        attn.qkv.weight.zero_()
        attn.qkv.bias.zero_()
        u = torch.ones(4) * math.sqrt(strength / (4 * attn.scale))  # scale * |u|^2 = strength, per head
        attn.qkv.bias[:8] = u.repeat(2)
        attn.qkv.weight[8:16, 0] = u.repeat(2)
    return attn


@pytest.mark.parametrize("strength", [0.0, 1.0, 4.0])
def test_attention_mass_on_planted_prompt_keys_is_the_softmax_answer(strength):
    n_prefix, n_prompt, n_patch = 1, 3, 4
    x = torch.randn(5, n_prefix + n_prompt + n_patch, 8)
    x[..., 0] = 0.0
    x[:, n_prefix : n_prefix + n_prompt, 0] = 1.0
    with torch.no_grad():
        mass = prompt_attention(attention_probabilities(planted_attention(strength), x), n_prefix, n_prompt)
    t = n_prefix + n_prompt + n_patch
    expected = n_prompt * math.exp(strength) / (n_prompt * math.exp(strength) + t - n_prompt)
    assert mass["cls_to_prompts"] == pytest.approx(expected, rel=1e-5)
    assert mass["patches_to_prompts"] == pytest.approx(expected, rel=1e-5)
    assert mass["uniform_share"] == n_prompt / t and mass["cls_to_key_prompts"] == 0.0


def test_norms_and_cosines_of_planted_tokens():
    patch = torch.randn(4, 384)
    direction = patch.mean(0) / patch.mean(0).norm()
    cls, prompts = 2.0 * torch.nn.functional.normalize(torch.randn(1, 384), dim=-1), 30.0 * direction.repeat(3, 1)
    x = torch.cat([cls, prompts, patch])[None].repeat(2, 1, 1)
    norms = token_norms(x, 1, 3)
    assert norms["prompt_norm"] == pytest.approx(30.0) and norms["cls_norm"] == pytest.approx(2.0)
    assert norms["patch_norm"] == pytest.approx(patch.norm(dim=-1).mean().item(), rel=1e-5)
    assert norms["norm_ratio"] == pytest.approx(30.0 / norms["patch_norm"])
    cosines = prompt_cosines(x, 1, 3)
    assert cosines["cos_to_mean_patch"] == pytest.approx(1.0) and cosines["cos_between_prompts"] == pytest.approx(1.0)
    assert math.isnan(prompt_cosines(x[:, :2], 1, 1)["cos_between_prompts"])


@pytest.mark.parametrize("method", ["vpt_deep", "e2vpt"])
def test_the_hooked_forward_is_the_models_forward_and_sees_the_planted_prompts(method):
    torch.manual_seed(0)
    model = build_model(method, random_vit(), 10, num_tokens=3).eval()
    with torch.no_grad():
        model.method.embeddings.copy_(7.0 * torch.nn.functional.normalize(torch.randn(12, 3, 384), dim=-1))
    images = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        logits, layers = traced_forward(model, images)
        assert torch.equal(logits, model(images))
    assert len(layers) == 12 and all(layer["prompt_tokens"] == 3 for layer in layers)
    assert all(layer["prompt_norm"] == pytest.approx(7.0, rel=1e-5) for layer in layers)
    key_prompts = [layer["cls_to_key_prompts"] > 0 for layer in layers]
    assert all(key_prompts) if method == "e2vpt" else not any(key_prompts)


def config(**changes) -> TrainConfig:
    return replace(TrainConfig(img_size=28, pae=PAEOptions(init=True)), **changes)


@pytest.mark.parametrize(
    "base, message",
    [
        (config(), "--base-run .* has PAE's init on"),
        (config(method="vpt_shallow", pae=PAEOptions()), "differ in 'method'"),
        (config(seed=1, pae=PAEOptions()), "differ in 'seed'"),
        (config(options={"num_tokens": 2}, pae=PAEOptions()), "2 prompt tokens"),
    ],
)
def test_runs_that_are_no_pair_are_refused(base, message):
    with pytest.raises(PaeError, match=message):
        check_pair(config(), base)
    with pytest.raises(PaeError, match="--pae-run .* has PAE's init off"):
        check_pair(config(pae=PAEOptions()), config(pae=PAEOptions()))


def test_the_cli_diagnoses_two_tiny_runs_and_writes_json_markdown_and_figure(tiny_task, tmp_path, capsys):
    from pae.loop import train

    base = TrainConfig(
        data_kind="vtab1k",
        data_root=str(tiny_task),
        img_size=28,
        method="vpt_deep",
        epochs=1,
        warmup_epochs=0,
        lr=0.01,
        batch_size=16,
        seed=3,
        device="cpu",
        mlflow=False,
        cache_dir=str(tmp_path / "cache"),
        options={"num_tokens": 2},
        out_dir=str(tmp_path / "none"),
    )
    pae = replace(
        base,
        out_dir=str(tmp_path / "init"),
        pae=PAEOptions(init=True, scorer="ncm", window=14, stride=7, init_images=16, folds=1),
    )
    for cfg in (base, pae):
        train(cfg)
    out = tmp_path / "diag"
    assert (
        main(
            [
                "diagnose-init",
                "--pae-run",
                pae.out_dir,
                "--base-run",
                base.out_dir,
                "--images",
                "32",
                "--out-json",
                f"{out}.json",
                "--out-md",
                f"{out}.md",
                "--out-png",
                f"{out}.png",
            ]
        )
        == 0
    )
    result = json.loads((tmp_path / "diag.json").read_text())
    assert result["same_head"] and result["images"] == 32 and result["num_tokens"] == 2
    for init in ("mpa", "random"):
        start = result[init]["recorded_start"]
        assert abs(start["measured"] - start["recorded"]) <= 0.5 and len(result[init]["layers"]) == 12
    assert result["mpa"]["layers"][0]["prompt_norm"] != result["random"]["layers"][0]["prompt_norm"]
    text = (tmp_path / "diag.md").read_text()
    assert f"{result['mpa']['loss']:.2f}" in text and text.count("\n| ") >= 2 + 12
    assert (tmp_path / "diag.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["mpa"]["loss"] == result["mpa"]["loss"]
    assert main(["diagnose-init", "--pae-run", base.out_dir, "--base-run", pae.out_dir]) == 2
    assert "has PAE's init off" in capsys.readouterr().err
