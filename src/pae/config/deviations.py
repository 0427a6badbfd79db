"""Where our code and the official code could differ, what each does, and which one is the default.

One list, rendered into the README ("Deviations from the official code", ``python -m pae.cli deviations``) and
checked by the tests: every entry with a ``setting`` is verified against the resolved config of every job of
``params/paper.yaml``, with the official value alone and with the ``ours`` profile's value under an overlay
``train: {profile: ours}``. The official code read is KMnP/vpt 4410440, reeive/PAE 30f40b9 (and 4a3d514),
runtsang/VFPT 1b3d984, ChengHan111/E2VPT 7a66e75, WangYZ1608/BPT 9fc3c78; file references are at those commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

VPT_FAMILY = ("linear", "vpt_shallow", "vpt_deep", "vfpt", "e2vpt", "ivpt")
BPT = (
    "bpt_bilinear",
    "bpt_bilinear_shallow",
    "bpt_fwhiten",
    "bpt_fwhiten_shallow",
    "bpt_twhiten",
    "bpt_twhiten_shallow",
)


@dataclass(frozen=True)
class Deviation:
    """One point: ``setting`` is the resolved config's key ('options.x', 'pae.x' or a TrainConfig field; None when no
    single setting carries it), ``value`` its official value, checked where ``methods`` apply, in runs with PAE on
    or off as ``runs`` says ('all', 'pae', 'no_pae')."""

    methods: tuple[str, ...]
    point: str
    official: str  # what the official code does, and where
    ours: str  # what our option (or our default) does
    default: str  # "official" or "ours": which one a run gets without asking
    why: str
    setting: str | None = None
    value: Any = None  # the official value of ``setting``
    runs: str = "all"


DEVIATIONS = (
    Deviation(
        VPT_FAMILY,
        "head init",
        "kaiming_normal_, mode fan_out: std sqrt(2/C) (vpt src/models/mlp.py l.53; PAE, VFPT, E2VPT the same)",
        "head_init kaiming_fan_in: std sqrt(2/d), 9x smaller at C=10",
        "official",
        "the fan-in head was an unnoticed difference, not an improvement",
        "head_init",
        "kaiming_fan_out",
    ),
    Deviation(
        BPT,
        "head init",
        "trunc_normal_(std=0.02), bias 0 (BPT train_Sup.py l.129-130)",
        "head_init kaiming_fan_out (VPT's)",
        "official",
        "each method's own head",
        "head_init",
        "trunc_normal",
    ),
    Deviation(
        VPT_FAMILY + BPT,
        "prompt dropout mask with PAE",
        "dropout on the prompt, then expand over the batch: "
        "one mask for every image of a batch (PAE src/models/vit_prompt/vit.py l.178, l.265)",
        "prompt_dropout_mask image: one mask per image, as VPT's code (profile ours)",
        "official",
        "PAE's numbers were made with it; the ablation's none+batch_mask row separates the mask from PAE",
        "options.prompt_dropout_mask",
        "batch",
        runs="pae",
    ),
    Deviation(
        ("vpt_deep", "vfpt", "e2vpt", "ivpt"),
        "prompt dropout mask without PAE",
        "expand, then drop: one mask per image (vpt src/models/vit_prompt/vit.py l.82, l.114-115)",
        "prompt_dropout_mask batch (PAE's)",
        "official",
        "the base methods as their code runs them",
        "options.prompt_dropout_mask",
        "image",
        runs="no_pae",
    ),
    Deviation(
        ("vpt_shallow",),
        "prompt dropout",
        'none for VPT-shallow (vpt demo.ipynb cell 1: "we don\'t use dropout for VPT-shallow")',
        "prompt_dropout 0.1 like VPT-deep",
        "official",
        "VPT's own setting",
        "options.prompt_dropout",
        0.0,
    ),
    Deviation(
        ("e2vpt",),
        "key/value prompt init",
        "ORIGIN_INIT=2: kaiming_uniform_ over each (heads, n, 64) prompt, "
        "bound sqrt(6/(64 n)) (E2VPT vit_changeVK.py l.157-173; command.txt)",
        "kv_init xavier: VPT's bound sqrt(6/(3 p^2 + d)) = 0.0625 at ViT-B",
        "official",
        "2-5x larger at n = 1..10, as the official runs",
        "options.kv_init",
        "kaiming",
    ),
    Deviation(
        BPT,
        "prompt dropout",
        "none in BPT's forward (Models/bpt_shallow.py, bpt_deep.py)",
        "prompt_dropout as VPT (0.1)",
        "official",
        "BPT's forward has no stochastic layer",
        "options.prompt_dropout",
        0.0,
    ),
    Deviation(
        BPT,
        "whitening estimate",
        "q k^T from the rows of the stored q/k weights, X~ averaged over images "
        "first, Sigma = X~ X~^T / d, no ridge (BPT Models/bpt_shallow.py l.33-57)",
        "bpt_whitening per_token: "
        "the paper's W_q W_k^T, every token a column, Sigma / N, ridge whiten_eps (profile ours)",
        "official",
        "the image mean leaves Sigma with rank <= N, so its null directions get float32-floor gains; ours is "
        "the paper's formula and well conditioned",
        "options.bpt_whitening",
        "image_mean",
    ),
    Deviation(
        BPT,
        "whitening columns of B",
        "gather(W, 1, argsort(rand(d, d), 1)[:, :r]): each row of B keeps its "
        "own r random columns (bpt_shallow.py l.52-57)",
        "bpt_columns shared: the same r whole columns (profile ours)",
        "official",
        "ours keeps B's columns whitening directions",
        "options.bpt_columns",
        "per_row",
    ),
    Deviation(
        ("bpt_bilinear",),
        "B init, deep",
        "deep BPT always whitening-initialises B (bpt_deep.py l.28-29)",
        "bpt_init xavier",
        "official",
        "BPT's own deep setting",
        "options.bpt_init",
        "whitening",
    ),
    Deviation(
        ("bpt_bilinear_shallow",),
        "B init, shallow",
        "Xavier (train_Sup.py builds bpt_vit_b without whitening)",
        "bpt_init whitening",
        "official",
        "BPT's own shallow setting",
        "options.bpt_init",
        "xavier",
    ),
    Deviation(
        BPT,
        "training recipe",
        "AdamW, head weight decay 3-10, batch 32, 100 prompts (a perfect square) (BPT script/Sup-IN21K/*.sh)",
        "VPT's protocol (SGD, lr/wd search, batch 128) for every method",
        "ours",
        "one protocol for every method, as PAE compares them; BPT's head weight decay is not an option here",
    ),
    Deviation(
        ("bpt_bilinear", "bpt_bilinear_shallow"),
        "bilinear rank",
        "per task: --channels 25 on CUB, 75 on NABirds, Flowers, Dogs, Cars (BPT script/Sup-IN21K/*.sh; "
        "train_Sup.py l.426 defaults to 16); BPT runs no VTAB task",
        "bpt_rank 32 on every task",
        "ours",
        "BPT's ranks go with its 100 prompts and its recipe (previous row), and no VTAB rank exists; set "
        "tasks.<t>.methods.<m>.bpt_rank to follow them",
    ),
    Deviation(
        VPT_FAMILY + BPT,
        "search evaluates",
        "no test loader during the lr/wd search (vpt tune_vtab.py l.155-162)",
        "tune_test: also evaluate test in every search run",
        "official",
        "test-set selection needs to be impossible, and VTAB's test splits would cost most of the search",
        "tune_test",
        False,
    ),
    Deviation(
        VPT_FAMILY + BPT,
        "lr schedule",
        "warmup + cosine stepped once per epoch, epoch 1 at lr 0 (vpt src/engine/trainer.py l.221)",
        "schedule_unit step (profile ours)",
        "official",
        "VPT's schedule",
        "schedule_unit",
        "epoch",
    ),
    Deviation(
        VPT_FAMILY + BPT,
        "Koopman chain",
        "the deep prompts only: 10 transitions on ViT-B (PAE vit.py l.203-232)",
        "pae chain_start 0: the first layer's prompts too (profile ours)",
        "official",
        "PAE's code",
        "pae.chain_start",
        1,
        runs="pae",
    ),
    Deviation(
        VPT_FAMILY + BPT,
        "Lyapunov term",
        "Q/||Q||_2, per-token clamp z/max(||z||, 1), softplus, 10 tanh(./10) "
        "(PAE vit.py l.236-263 at 30f40b9; the Sept-2025 code computed a hinge it never optimised)",
        "pae lyapunov_form hinge: relu(V(zK) - V(z)), the paper's form (profile ours)",
        "official",
        "the first code in which the term trains",
        "pae.lyapunov_form",
        "official",
        runs="pae",
    ),
    Deviation(
        VPT_FAMILY + BPT,
        "MPA band scorer",
        "an untrained fan-out head, in-sample on one batch of 128 (PAE src/models/vit_models.py::init_mpa l.72-152)",
        "pae scorer linear_probe, cross-fitted over 2 folds (profile ours)",
        "official",
        "an in-sample fitted probe rewards bands that keep images apart, not the "
        "task (a planted-band test shows it); the random head ranks by an arbitrary projection",
        "pae.scorer",
        "random_head",
        runs="pae",
    ),
    Deviation(
        VPT_FAMILY + BPT,
        "MPA scoring model",
        "the model being initialised, all prompts zero (PAE src/models/vit_models.py::init_mpa)",
        "pae zero_prompt_scoring off: the prompt-free backbone (profile ours)",
        "official",
        "zero prompts are not neutral (LayerNorm(0) = beta)",
        "pae.zero_prompt_scoring",
        True,
        runs="pae",
    ),
    Deviation(
        VPT_FAMILY + BPT,
        "MPA scorer's head",
        "the run's own, just-initialised head (PAE src/models/vit_models.py::init_mpa l.89, l.149)",
        "a head drawn from the same distribution with the run's seed",
        "ours",
        "the pipeline runs MPA once per task and seed for every method, so it cannot hold each method's head",
    ),
    Deviation(
        VPT_FAMILY + BPT,
        "MPA bands",
        "window 16, stride 8 at any resolution (PAE src/configs/config.py l.85-86, MPA_WINDOW_SIZE / MPA_STRIDE)",
        "16/8 at 224 px scaled with the resolution (window 0)",
        "ours",
        "identical at 224 px; at 28 px the official window leaves 4 bands for 5 tokens",
    ),
    Deviation(
        ("vfpt",),
        "Fourier fraction",
        "per task, 0 to 1 (VFPT paper Tables S1-S4; FOURIER_PERCENTAGE 0.5 in VFPT src/configs/config.py l.157)",
        "one fraction for every task",
        "official",
        "params/paper.yaml sets VFPT's per-task values",
        "options.fourier_fraction",
    ),
    Deviation(
        ("e2vpt",),
        "prompt lengths",
        "per task, mostly 10 visual / 5 key-value (E2VPT command.txt l.63-107)",
        "VPT-deep's per-task lengths",
        "official",
        "params/paper.yaml sets E2VPT's own lengths",
        "options.kv_tokens",
    ),
    Deviation(
        ("e2vpt",),
        "prompt pruning",
        "after the lr/wd search, train once, score each visual prompt token and each of its segments by the loss "
        "gradient of a mask on it, averaged over the training set, and list masks of growing size (E2VPT "
        "tune_vtab_PruningRewind_CVK.py::cal_mt_mtp l.348; src/engine/trainer.py l.359-557)",
        "not implemented: every prompt token trains to the end",
        "ours",
        "our E2VPT is E2VPT before pruning: its accuracy and parameter count are the unpruned model's",
    ),
    Deviation(
        ("e2vpt",),
        "prompt rewinding",
        "retrain from the initialisation once per (tokens, segments) mask, keep the mask best on val, then the 5 "
        "final seeds with it (tune_vtab_PruningRewind_CVK.py l.208-239, l.576-625)",
        "not implemented: one training per seed",
        "ours",
        "rewinding needs the pruning above; together they multiply a run's training several times over",
    ),
    Deviation(
        ("vpt_shallow",),
        "prompt lengths",
        "per task, searched over 1-200 separately for VPT-shallow; the values are in VPT's hyper-parameter "
        "sheet (vpt README l.138-140), whose link is dead",
        "VPT-deep's per-task lengths (params/paper.yaml tasks.<t>.train.num_tokens)",
        "ours",
        "VPT-shallow's own lengths are not recoverable; set tasks.<t>.methods.vpt_shallow.num_tokens where known",
    ),
    Deviation(
        ("vfpt", "e2vpt"),
        "batch size",
        "64 on VTAB (E2VPT command.txt, VFPT base-prompt_fourier.yaml)",
        "128, VPT's",
        "ours",
        "one protocol for every method; the lr search absorbs the scale",
    ),
    Deviation(
        ("vpt_shallow", "vpt_deep", "vfpt"),
        "Swin: prompts in windows",
        "prompts expanded window-major while windows are batch-major: with more than one image per batch a window "
        "attends to another image's prompts (vpt src/models/vit_prompt/swin_transformer.py, PromptedSwinBlock)",
        "each window joined to its own image's prompts (pae.prompts.swin)",
        "ours",
        "a batch-size-dependent mix-up, not a method; the two agree at batch size 1 (tests/test_swin.py)",
    ),
    Deviation(
        ("vpt_deep", "vfpt"),
        "Swin: prompt dropout mask",
        "a mask per image for the first prompts, one per batch for the deep ones (vpt swin_transformer.py l.169, "
        "l.255; VFPT's Swin code the same)",
        "prompt_dropout_mask image: one mask per image everywhere, as VPT's ViT code",
        "official",
        "the base methods as their code runs them (prompt_dropout_mask official -> deep_batch on Swin)",
    ),
)


def _methods(methods: tuple[str, ...]) -> str:
    groups = {VPT_FAMILY + BPT: "every method", VPT_FAMILY: "linear, VPT, VFPT, E2VPT, iVPT", BPT: "BPT (all six)"}
    return groups.get(methods, ", ".join(methods))


def markdown_table() -> str:
    """The README's deviations table."""
    lines = ["| method | point | official code | ours | default | why |", "|---|---|---|---|---|---|"]
    for d in DEVIATIONS:
        lines.append(f"| {_methods(d.methods)} | {d.point} | {d.official} | {d.ours} | {d.default} | {d.why} |")
    return "\n".join(lines)
