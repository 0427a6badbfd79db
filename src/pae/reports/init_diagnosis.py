"""Why a run with PAE's task-aware init (MPA) starts where it does: its model at epoch 0 against the same method's
seeded random init, measured block by block on the same training images.

Both models are rebuilt from their run folders' config.json exactly as training builds them (``pae.build``: the same
seed gives the same head and, without PAE, the same random prompts that MPA's prompts replace), in eval mode, and
checked against the epoch-0 top-1 each run recorded. Per block ``l`` it measures the tokens entering the block
(mean L2 norm of the prompt tokens, the patch tokens and [CLS]), the attention probabilities of the block (recomputed
from its qkv weights on its LayerNorm-ed input: timm's fused attention never forms them) as the share of [CLS]'s and
of the patch tokens' attention that lands on prompt keys, and the cosine of the prompts to the mean patch token and
to each other; for the whole model the epoch-0 cross-entropy and top-1, and the prompt gradient per layer relative to
the prompts' own norm (how far one step can move them).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.catalogue import arch_family
from ..build import LoadedTask, load_task, run_model, run_pae, sample_batch
from ..config.train import TrainConfig
from ..diagnostics import finite_median
from ..errors import PaeError
from ..evaluate import predictions, top1
from ..files import atomic_write, read_json, write_json, write_text
from ..prompts import PromptedViT, PromptMethod
from ..prompts.base import fused_qkv
from ..run_folder import CONFIG, METRICS, top1_key

SAME_RUN_FIELDS = ("data_kind", "data_root", "data_name", "img_size", "arch", "weights", "method", "seed", "head_init")
TOLERANCE = 0.5  # top-1 points: as `evaluate`, the rebuilt epoch-0 model must give the run's recorded start
INITS = ("mpa", "random")


# ---------------------------------------------------------------------------------------------- per block


def attention_probabilities(attn: nn.Module, x: torch.Tensor, extra_keys: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax attention (B, heads, T, T + n) of timm's ``Attention`` on its input ``x`` (B, T, d), the block's
    LayerNorm-ed tokens; ``extra_keys`` (B, heads, n, head_dim) are appended after the sequence's keys, as E2VPT's
    key prompts are (``prompts.kv_attention``)."""
    b, t, _ = x.shape
    qkv = fused_qkv(attn)(x).reshape(b, t, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    if extra_keys is not None:
        k = torch.cat([k, extra_keys.to(k.dtype)], dim=2)
    return ((q * attn.scale) @ k.transpose(-2, -1)).softmax(-1)


def token_norms(x: torch.Tensor, n_prefix: int, n_prompt: int) -> dict[str, float]:
    """Mean L2 norm of the prompt tokens, the patch tokens and [CLS] in a sequence (B, prefix + prompts + N, d)."""
    norms = x.float().norm(dim=-1)
    prompt = norms[:, n_prefix : n_prefix + n_prompt].mean().item() if n_prompt else math.nan
    patch = norms[:, n_prefix + n_prompt :].mean().item()
    return {
        "prompt_norm": prompt,
        "patch_norm": patch,
        "cls_norm": norms[:, 0].mean().item(),
        "norm_ratio": prompt / patch,
    }


def prompt_attention(probs: torch.Tensor, n_prefix: int, n_prompt: int) -> dict[str, float]:
    """Share of [CLS]'s and of the patch tokens' attention on the prompt keys and on any extra (key-prompt) keys
    after the sequence, averaged over heads, images and patch queries; ``uniform_share`` is the prompts' share
    under uniform attention, the level at which prompts are attended like any other token."""
    t, keys = probs.shape[2], probs.shape[3]
    prompts, patches = slice(n_prefix, n_prefix + n_prompt), slice(n_prefix + n_prompt, t)
    return {
        "cls_to_prompts": probs[:, :, 0, prompts].sum(-1).mean().item(),
        "patches_to_prompts": probs[:, :, patches, prompts].sum(-1).mean().item(),
        "cls_to_key_prompts": probs[:, :, 0, t:].sum(-1).mean().item(),
        "patches_to_key_prompts": probs[:, :, patches, t:].sum(-1).mean().item(),
        "uniform_share": n_prompt / keys,
        "keys": keys,
    }


def prompt_cosines(x: torch.Tensor, n_prefix: int, n_prompt: int) -> dict[str, float]:
    """Mean cosine of each prompt token to its image's mean patch token, and between two prompts of the sequence
    (NaN where there are too few prompts): whether the prompts are patch-like, and whether they are distinct."""
    x = x.float()
    prompts, patches = x[:, n_prefix : n_prefix + n_prompt], x[:, n_prefix + n_prompt :]
    mean_patch = patches.mean(1, keepdim=True)
    to_patch = F.cosine_similarity(prompts, mean_patch, dim=-1).mean().item() if n_prompt else math.nan
    if n_prompt < 2:
        return {"cos_to_mean_patch": to_patch, "cos_between_prompts": math.nan}
    unit = F.normalize(prompts, dim=-1)
    gram = unit @ unit.transpose(1, 2)
    off_diagonal = ~torch.eye(n_prompt, dtype=torch.bool, device=x.device)
    return {"cos_to_mean_patch": to_patch, "cos_between_prompts": gram[:, off_diagonal].mean().item()}


def block_stats(
    attn: nn.Module,
    x: torch.Tensor,
    normed: torch.Tensor,
    n_prefix: int,
    n_prompt: int,
    extra_keys: torch.Tensor | None,
) -> dict[str, float]:
    """Everything measured at one block, from its input ``x`` and its LayerNorm-ed input ``normed``."""
    probs = attention_probabilities(attn, normed, extra_keys)
    return {
        **token_norms(x, n_prefix, n_prompt),
        **prompt_attention(probs, n_prefix, n_prompt),
        **prompt_cosines(x, n_prefix, n_prompt),
        "prompt_tokens": n_prompt,
    }


def traced_forward(model: PromptedViT, images: torch.Tensor) -> tuple[torch.Tensor, list[dict[str, float]]]:
    """The model's logits and ``block_stats`` of every block, read by a hook on each block's first LayerNorm, so
    the model runs its own forward (prompt insertion, iVPT's token edits, E2VPT's key prompts) untouched. A method
    that calls a block's norm before the block does (iVPT) is overwritten by the block's own call, the last one."""
    bb = model.backbone
    n_prefix, n_patches = bb.num_prefix_tokens, bb.patch_embed.num_patches
    stats: dict[int, dict[str, float]] = {}

    def hook(layer: int, attn: nn.Module) -> Callable[..., None]:
        def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            x = inputs[0].detach()
            kv = model.method.kv_prompts(layer, x.shape[0])
            with torch.no_grad():
                stats[layer] = block_stats(
                    attn,
                    x,
                    output.detach(),
                    n_prefix,
                    x.shape[1] - n_prefix - n_patches,
                    None if kv is None else kv[0].detach(),
                )

        return record

    handles = [block.norm1.register_forward_hook(hook(i, block.attn)) for i, block in enumerate(bb.blocks)]
    try:
        logits = model(images)
    finally:
        for handle in handles:
            handle.remove()
    return logits, [stats[i] for i in range(len(bb.blocks))]


# ---------------------------------------------------------------------------------------------- per model


def layer_parameter_norms(method: PromptMethod) -> torch.Tensor:
    """L2 norm per prompt layer over the same per-layer tensors ``layer_grad_norms`` reads."""
    params = method.per_layer_parameters()
    return sum(p.detach().flatten(1).float().pow(2).sum(1) for p in params).sqrt()


def measure(model: PromptedViT, images: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """Epoch-0 loss, top-1, per-block stats, and per prompt layer the CE gradient's norm relative to the prompts'
    norm: the share of itself a prompt moves per unit learning rate."""
    model.zero_grad(set_to_none=True)
    logits, layers = traced_forward(model, images)
    loss = F.cross_entropy(logits.float(), labels)
    loss.backward()
    grads, norms = model.method.layer_grad_norms().cpu(), layer_parameter_norms(model.method).cpu()
    model.zero_grad(set_to_none=True)
    return {
        "loss": loss.item(),
        "top1": 100.0 * (logits.argmax(1) == labels).float().mean().item(),
        "layers": layers,
        "prompt_grad_norm": grads.tolist(),
        "prompt_param_norm": norms.tolist(),
        "relative_grad": (grads / norms).tolist(),
    }


def recorded_start(model: PromptedViT, task: LoadedTask, cfg: TrainConfig, metrics: dict) -> dict[str, float]:
    """The rebuilt model's top-1 on the run's first evaluation split against the epoch-0 top-1 the run recorded:
    a mismatch means this is not the model the run started from."""
    split, data = next(iter(task.evals.items()))
    with torch.no_grad():
        predicted = predictions(lambda x: model(x).argmax(-1), data, cfg.eval_batch_size, False)
    measured = top1(predicted, data.labels).item()
    recorded = metrics.get(top1_key(split, "initial"))
    if recorded is None or abs(measured - recorded) > TOLERANCE:
        raise PaeError(
            f"the rebuilt epoch-0 model of '{cfg.out_dir}' gives {split} top-1 {measured:.2f}, but the run "
            f"recorded {recorded} at epoch 0.",
            "diagnose runs trained by this code version (rerun them), with the files their config.json names.",
        )
    return {"split": split, "measured": measured, "recorded": recorded}


def epoch0_model(cfg: TrainConfig, task: LoadedTask) -> PromptedViT:
    """The run's model as training starts it: method and head from the seed, MPA's prompts written when init is on."""
    model = run_model(cfg, task)
    run_pae(cfg, task, model)
    return model.eval()


# ---------------------------------------------------------------------------------------------- the two runs


def check_pair(pae_cfg: TrainConfig, base_cfg: TrainConfig) -> None:
    """The two runs must be one task, backbone, method and seed, the first with PAE's init and the second without."""
    if not pae_cfg.pae.init:
        raise PaeError(
            f"the --pae-run '{pae_cfg.out_dir}' has PAE's init off.",
            "pass a run with PAE's init (folders init or all).",
        )
    if base_cfg.pae.init:
        raise PaeError(
            f"the --base-run '{base_cfg.out_dir}' has PAE's init on.",
            "pass the same method's run without PAE (folder none).",
        )
    for name in SAME_RUN_FIELDS:
        if getattr(pae_cfg, name) != getattr(base_cfg, name):
            raise PaeError(
                f"the runs differ in '{name}' ({getattr(pae_cfg, name)!r} vs {getattr(base_cfg, name)!r}).",
                "pass two runs of the same task, backbone, method and seed.",
            )
    if pae_cfg.options.num_tokens != base_cfg.options.num_tokens:
        raise PaeError(
            f"the runs have {pae_cfg.options.num_tokens} and {base_cfg.options.num_tokens} prompt tokens.",
            "pass two runs with the same num_tokens (or give --num-tokens).",
        )


def with_tokens(cfg: TrainConfig, num_tokens: int) -> TrainConfig:
    """The run rebuilt with ``num_tokens`` prompts; MPA is then rediscovered in process (the run's prompt file
    holds its own count), as training does without a prompt file."""
    if num_tokens < 1:
        raise PaeError(f"--num-tokens must be >= 1, got {num_tokens}.", "give a positive prompt count.")
    return replace(cfg, options=replace(cfg.options, num_tokens=num_tokens), init_prompts=None)


def diagnose(
    pae_cfg: TrainConfig, base_cfg: TrainConfig, images: int = 256, recorded: tuple[dict, dict] | None = None
) -> dict[str, Any]:
    """Both runs' epoch-0 models measured on the same ``images`` training images; with ``recorded`` (the runs'
    metrics.json), each rebuilt model is first checked against the epoch-0 top-1 its run recorded."""
    pae_cfg, base_cfg = pae_cfg.resolved(), base_cfg.resolved()
    for cfg in (pae_cfg, base_cfg):
        cfg.validate()
    check_pair(pae_cfg, base_cfg)
    if arch_family(base_cfg.arch) != "vit":
        raise PaeError(
            f"the init diagnosis measures [CLS] attention and the tokens of a ViT; '{base_cfg.arch}' is a Swin.",
            "diagnose a ViT run pair; on Swin compare the runs' epoch-0 top-1 in their history.csv instead.",
        )
    if images < 1:
        raise PaeError(f"--images must be >= 1, got {images}.", "measure on at least one training image.")
    task = load_task(base_cfg, evaluation=recorded is not None)
    x, y = sample_batch(task, images, base_cfg.img_size, base_cfg.seed)
    models = {"mpa": epoch0_model(pae_cfg, task), "random": epoch0_model(base_cfg, task)}
    bb = task.backbone
    result: dict[str, Any] = {
        "pae_run": pae_cfg.out_dir,
        "base_run": base_cfg.out_dir,
        "task": task.spec.label,
        "method": base_cfg.method,
        "seed": base_cfg.seed,
        "images": len(y),
        "num_tokens": base_cfg.options.num_tokens,
        "patch_tokens": bb.patch_embed.num_patches,
        "prefix_tokens": bb.num_prefix_tokens,
        "same_head": torch.equal(models["mpa"].head.weight, models["random"].head.weight),
    }
    for (init, model), cfg, metrics in zip(models.items(), (pae_cfg, base_cfg), recorded or (None, None)):
        result[init] = measure(model, x, y)
        if metrics is not None:
            result[init]["recorded_start"] = recorded_start(model, task, cfg, metrics)
    return result


def read_config(run_dir: str | Path) -> TrainConfig:
    """A run folder's TrainConfig, as training wrote it."""
    return TrainConfig.from_dict(read_json(Path(run_dir) / CONFIG, "pass a finished run folder (with config.json)."))


def diagnose_runs(
    pae_run: str | Path, base_run: str | Path, images: int = 256, num_tokens: int | None = None
) -> dict[str, Any]:
    """``diagnose`` on two finished run folders; with ``num_tokens`` both are rebuilt with that many prompts instead
    (no recorded start to check against then)."""
    cfgs = [read_config(run) for run in (pae_run, base_run)]
    if num_tokens is not None:
        return diagnose(*(with_tokens(cfg, num_tokens) for cfg in cfgs), images=images)
    metrics = tuple(
        read_json(Path(run) / METRICS, "pass a finished run folder (it holds metrics.json).")
        for run in (pae_run, base_run)
    )
    return diagnose(*cfgs, images=images, recorded=metrics)


# ---------------------------------------------------------------------------------------------- the outputs


def series(result: dict, init: str, key: str) -> list[float]:
    return [layer[key] for layer in result[init]["layers"]]


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: -math.inf if math.isnan(values[i]) else values[i])


def finding(result: dict) -> str:
    """Four sentences from the measured numbers: loss, norm, attention, and how far a gradient step moves prompts."""
    mpa, rnd = result["mpa"], result["random"]
    ratio = {i: series(result, i, "norm_ratio") for i in INITS}
    cls = {i: [100 * v for v in series(result, i, "cls_to_prompts")] for i in INITS}
    top_ratio, top_cls = _argmax(ratio["mpa"]), _argmax(cls["mpa"])
    first = result["mpa"]["layers"][0]
    step = finite_median(mpa["relative_grad"]) / finite_median(rnd["relative_grad"])
    between = {i: finite_median(series(result, i, "cos_between_prompts")) for i in INITS}
    distinct = (
        ""
        if math.isnan(between["mpa"])
        else (
            f", and the MPA prompts of a layer have a mean pairwise cosine of {between['mpa']:.4f} (random "
            f"{between['random']:.2f}; medians over layers)"
        )
    )
    return (
        f"At epoch 0, with the same head{'' if result['same_head'] else ' (not: the heads differ)'}, the MPA prompts "
        f"give a cross-entropy of {mpa['loss']:.2f} and top-1 {mpa['top1']:.1f}% on {result['images']} training "
        f"images, the random prompts {rnd['loss']:.2f} and {rnd['top1']:.1f}%. "
        f"Entering the blocks, the MPA prompts are {min(ratio['mpa']):.2g}-{max(ratio['mpa']):.2g}x the mean "
        f"patch-token norm (largest at layer {top_ratio}), the random ones {min(ratio['random']):.2g}-"
        f"{max(ratio['random']):.2g}x. "
        f"They take {sum(cls['mpa']) / len(cls['mpa']):.0f}% of [CLS]'s attention averaged over the layers (up to "
        f"{cls['mpa'][top_cls]:.0f}% at layer {top_cls}) against {sum(cls['random']) / len(cls['random']):.0f}% "
        f"(up to {max(cls['random']):.0f}%) for the random prompts; uniform attention over the {first['keys']} keys "
        f"would give the prompts {100 * first['uniform_share']:.0f}%. "
        f"The CE gradient relative to the prompts' own norm (median over prompt layers) is {step:.2g}x the random "
        f"prompts' ({finite_median(mpa['relative_grad']):.2g} vs {finite_median(rnd['relative_grad']):.2g}){distinct}."
    )


def _cell(value: float, digits: str = ".2f") -> str:
    return "–" if value is None or not math.isfinite(value) else format(value, digits)


def markdown(result: dict) -> str:
    """The finding, the epoch-0 loss per init and one table row per block."""
    mpa, rnd = result["mpa"], result["random"]
    lines = [
        f"## Epoch-0 diagnosis of PAE's init: {result['task']} / {result['method']}, seed {result['seed']}",
        "",
        f"MPA run `{result['pae_run']}` against random-init run `{result['base_run']}`; {result['images']} "
        f"training images, {result['num_tokens']} prompts, {result['patch_tokens']} patch tokens, "
        f"{result['prefix_tokens']} prefix token(s).",
        "",
        finding(result),
        "",
        "| init | CE loss | top-1 (train images) | epoch-0 top-1 rebuilt / recorded |",
        "|---|--:|--:|--:|",
    ]
    for name, row in (("MPA", mpa), ("random", rnd)):
        start = row.get("recorded_start")
        checked = f"{start['measured']:.2f} / {start['recorded']:.2f} ({start['split']})" if start else "–"
        lines.append(f"| {name} | {row['loss']:.3f} | {row['top1']:.1f} | {checked} |")
    lines += [
        "",
        "Per block (MPA / random): prompt norm over patch-token norm, share of [CLS]'s and of the patch "
        "tokens' attention on the prompts (uniform: the share under uniform attention), cosine of the prompts "
        "to the mean patch token and between prompts, CE gradient over prompt norm.",
        "",
        "| layer | ‖patch‖ | ‖CLS‖ | ‖prompt‖/‖patch‖ | CLS→prompts % | patches→prompts % | uniform % "
        "| cos(prompt, mean patch) | cos(prompt, prompt) | ‖∇‖/‖θ‖ |",
        "|" + "--:|" * 10,
    ]
    for layer, (m, r) in enumerate(zip(mpa["layers"], rnd["layers"])):
        grads = [row["relative_grad"][layer] if layer < len(row["relative_grad"]) else math.nan for row in (mpa, rnd)]
        lines.append(
            f"| {layer} | {m['patch_norm']:.1f} | {m['cls_norm']:.1f} | {_cell(m['norm_ratio'], '.3g')} / "
            f"{_cell(r['norm_ratio'], '.3g')} | {100 * m['cls_to_prompts']:.1f} / {100 * r['cls_to_prompts']:.1f} | "
            f"{100 * m['patches_to_prompts']:.1f} / {100 * r['patches_to_prompts']:.1f} | "
            f"{100 * m['uniform_share']:.1f} | {_cell(m['cos_to_mean_patch'])} / {_cell(r['cos_to_mean_patch'])} | "
            f"{_cell(m['cos_between_prompts'], '.4f')} / {_cell(r['cos_between_prompts'])} | "
            f"{_cell(grads[0], '.2g')} / {_cell(grads[1], '.2g')} |"
        )
    if any(m["cls_to_key_prompts"] for m in mpa["layers"]):
        lines += [
            "",
            "Key prompts (E2VPT) take "
            + ", ".join(
                f"{100 * m['cls_to_key_prompts']:.0f}/{100 * r['cls_to_key_prompts']:.0f}%"
                for m, r in zip(mpa["layers"], rnd["layers"])
            )
            + " of [CLS]'s attention per layer (MPA/random).",
        ]
    return "\n".join(lines) + "\n"


def draw(result: dict, out_png: Path) -> None:
    """Page-width figure: per layer, the prompt/patch norm ratio, the attention on the prompts and the relative
    gradient, MPA against random."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(7.0, 2.4), layout="constrained")
    norm_ax, attn_ax, grad_ax = fig.subplots(1, 3)
    layers = range(len(result["mpa"]["layers"]))
    for init, colour in zip(INITS, ("tab:red", "tab:blue")):
        label = "MPA" if init == "mpa" else "random"
        norm_ax.plot(layers, series(result, init, "norm_ratio"), "o-", ms=3, color=colour, label=label)
        attn_ax.plot(
            layers,
            [100 * v for v in series(result, init, "cls_to_prompts")],
            "o-",
            ms=3,
            color=colour,
            label=f"{label}: CLS",
        )
        attn_ax.plot(
            layers,
            [100 * v for v in series(result, init, "patches_to_prompts")],
            ":",
            color=colour,
            label=f"{label}: patches",
        )
        grad = result[init]["relative_grad"]
        grad_ax.plot(range(len(grad)), grad, "o-", ms=3, color=colour, label=label)
    attn_ax.plot(
        layers, [100 * v for v in series(result, "mpa", "uniform_share")], "--", color="grey", lw=1, label="uniform"
    )
    for ax, title in (
        (norm_ax, "‖prompt‖ / ‖patch‖"),
        (attn_ax, "attention on prompts (%)"),
        (grad_ax, "‖∇CE‖ / ‖prompt‖"),
    ):
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("layer", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    norm_ax.set_yscale("log")
    grad_ax.set_yscale("log")
    norm_ax.legend(fontsize=6)
    attn_ax.legend(fontsize=6)
    fig.suptitle(f"{result['task']} / {result['method']}: epoch 0, MPA vs random prompts", fontsize=9)
    fig.savefig(str(out_png), dpi=150, format="png")


def write_diagnosis(
    result: dict, out_json: str | Path | None, out_md: str | Path | None, out_png: str | Path | None
) -> None:
    """The numbers (JSON, NaN as null), the Markdown report and the figure, each written atomically."""
    if out_json:
        write_json(result, out_json)
    if out_md:
        write_text(markdown(result), out_md)
    if out_png:
        atomic_write(out_png, lambda tmp: draw(result, tmp))
