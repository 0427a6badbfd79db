"""One training run: a prompt method on a frozen ViT, VPT's optimisation recipe, outputs + MLflow.

SGD (momentum 0.9) with linear warmup and cosine decay, weight decay on everything except biases of
the head; bf16 autocast and ``torch.compile`` on GPUs; the data stays on the device as uint8 and
metrics accumulate on the device, so the inner loop never waits for the host.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from .backbones import DEFAULT_ARCH, describe, load_backbone
from .data import FINAL_SPLITS, TUNE_SPLITS, DataSpec, ImageTensors, content_sha256, load_split, train_input
from .config import flatten
from .diagnostics import convergence_epoch, oscillation_summary
from .evaluate import evaluate
from .errors import PaeError
from .evolution import PAE, PAEOptions
from .evolution.pae import discover, record_prompts
from .prompts import METHODS, MethodOptions, PromptedViT, build_model
from .reports.tables import write_csv
from .tracking import Tracker, git_provenance


@dataclass
class TrainConfig:
    """Everything one run depends on; ``lr`` is the actual learning rate (no batch/256 scaling)."""

    data_kind: str = "digits"
    data_root: str | None = None
    data_name: str | None = None
    task_group: str = "other"  # VTAB group (natural | specialized | structured), fgvc or other: for group means
    protocol: str = "final"  # final: train800val200 -> test (VTAB); tune: train800 -> val200 (+test)
    arch: str = DEFAULT_ARCH
    weights: str | None = None
    img_size: int = 224
    method: str = "vpt_deep"
    options: MethodOptions = field(default_factory=MethodOptions)  # the method's settings (prompt length, ...)
    pae: PAEOptions = field(default_factory=PAEOptions)  # PAE's parts and settings; all off: the base method
    init_prompts: str | None = None  # MPA's prompts from `pae.cli init-prompts` (computed here when not given)
    epochs: int = 100
    warmup_epochs: int = 10
    lr: float = 0.25
    weight_decay: float = 0.001
    optimizer: str = "sgd"
    momentum: float = 0.9
    schedule_unit: str = "step"  # step: per-iteration warmup/cosine; epoch: VPT's per-epoch stepping
    batch_size: int = 128
    eval_batch_size: int = 512
    seed: int = 42
    device: str = "auto"
    threads: int = 0  # CPU threads for torch (0: torch's default); the pipeline sets its job's share
    precision: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    compile: bool = False
    out_dir: str = "results/run"
    cache_dir: str = "data/prepared"
    mlflow: bool = True
    experiment: str = "pae"
    tags: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        checks = [
            (self.method in METHODS, f"unknown method '{self.method}'", f"use one of: {', '.join(METHODS)}"),
            (self.protocol in ("final", "tune"), f"unknown protocol '{self.protocol}'", "use 'final' or 'tune'"),
            (self.optimizer in ("sgd", "adamw"), f"unknown optimizer '{self.optimizer}'", "use 'sgd' or 'adamw'"),
            (self.schedule_unit in ("step", "epoch"), f"unknown schedule_unit '{self.schedule_unit}'", "use 'step' or 'epoch'"),
            (self.precision in ("auto", "fp32", "bf16"), f"unknown precision '{self.precision}'", "use auto, fp32 or bf16"),
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}", "set epochs to a positive integer"),
            (0 <= self.warmup_epochs < self.epochs or self.warmup_epochs == 0,
             f"warmup_epochs={self.warmup_epochs} must be below epochs={self.epochs}", "reduce warmup_epochs"),
            (self.lr > 0, f"lr must be positive, got {self.lr}", "set a positive learning rate"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}", "set weight_decay >= 0"),
            (self.batch_size >= 1 and self.eval_batch_size >= 1, "batch sizes must be >= 1", "set positive batch sizes"),
            (0 <= self.options.prompt_dropout < 1, f"prompt_dropout must be in [0, 1), got {self.options.prompt_dropout}",
             "set it in [0, 1)"),
            (self.img_size >= 14, f"img_size {self.img_size} is too small", "use at least one patch, e.g. 224"),
        ]
        for ok, problem, fix in checks:
            if not ok:
                raise PaeError(problem + ".", fix + ".")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PaeError(f"device '{name}' requested but CUDA is not available.", "use --device cpu or auto.")
    return torch.device(name)


def lr_at(t: int, total: int, warmup: int, base: float) -> float:
    """VPT's WarmupCosineSchedule: linear from 0 over ``warmup`` units, then cosine to 0 at ``total``."""
    if t < warmup:
        return base * t / max(1, warmup)
    progress = (t - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: PromptedViT, pae: PAE, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Weight decay on all trainable tensors except the head's bias (VPT). PAE's U, K, L decay under SGD and
    not under AdamW, as in the official code."""
    decay = [p for n, p in model.named_parameters() if p.requires_grad and n != "head.bias"]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": [model.head.bias], "weight_decay": 0.0}]
    if pae.regularizer is not None:
        groups.append({"params": list(pae.regularizer.parameters()),
                       "weight_decay": cfg.weight_decay if cfg.optimizer == "sgd" else 0.0})
    fused = {"fused": True} if next(model.parameters()).is_cuda else {}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, **fused)
    return torch.optim.AdamW(groups, lr=cfg.lr, **fused)


def sample_batch(spec: DataSpec, data: ImageTensors, n: int, img_size: int, seed: int,
                 offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random training images as model input (training augmentation) and their labels, fixed by ``seed``.

    ``offset`` skips that many images of the same permutation: a batch disjoint from the one at offset 0."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data), generator=gen)[offset:offset + n].to(data.labels.device)
    sizes = None if data.sizes is None else data.sizes[idx]
    return train_input(spec, data.images[idx], sizes, img_size, gen), data.labels[idx]


def load_init_prompts(path: str | Path) -> tuple[torch.Tensor, dict]:
    """The (depth, p, d) prompts and the MPA record written by `pae.cli init-prompts`."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return f.get_tensor("prompts"), json.loads(f.metadata()["record"])
    except (OSError, KeyError, ValueError, SafetensorError) as exc:
        raise PaeError(f"initial prompts '{path}' cannot be read ({exc}).", "rerun `pae.cli init-prompts` for this task and seed.") from exc


RUN_FILES = ("checkpoint.safetensors", "config.json", "grad_norms.csv", "history.csv", "metrics.json", "shortcuts.json")


def check_out_dir(out_dir: str | Path) -> Path:
    """Refuse, before any work, a folder that holds anything but an earlier run's outputs: it gets replaced."""
    out = Path(out_dir).resolve()
    if out.exists() and not out.is_dir():
        raise PaeError(f"output path '{out}' is a file, not a folder.", "choose a new --out-dir.")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in RUN_FILES) if out.is_dir() else []
    if foreign:
        raise PaeError(f"output folder '{out}' holds files that are not a run's outputs (first: '{foreign[0]}'); "
                       "a run replaces its whole folder.", "choose an empty or new --out-dir; nothing was touched.")
    return out


