"""VPT on Swin against timm's forward (zero prompts) and against a hand-written reference of the official algorithm.

The reference follows KMnP/vpt's Swin code step by step in its own layout, one image at a time (where the official
code and ours agree): a (1, p + H*W, C) sequence with the prompts first, windows cut by hand, the relative position
index and the shift mask built from their definitions, attention and MLP written from the weights, and the official
patch merging (x0..x3 slices, prompts tiled 4x). Only the weights come from timm's modules.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pae.prompts.swin import PromptedSwin, SwinPrompts

from .release_files import TINY_SWIN, tiny

WINDOW = TINY_SWIN["window_size"]


@pytest.fixture(scope="module")
def backbone():
    """2 stages (16x16 then 8x8 tokens, windows of 4, so both stages shift), every weight random."""
    return tiny("swin_base_patch4_window7_224")


def _rel_index(ws: int) -> torch.Tensor:
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)
    return rel[..., 0] * (2 * ws - 1) + rel[..., 1]


def _windows(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(H, W, C) -> (nW, ws*ws, C), windows in row-major order."""
    h, w, c = x.shape
    return x.view(h // ws, ws, w // ws, ws, c).permute(0, 2, 1, 3, 4).reshape(-1, ws * ws, c)


def _unwindows(win: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    return win.view(h // ws, w // ws, ws, ws, -1).permute(0, 2, 1, 3, 4).reshape(h, w, -1)


def _shift_mask(h: int, w: int, ws: int, shift: int) -> torch.Tensor:
    img = torch.zeros(h, w, 1)
    regions = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
    for i, (hs, wss) in enumerate((a, b) for a in regions for b in regions):
        img[hs, wss] = i
    ids = _windows(img, ws)[..., 0]
    return (ids[:, None, :] - ids[:, :, None]).ne(0).float() * -100.0


def _ln(x: torch.Tensor, norm) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], norm.weight, norm.bias, norm.eps)


def _ref_block(seq: torch.Tensor, blk, p: int, h: int, w: int, shift: int) -> torch.Tensor:
    """One official prompted Swin block on (p + h*w, C)."""
    c, heads, ws = seq.shape[-1], blk.attn.num_heads, min(WINDOW, h)
    normed = _ln(seq, blk.norm1)
    img = normed[p:].view(h, w, c)
    if shift:
        img = torch.roll(img, (-shift, -shift), dims=(0, 1))
    win = _windows(img, ws)
    tokens = torch.cat([normed[:p].expand(win.shape[0], -1, -1), win], dim=1)  # every window gets the prompts
    n = tokens.shape[1]
    q, k, v = (
        (tokens @ blk.attn.qkv.weight.T + blk.attn.qkv.bias).view(-1, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    )
    table = (
        blk.attn.relative_position_bias_table[_rel_index(ws).flatten()].view(ws * ws, ws * ws, heads).permute(2, 0, 1)
    )
    logits = q @ k.transpose(-1, -2) * (c // heads) ** -0.5 + F.pad(table, (p, 0, p, 0))
    if shift:
        logits = logits + F.pad(_shift_mask(h, w, ws, shift), (p, 0, p, 0))[:, None]
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(-1, n, c) @ blk.attn.proj.weight.T + blk.attn.proj.bias
    img_out = _unwindows(out[:, p:], ws, h, w)
    if shift:
        img_out = torch.roll(img_out, (shift, shift), dims=(0, 1))
    seq = seq + torch.cat([out[:, :p].mean(0), img_out.reshape(h * w, c)])
    hidden = F.gelu(_ln(seq, blk.norm2) @ blk.mlp.fc1.weight.T + blk.mlp.fc1.bias)
    return seq + hidden @ blk.mlp.fc2.weight.T + blk.mlp.fc2.bias


def _ref_merge(seq: torch.Tensor, merge, p: int, h: int, w: int) -> torch.Tensor:
    """Official PatchMerging with VPT's prompt rule: 2x2 neighbours x0..x3 concatenated; prompts tiled 4x."""
    img = seq[p:].view(h, w, -1)
    x = torch.cat([img[0::2, 0::2], img[1::2, 0::2], img[0::2, 1::2], img[1::2, 1::2]], dim=-1).reshape(
        -1, 4 * img.shape[-1]
    )
    merged = torch.cat([seq[:p].repeat(1, 4), x])
    return _ln(merged, merge.norm) @ merge.reduction.weight.T


def _ref_vpt(model: PromptedSwin, image: torch.Tensor) -> torch.Tensor:
    """Logits for one image (3, H, W) under VPT's Swin algorithm, deep or shallow."""
    bb, p, prompts = model.backbone, model.method.num_tokens, model.method.embeddings
    pe = bb.patch_embed
    seq = F.conv2d(image[None], pe.proj.weight, pe.proj.bias, stride=pe.patch_size)[0].flatten(1).T
    seq = torch.cat([prompts[0][0], _ln(seq, pe.norm)])  # prompts before the first block
    h = w = image.shape[-1] // pe.patch_size[0]
    for s, stage in enumerate(bb.layers):
        if s > 0:  # the official code merges at the end of stage s-1: the same step
            seq, h, w = _ref_merge(seq, stage.downsample, p, h, w), h // 2, w // 2
        for i, blk in enumerate(stage.blocks):
            if model.method.deep and (s, i) != (0, 0):
                seq = torch.cat([prompts[s][i], seq[p:]])
            seq = _ref_block(seq, blk, p, h, w, shift=WINDOW // 2 if i % 2 and h > WINDOW else 0)
    return _ln(seq, bb.norm).mean(0) @ model.head.weight.T + model.head.bias


def _model(backbone, num_tokens: int, deep: bool) -> PromptedSwin:
    model = PromptedSwin(backbone, SwinPrompts.for_backbone(backbone, num_tokens, deep, 0.0, "image"), 5)
    with torch.no_grad():
        for prompts in model.method.embeddings:
            prompts.normal_()  # large prompts, so any misplacement shows
    return model


def test_zero_prompts_reproduce_timm_forward(backbone):
    img = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = backbone.forward_features(img)
        for deep in (True, False):
            tokens = _model(backbone, 0, deep).forward_features(img)
            torch.testing.assert_close(tokens, features.flatten(1, 2), rtol=0, atol=1e-5)
            torch.testing.assert_close(
                tokens.mean(1), backbone.forward_head(features, pre_logits=True), rtol=0, atol=1e-5
            )


def test_hand_written_reference_matches_timm(backbone):
    """The reference is checked against timm with no prompts before it judges VPT."""
    model = _model(backbone, 0, deep=True)
    img = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(_ref_vpt(model, img[0])[None], model(img), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("deep", [True, False], ids=["deep", "shallow"])
def test_vpt_matches_the_official_algorithm(backbone, deep):
    model = _model(backbone, 3, deep)
    img = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = model(img)
        for b in range(2):
            torch.testing.assert_close(ours[b], _ref_vpt(model, img[b]), rtol=1e-4, atol=1e-4)
        assert (ours - _model(backbone, 3, deep)(img)).abs().max() > 1e-3  # other prompts, other logits


def test_samples_do_not_see_each_others_prompts(backbone):
    """Windows and prompts are paired per sample: an image's logits do not depend on the rest of its batch."""
    model = _model(backbone, 3, deep=False)
    img = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(img)[:1], model(img[:1]), rtol=1e-5, atol=1e-5)


def test_official_prompt_dropout_on_swin_is_vpts_swin_code():
    """VPT's Swin code drops the first prompts after expanding them (a mask per image) and the deep ones before (one
    mask per batch); VPT's ViT code and the shallow method draw per image; with PAE, PAE's one mask per batch."""
    from pae.config.pae import PAEOptions
    from pae.config.train import TrainConfig

    def mask(arch: str, method: str, pae: bool = False) -> tuple[str, str]:
        cfg = TrainConfig(arch=arch, method=method, pae=PAEOptions(koopman=pae))
        return cfg.resolved().options.prompt_dropout_mask, cfg.variant

    swin = "swin_base_patch4_window7_224.ms_in22k"
    assert mask(swin, "vpt_deep") == ("deep_batch", "none") and mask(swin, "vfpt") == ("deep_batch", "none")
    assert mask(swin, "vpt_shallow")[0] == "image" and mask(swin, "vpt_deep", pae=True) == ("batch", "koopman")
    assert mask("vit_base_patch16_224.orig_in21k", "vpt_deep") == ("image", "none")


def test_deep_batch_draws_per_image_first_and_per_batch_deeper(backbone):
    method = SwinPrompts.for_backbone(backbone, 8, True, 0.5, "deep_batch").train()
    with torch.no_grad():
        for p in method.embeddings:
            p.fill_(1.0)
    torch.manual_seed(0)
    first, deeper = method.prompts(0, 6), [method.prompts(layer, 6) for layer in (1, 2, 3)]
    assert not all(torch.equal(first[0], first[b]) for b in range(6))  # a mask per image
    assert all(torch.equal(p[0], p[b]) for p in deeper for b in range(6))  # one mask per batch
    assert all(bool((p == 0).any()) for p in deeper)  # and dropout did drop


def test_trajectory_per_stage_and_gradients_reach_every_block(backbone):
    deep, shallow = _model(backbone, 3, deep=True), _model(backbone, 3, deep=False)
    assert [tuple(t.shape) for t in deep.method.trajectory()] == [(2, 3, 16), (2, 3, 32)]
    assert [tuple(t.shape) for t in shallow.method.trajectory()] == [(1, 3, 16)]
    F.cross_entropy(deep(torch.randn(2, 3, 64, 64)), torch.tensor([0, 1])).backward()
    norms = deep.method.layer_grad_norms()
    assert norms.shape == (4,) and bool((norms > 0).all())
    assert {id(p) for p in deep.trainable_parameters()} == {
        id(p) for p in [*deep.method.embeddings, *deep.head.parameters()]
    }
    assert not deep.train().backbone.training


def test_registry_builds_vpt_on_swin_and_refuses_vit_only_methods(backbone):
    """vpt_shallow, vpt_deep, linear and full declare Swin; the others refuse it naming the methods that run."""
    from pae.errors import PaeError
    from pae.methods import METHODS
    from pae.prompts import build_model

    for name in ("vpt_deep", "vpt_shallow", "linear"):
        model = build_model(name, backbone, 5, num_tokens=3)
        assert isinstance(model, PromptedSwin) and model(torch.randn(2, 3, 64, 64)).shape == (2, 5)
    assert {n for n, s in METHODS.items() if "swin" in s.backbones} >= {"vpt_deep", "vpt_shallow", "linear", "full"}
    with pytest.raises(PaeError, match=r"e2vpt runs on vit backbones, not on this swin.*use one of: linear, full"):
        build_model("e2vpt", backbone, 5)


def test_vfpt_on_swin_is_vpt_deep_on_the_fourier_transformed_prompts(backbone):
    """VFPT's Swin code: the first floor(alpha * p) prompts of every block, Re(FFT_seq(FFT_hidden(P))) at the stage's
    width. With dropout off, VFPT on prompts P is VPT-deep on T(P), checked against the official-algorithm reference."""
    from pae.prompts import build_model

    vfpt = build_model("vfpt", backbone, 5, num_tokens=4, fourier_fraction=0.5).eval()  # no prompt dropout
    vpt = _model(backbone, 4, deep=True)
    with torch.no_grad():
        for got, src in zip(vpt.method.embeddings, vfpt.method.embeddings):
            src.normal_()
            p = src.data.double()
            fourier = torch.stack([torch.fft.fft2(layer[:2], dim=(-2, -1)).real for layer in p])  # by the formula
            got.copy_(torch.cat([fourier, p[:, 2:]], dim=1).float())
        vpt.head.load_state_dict(vfpt.head.state_dict())
        img = torch.randn(2, 3, 64, 64)
        torch.testing.assert_close(vfpt(img), vpt(img), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(vfpt(img)[0], _ref_vpt(vpt, img[0]), rtol=1e-4, atol=1e-4)
    assert [tuple(t.shape) for t in vfpt.method.trajectory()] == [(2, 4, 16), (2, 4, 32)]  # pre-FFT: PAE's chain


def test_pae_koopman_chain_covers_every_prompted_layer_of_every_stage(backbone):
    """One lift per stage into one k-space, one K over the whole chain (across the stage boundary too): the terms
    equal the paper's formulas written out with each layer lifted by its stage's U."""
    from pae.config.pae import PAEOptions
    from pae.evolution import PAE

    model = _model(backbone, 3, deep=True)
    pae = PAE(
        PAEOptions(koopman=True, lyapunov=True, koopman_dim=8, chain_start=0, lyapunov_form="hinge"), model.method
    )
    reg = pae.regularizer
    assert [lift.in_features for lift in reg.lifts] == [16, 32] and reg.transitions == 3
    with torch.no_grad():
        reg.K.copy_(torch.randn(8, 8) * 0.5)
        reg.L.copy_(torch.randn(8, 8) * 0.5)
    stages = model.method.trajectory()
    z = torch.cat([stages[0] @ reg.lifts[0].weight.T, stages[1] @ reg.lifts[1].weight.T])  # (4, p, k)
    pred = z[:-1] @ reg.K
    q = reg.L.T @ reg.L
    energy = lambda v: ((v @ q) * v).sum(-1)  # noqa: E731
    terms = pae.loss_terms(model.method)
    torch.testing.assert_close(terms["koopman"][1], (pred - z[1:]).pow(2).mean((1, 2)).sum())
    torch.testing.assert_close(terms["lyapunov"][1], F.relu(energy(pred) - energy(z[:-1])).mean(-1).sum())
    (terms["koopman"][1] + terms["lyapunov"][1]).backward()
    for p in [*model.method.embeddings, *(lift.weight for lift in reg.lifts)]:
        assert p.grad is not None and bool((p.grad.flatten(1).norm(dim=1) > 0).all())  # every layer, every stage
    skipped = PAE(PAEOptions(koopman=True, koopman_dim=8, chain_start=2), model.method).regularizer
    assert [lift.in_features for lift in skipped.lifts] == [32] and skipped.transitions == 1  # stage 0 skipped


def _ref_prompt_block(seq: torch.Tensor, blk) -> torch.Tensor:
    """One Swin block on the prompts (p, C) alone, from the weights: plain attention, no bias, no mask."""
    c, heads = seq.shape[-1], blk.attn.num_heads
    q, k, v = (_ln(seq, blk.norm1) @ blk.attn.qkv.weight.T + blk.attn.qkv.bias).view(-1, 3, heads, c // heads).unbind(1)
    q, k, v = (t.transpose(0, 1) for t in (q, k, v))  # (heads, p, c / heads)
    out = ((q @ k.transpose(-1, -2)) * (c // heads) ** -0.5).softmax(-1) @ v
    seq = seq + out.transpose(0, 1).reshape(-1, c) @ blk.attn.proj.weight.T + blk.attn.proj.bias
    hidden = F.gelu(_ln(seq, blk.norm2) @ blk.mlp.fc1.weight.T + blk.mlp.fc1.bias)
    return seq + hidden @ blk.mlp.fc2.weight.T + blk.mlp.fc2.bias


def _ref_mpa_prompts(bb, bands: torch.Tensor) -> list[torch.Tensor]:
    """MPA phase II by hand on Swin: per band, the energy-weighted mean of the normed patch embedding (Eqs. 3-4),
    then the prompt-only sequence through every block, merged (tiled 4x, norm, reduction) between stages."""
    pe, first = bb.patch_embed, []
    for x in bands:  # (B, 3, H, W) band-passed images
        tokens = _ln(
            F.conv2d(x, pe.proj.weight, pe.proj.bias, stride=pe.patch_size).flatten(2).transpose(1, 2), pe.norm
        )
        energy = tokens.pow(2).sum(-1)
        first.append(((energy / energy.sum())[..., None] * tokens).sum((0, 1)))
    seq, stages = torch.stack(first), []
    for s, stage in enumerate(bb.layers):
        if s > 0:  # the merge's rows are independent: a zero 2x2 map beside the prompts leaves them as they are
            seq = _ref_merge(torch.cat([seq, seq.new_zeros(4, seq.shape[-1])]), stage.downsample, len(seq), 2, 2)
            seq = seq[: len(first)]
        states = []
        for blk in stage.blocks:
            states.append(seq)
            seq = _ref_prompt_block(seq, blk)
        stages.append(torch.stack(states))
    return stages


def test_mpa_prompts_on_swin_follow_the_reference(backbone):
    """Pooled from Swin's patch embedding (C_0), propagated block by block and across patch merging."""
    from pae.evolution.task_init import energy_pooled_tokens, propagate

    bands = torch.randn(3, 4, 3, 64, 64)  # 3 band-passed batches of 4 images
    with torch.no_grad():
        first = energy_pooled_tokens(backbone, bands)
        got = propagate(backbone, first)
        want = _ref_mpa_prompts(backbone, bands)
    assert [tuple(t.shape) for t in got] == [(2, 3, 16), (2, 3, 32)]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)
    shallow = propagate(backbone, first, depth=1)
    assert len(shallow) == 1 and torch.equal(shallow[0], got[0][:1])


def test_mpa_scores_swin_by_what_its_head_reads(backbone):
    """Prompt-free: timm's own pooled features; zero prompts: the PromptedSwin with zero prompts before every block."""
    from pae.evolution.task_init import mpa_features

    img = torch.randn(2, 3, 64, 64)
    zero = _model(backbone, 2, deep=True)
    with torch.no_grad():
        for p in zero.method.embeddings:
            p.zero_()
        free = backbone.forward_head(backbone.forward_features(img), pre_logits=True)
        torch.testing.assert_close(mpa_features(backbone, 2, zero_prompts=False)(img), free, rtol=0, atol=1e-5)
        zeroed = zero.readout(zero.forward_features(img))
        torch.testing.assert_close(mpa_features(backbone, 2, zero_prompts=True)(img), zeroed, rtol=0, atol=1e-6)
        assert (zeroed - free).abs().max() > 1e-3  # zero prompts are not neutral (LayerNorm(0) = beta)


@pytest.mark.parametrize("deep", [True, False], ids=["deep", "shallow"])
def test_pae_writes_mpa_prompts_into_every_stage(backbone, tmp_path, deep):
    """Through the init-prompts file (one tensor per stage) into SwinPrompts: deep takes every stage, shallow the
    first layer of stage 0."""
    from pae.build import load_init_prompts, save_init_prompts
    from pae.config.pae import PAEOptions
    from pae.errors import PaeError
    from pae.evolution import PAE

    prompts = [torch.randn(2, 3, 16), torch.randn(2, 3, 32)]
    save_init_prompts(tmp_path / "p.safetensors", prompts, {"seed": 1})
    loaded, record = load_init_prompts(tmp_path / "p.safetensors")
    assert record == {"seed": 1} and all(torch.equal(a, b) for a, b in zip(loaded, prompts))
    model = _model(backbone, 3, deep)
    PAE(PAEOptions(init=True), model.method).initialize(model.method, loaded)
    for got, want in zip(model.method.embeddings, prompts):
        torch.testing.assert_close(got.data, want[: got.shape[0]], rtol=0, atol=0)
    with pytest.raises(PaeError, match=r"initial prompts have shape \(2, 3, 16\) \+ \(2, 3, 32\).*num_tokens"):
        four = _model(backbone, 4, deep).method
        PAE(PAEOptions(init=True), four).initialize(four, loaded)


@pytest.mark.parametrize("method", ["vpt_deep", "linear"])
def test_swin_trains_from_the_cli_with_pae(tiny_task, tmp_path, method):
    """The command the pipeline's train rule runs, on a random Swin-T at 32 px (4 stages, padded windows), with all
    of PAE (MPA's per-stage init, Koopman, Lyapunov) on VPT-deep."""
    import json

    from pae.cli import main

    pae = [
        "--pae",
        "--pae-init",
        "--pae-koopman",
        "--pae-lyapunov",
        "--pae-koopman-dim",
        "8",
        "--pae-init-images",
        "16",
    ]
    args = ["train", "--kind", "vtab1k", "--root", str(tiny_task), "--arch", "swin_tiny_patch4_window7_224"]
    args += ["--img-size", "32", "--method", method, "--num-tokens", "2", "--epochs", "2", "--warmup-epochs", "0"]
    args += ["--batch-size", "16", "--out-dir", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache")]
    assert main(args + (pae if method == "vpt_deep" else [])) == 0
    metrics = json.loads(next((tmp_path / "run").rglob("metrics.json")).read_text())
    assert metrics["settings"]["arch"] == "swin_tiny_patch4_window7_224" and len(metrics["selection_curve"]) == 3
    if method == "vpt_deep":
        run = next((tmp_path / "run").rglob("metrics.json")).parent
        assert metrics["pae"] == "init+koopman+lyapunov" and metrics["pae_params"] > 0
        assert len(json.loads((run / "shortcuts.json").read_text())["selected"]) == 2  # one band per prompt
        assert "koopman_loss,lyapunov_loss" in (run / "history.csv").read_text().splitlines()[0]
    assert math.isfinite(metrics["final_train_loss"])
    per_block = 2 * (2 * 96 + 2 * 192 + 6 * 384 + 2 * 768)  # Swin-T: p (2) x width, a set per block of each stage
    assert metrics["prompt_params"] == (per_block if method == "vpt_deep" else 0)


@pytest.mark.slow
def test_a_swin_grid_runs_through_a_tiny_dag(tiny_task, tmp_path):
    """The pipeline on a random Swin-T at 32 px: import, data, MPA's jobs (per-stage prompts), training, evaluation,
    tables; every method with and without all of PAE, and the ablation. No init diagnosis: it measures [CLS]."""
    import json

    from safetensors import safe_open

    from pae.backbones import create_backbone
    from pae.backbones.checkpoints import save_backbone

    from .test_pipeline import EXPERIMENT, TINY_RUNS, make_project, run, tiny_params

    arch = "swin_tiny_patch4_window7_224"
    weights = tmp_path / "random_swin.safetensors"
    torch.manual_seed(0)
    save_backbone(create_backbone(arch, 32).state_dict(), weights, {})
    params = tiny_params(tiny_task, weights)
    params["backbone"] = {"arch": arch, "source": str(weights), "file": "data/backbones/tiny_swin.safetensors"}
    params.update(img_size=32, search={"lr": [], "weight_decay": []})
    root = tmp_path / "project"
    env = make_project(root, params)
    run(["snakemake", "--cores", "2", "reproduce_all"], root, env)
    results, reports = root / f"results/{EXPERIMENT}", root / f"reports/{EXPERIMENT}"
    runs = {p.parent: json.loads(p.read_text()) for p in (results / "runs/tiny").glob("*/*/seed1/metrics.json")}
    assert sorted((r["method"], r["pae"]) for r in runs.values()) == TINY_RUNS  # the ViT tiny grid's runs
    for folder, r in runs.items():
        assert r["settings"]["arch"] == arch and r["final_test_top1"] >= 0
        evaluated = json.loads((results / f"evaluations/tiny/{r['method']}.json").read_text())
        assert evaluated[str(folder.relative_to(root))]["test_top1"] == pytest.approx(r["final_test_top1"], abs=1e-6)
    (prompts,) = results.glob("mpa/final/tiny/*/seed1/prompts.safetensors")
    with safe_open(str(prompts), "pt") as f:
        assert [tuple(f.get_tensor(f"prompts.{i}").shape) for i in range(4)] == [
            (2, 2, 96),
            (2, 2, 192),
            (6, 2, 384),
            (2, 2, 768),
        ]
    assert arch in (reports / "accuracy.md").read_text()
    assert (reports / "ablation.md").is_file() and not (reports / "init_diagnosis.md").exists()