def _write_outputs(out_dir: Path, cfg: TrainConfig, outputs: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Write everything into a sibling temp folder, then swap it in: a crash never leaves half a run.

    ``outputs`` maps file names to content: a dict (JSON) or a list of row dicts (CSV)."""
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, content in outputs.items():
        if name.endswith(".json"):
            (tmp / name).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
        elif content:
            write_csv(content, tmp / name)
    (tmp / "config.json").write_text(json.dumps(asdict(cfg), indent=2, sort_keys=True) + "\n")
    save_file(tensors, str(tmp / "checkpoint.safetensors"), metadata={"config": json.dumps(asdict(cfg))})
    old = out_dir.with_name(f".{out_dir.name}.old")
    if out_dir.exists():
        shutil.rmtree(old, ignore_errors=True)
        out_dir.rename(old)
    tmp.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)


def train(cfg: TrainConfig) -> dict:
    """Run one training job end to end and return its final metrics."""
    from tqdm import tqdm

    cfg.validate()
    out_dir = check_out_dir(cfg.out_dir)
    device = resolve_device(cfg.device)
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    spec = DataSpec(cfg.data_kind, cfg.data_root, cfg.data_name)
    train_split, eval_splits = (FINAL_SPLITS if cfg.protocol == "final" else TUNE_SPLITS)[spec.kind]
    train_data = load_split(spec, train_split, cfg.img_size, cfg.cache_dir, for_training=True).to(device)
    evals = {s: load_split(spec, s, cfg.img_size, cfg.cache_dir).to(device) for s in eval_splits}
    selection_split = eval_splits[0]  # val200 under "tune", test under "final" (VTAB's protocol)
    num_classes = len(train_data.classes)
    backbone = load_backbone(cfg.arch, cfg.weights, cfg.img_size)
    model = build_model(cfg.method, backbone, num_classes, **asdict(cfg.options)).to(device)
    method = model.method
    method.fit_to_data(model.backbone, sample_batch(spec, train_data, cfg.options.fit_images, cfg.img_size, cfg.seed)[0])
    pae = PAE(cfg.pae, method, backbone.embed_dim).to(device)
    shortcuts = {}
    if cfg.pae.init:
        if cfg.init_prompts:
            prompts, shortcuts = load_init_prompts(cfg.init_prompts)
        else:
            start = time.perf_counter()
            x, y = sample_batch(spec, train_data, cfg.pae.init_images, cfg.img_size, cfg.seed)
            shortcuts = discover(cfg.pae, model.backbone, x, y, num_classes, method.num_tokens, cfg.seed)
            prompts = record_prompts(model.backbone, x, shortcuts, len(model.backbone.blocks))
            shortcuts["seconds"] = time.perf_counter() - start
        pae.initialize(method, prompts)
    torch.manual_seed(cfg.seed + 1)  # training's randomness starts the same whether MPA ran here or in its own stage
    forward = torch.compile(model) if cfg.compile else model
    opt = make_optimizer(model, pae, cfg)
    n = len(train_data)
    steps = math.ceil(n / cfg.batch_size)
    unit_total, unit_warm = (cfg.epochs * steps, cfg.warmup_epochs * steps) if cfg.schedule_unit == "step" else (cfg.epochs, cfg.warmup_epochs)
    gen = torch.Generator().manual_seed(cfg.seed)
    n_trainable = sum(p.numel() for p in model.trainable_parameters())
    n_prompt = sum(p.numel() for p in method.parameters() if p.requires_grad)
    n_layers = len(method.layer_grad_norms())
    step_grad_norms = torch.full((cfg.epochs * steps, n_layers), float("nan"), device=device)

    variant = cfg.pae.label
    tags = {"method": cfg.method, "task": spec.label, "task_group": cfg.task_group, "pae": variant,
            "data_sha256": content_sha256(train_data), **git_provenance(), **cfg.tags}
    if cfg.weights:
        tags.update(describe(cfg.weights))
    tracker = Tracker(cfg.experiment, f"{spec.label}/{cfg.method}/{variant}/seed{cfg.seed}", enabled=cfg.mlflow)
    history: list[dict] = []
    ok = False
    start = time.perf_counter()

    def evaluate_all() -> dict[str, float]:
        return {f"{s}_top1": evaluate(forward, d, cfg.eval_batch_size, use_bf16) for s, d in evals.items()}

    try:
        tracker.log_params({k: v for k, v in flatten(cfg).items() if not k.startswith("tags")}, tags)
        # Epoch 0 is the untrained starting point (after PAE's init, if on): every learning curve starts here.
        nan = float("nan")
        start_row = {"epoch": 0, "lr": 0.0, "train_loss": nan, "train_top1": nan, "koopman_loss": nan,
                     "lyapunov_loss": nan, **evaluate_all(), **{f"grad_norm_l{i}": nan for i in range(n_layers)},
                     **pae.diagnostics(method)}
        history.append(start_row)
        tracker.log_metrics({k: v for k, v in start_row.items() if k != "epoch" and math.isfinite(v)}, step=0)
        bar = tqdm(range(cfg.epochs), desc=f"{spec.label}/{cfg.method}/{variant}", unit="epoch", leave=False)
        for epoch in bar:
            model.train()
            sums = torch.zeros(3, device=device)  # cross-entropy, L_kp, L_stab (weighted by batch size)
            correct = torch.zeros((), dtype=torch.int64, device=device)
            perm = torch.randperm(n, generator=gen).to(device)
            for step in range(steps):
                t = epoch * steps + step if cfg.schedule_unit == "step" else epoch
                for group in opt.param_groups:
                    group["lr"] = lr_at(t, unit_total, unit_warm, cfg.lr)
                idx = perm[step * cfg.batch_size:(step + 1) * cfg.batch_size]
                sizes = None if train_data.sizes is None else train_data.sizes[idx]
                x = train_input(spec, train_data.images[idx], sizes, cfg.img_size, gen)
                y = train_data.labels[idx]
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                    logits = forward(x)
                ce = F.cross_entropy(logits.float(), y)
                loss, terms = ce, {}
                if pae.regularizer is not None:
                    reg, terms = pae.loss(method)
                    loss = ce + reg
                opt.zero_grad(set_to_none=True)
                loss.backward()
                pae.clip_gradients()
                if n_layers:
                    step_grad_norms[epoch * steps + step] = method.layer_grad_norms()
                opt.step()
                sums += torch.stack([ce.detach(), terms.get("koopman", ce.new_zeros(())).detach(),
                                     terms.get("lyapunov", ce.new_zeros(())).detach()]) * y.numel()
                correct += (logits.argmax(1) == y).sum()
            train_loss, koopman_loss, lyapunov_loss = (sums / n).tolist()
            if not math.isfinite(train_loss + koopman_loss + lyapunov_loss):
                raise PaeError(f"training diverged at epoch {epoch + 1}: the loss is {train_loss} "
                               f"(L_kp {koopman_loss}, L_stab {lyapunov_loss}).",
                               "lower the learning rate (or use precision fp32); no results were written.")
            row = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"], "train_loss": train_loss,
                   "train_top1": 100.0 * correct.item() / n,
                   "koopman_loss": koopman_loss if pae.regularizer is not None else nan,
                   "lyapunov_loss": lyapunov_loss if cfg.pae.lyapunov else nan}
            row.update(evaluate_all())
            epoch_norms = step_grad_norms[epoch * steps:(epoch + 1) * steps].mean(0).tolist()
            row.update({f"grad_norm_l{i}": v for i, v in enumerate(epoch_norms)})
            row.update(pae.diagnostics(method))
            history.append(row)
            tracker.log_metrics({k: v for k, v in row.items() if k != "epoch" and math.isfinite(v)}, step=epoch + 1)
            bar.set_postfix(loss=f"{train_loss:.3f}", **{s: f"{row[f'{s}_top1']:.1f}" for s in evals})
        wall = time.perf_counter() - start
        grad_rows = [{"step": i + 1, **{f"grad_norm_l{l}": v for l, v in enumerate(r)}}
                     for i, r in enumerate(step_grad_norms.tolist())] if n_layers else []
        selection = [r[f"{selection_split}_top1"] for r in history]
        metrics = {
            "task": spec.label, "task_group": cfg.task_group, "method": cfg.method, "pae": variant, "seed": cfg.seed,
            "epochs": cfg.epochs, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "protocol": cfg.protocol,
            "backbone": cfg.arch, "backbone_source": tags.get("pae.source", "random weights"),
            "trainable_params": n_trainable, "prompt_params": n_prompt,
            "pae_params": sum(p.numel() for p in pae.parameters()), "wall_time_s": wall,
            "pae_init_s": shortcuts.get("seconds", 0.0),
            **{f"final_{s}_top1": history[-1][f"{s}_top1"] for s in evals},
            **{f"best_{s}_top1": max(r[f"{s}_top1"] for r in history[1:]) for s in evals},
            **{f"initial_{s}_top1": start_row[f"{s}_top1"] for s in evals},
            "selection_split": selection_split, "convergence_epoch": convergence_epoch(selection),
            "final_train_loss": history[-1]["train_loss"], "mlflow_run_id": tracker.run_id,
            # oscillation over epochs (per-epoch mean norms): per-step norms mostly measure minibatch noise
            **(oscillation_summary(history[1:]) if n_layers else {}),
            **pae.diagnostics(method),
        }
        # undefined statistics (e.g. oscillation of a run too short for the window) are null: JSON has no NaN
        metrics = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in metrics.items()}
        tensors = {n: p.detach().float().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        tensors.update({f"method.{n}": b.detach().float().cpu().contiguous() for n, b in method.named_buffers()})
        tensors.update({f"pae.{n}": p.detach().float().cpu().contiguous() for n, p in pae.named_parameters()})
        outputs = {"metrics.json": metrics, "history.csv": history, "grad_norms.csv": grad_rows}
        if shortcuts:
            outputs["shortcuts.json"] = shortcuts
        _write_outputs(out_dir, cfg, outputs, tensors)
        tracker.log_metrics({k: v for k, v in metrics.items()  # per-epoch series are logged already
                             if isinstance(v, (int, float)) and math.isfinite(v) and k not in history[-1]}, step=cfg.epochs)
        tracker.log_artifacts(out_dir)
        ok = True
        return metrics
    finally:
        tracker.finish(ok)
