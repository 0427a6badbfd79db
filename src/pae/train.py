"""One training run: a prompt method on a frozen ViT, VPT's optimisation recipe, outputs + MLflow.

SGD (momentum 0.9) with linear warmup and cosine decay, weight decay on everything except biases of
the head; bf16 autocast and ``torch.compile`` on GPUs; the data stays on the device as uint8 and
metrics accumulate on the device, so the inner loop never waits for the host.
"""
from __future__ import annotations

import csv
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
from .data import FINAL_SPLITS, TUNE_SPLITS, DataSpec, ImageTensors, eval_input, load_split, train_input
from .errors import PaeError
from .prompts import METHODS, MethodOptions, PromptedViT, build_model
from .tracking import Tracker


@dataclass
class TrainConfig:
    """Everything one run depends on; ``lr`` is the actual learning rate (no batch/256 scaling)."""

    data_kind: str = "digits"
    data_root: str | None = None
    data_name: str | None = None
    protocol: str = "final"  # final: train800val200 -> test (VTAB); tune: train800 -> val200 (+test)
    arch: str = DEFAULT_ARCH
    weights: str | None = None
    img_size: int = 224
    method: str = "vpt_deep"
    num_tokens: int = 10
    prompt_dropout: float = 0.1
    fourier_fraction: float = 0.5  # VFPT's alpha (per-task values: methods.md 6.1)
    kv_tokens: int = 5  # E2VPT's key/value prompts per layer (5 on most VTAB tasks in its command.txt)
    bpt_rank: int = 32  # BPT-bilinear's rank r (the paper: 75 at d=768)
    bpt_init: str = "xavier"  # BPT-bilinear's B: xavier | whitening
    whiten_eps: float = 1e-4  # BPT whitening ridge, relative to the largest eigenvalue
    fit_images: int = 100  # training images for data-dependent method set-up (BPT's whitening: ~100)
    ivpt_cdc: bool = True  # iVPT cross-layer dynamic connection
    ivpt_dynamic: bool = True  # iVPT input-dependent gates (dynamic aggregation)
    ivpt_ar: bool = True  # iVPT attentive reinforcement
    ivpt_top_k: int = 8  # iVPT: image tokens reinforced per block
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
            (0 <= self.prompt_dropout < 1, f"prompt_dropout must be in [0, 1), got {self.prompt_dropout}", "set it in [0, 1)"),
            (self.img_size >= 14, f"img_size {self.img_size} is too small", "use at least one patch, e.g. 224"),
            (self.fit_images >= 1, f"fit_images must be >= 1, got {self.fit_images}", "set fit_images to e.g. 100"),
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


def make_optimizer(model: PromptedViT, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Weight decay on all trainable tensors except the head's bias (VPT)."""
    decay = [p for n, p in model.named_parameters() if p.requires_grad and n != "head.bias"]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": [model.head.bias], "weight_decay": 0.0}]
    fused = {"fused": True} if next(model.parameters()).is_cuda else {}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, **fused)
    return torch.optim.AdamW(groups, lr=cfg.lr, **fused)


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: ImageTensors, batch_size: int, autocast: bool) -> float:
    """Top-1 accuracy (%); counts accumulate on the device, one host sync at the end."""
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=data.labels.device)
    for i in range(0, len(data), batch_size):
        with torch.autocast(data.images.device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(eval_input(data.images[i:i + batch_size]))
        correct += (logits.argmax(1) == data.labels[i:i + batch_size]).sum()
    return 100.0 * correct.item() / len(data)


def sample_batch(spec: DataSpec, data: ImageTensors, n: int, img_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random training images as model input (training augmentation) and their labels, fixed by ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data), generator=gen)[:n].to(data.labels.device)
    sizes = None if data.sizes is None else data.sizes[idx]
    return train_input(spec, data.images[idx], sizes, img_size, gen), data.labels[idx]


RUN_FILES = ("checkpoint.safetensors", "config.json", "history.csv", "metrics.json")


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


def _write_outputs(out_dir: Path, cfg: TrainConfig, metrics: dict, history: list[dict], model: PromptedViT) -> None:
    """Write everything into a sibling temp folder, then swap it in: a crash never leaves half a run."""
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    (tmp / "config.json").write_text(json.dumps(asdict(cfg), indent=2, sort_keys=True) + "\n")
    with open(tmp / "history.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    trainable = {n: p.detach().float().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    save_file(trainable, str(tmp / "checkpoint.safetensors"), metadata={"config": json.dumps(asdict(cfg))})
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
    torch.manual_seed(cfg.seed)
    spec = DataSpec(cfg.data_kind, cfg.data_root, cfg.data_name)
    train_split, eval_splits = (FINAL_SPLITS if cfg.protocol == "final" else TUNE_SPLITS)[spec.kind]
    train_data = load_split(spec, train_split, cfg.img_size, cfg.cache_dir, for_training=True).to(device)
    evals = {s: load_split(spec, s, cfg.img_size, cfg.cache_dir).to(device) for s in eval_splits}
    backbone = load_backbone(cfg.arch, cfg.weights, cfg.img_size)
    options = vars(MethodOptions.from_config(cfg))
    model = build_model(cfg.method, backbone, len(train_data.classes), **options).to(device)
    model.method.fit_to_data(model.backbone, sample_batch(spec, train_data, cfg.fit_images, cfg.img_size, cfg.seed)[0])
    forward = torch.compile(model) if cfg.compile else model
    opt = make_optimizer(model, cfg)
    n = len(train_data)
    steps = math.ceil(n / cfg.batch_size)
    unit_total, unit_warm = (cfg.epochs * steps, cfg.warmup_epochs * steps) if cfg.schedule_unit == "step" else (cfg.epochs, cfg.warmup_epochs)
    gen = torch.Generator().manual_seed(cfg.seed)
    n_trainable = sum(p.numel() for p in model.trainable_parameters())
    n_prompt = sum(p.numel() for p in model.method.parameters() if p.requires_grad)

    tags = {"method": cfg.method, "task": spec.label, **cfg.tags}
    if cfg.weights:
        tags.update(describe(cfg.weights))
    tracker = Tracker(cfg.experiment, f"{spec.label}/{cfg.method}/seed{cfg.seed}", enabled=cfg.mlflow)
    history: list[dict] = []
    ok = False
    start = time.perf_counter()
    def evaluate_all() -> dict[str, float]:
        return {f"{s}_top1": evaluate(forward, d, cfg.eval_batch_size, use_bf16) for s, d in evals.items()}

    try:
        tracker.log_params({k: v for k, v in asdict(cfg).items() if k != "tags"}, tags)
        # Epoch 0 is the untrained starting point: the reference every learning curve starts from.
        start_row = {"epoch": 0, "lr": 0.0, "train_loss": float("nan"), "train_top1": float("nan"),
                     **evaluate_all(), **{f"grad_norm_l{i}": float("nan") for i in range(len(model.method.layer_grad_norms()))}}
        history.append(start_row)
        tracker.log_metrics({k: v for k, v in start_row.items() if k != "epoch" and math.isfinite(v)}, step=0)
        bar = tqdm(range(cfg.epochs), desc=f"{spec.label}/{cfg.method}", unit="epoch", leave=False)
        for epoch in bar:
            model.train()
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), dtype=torch.int64, device=device)
            grad_sum = None
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
                loss = F.cross_entropy(logits.float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                norms = model.method.layer_grad_norms()
                grad_sum = norms if grad_sum is None else grad_sum + norms
                opt.step()
                loss_sum += loss.detach() * y.numel()
                correct += (logits.argmax(1) == y).sum()
            train_loss = loss_sum.item() / n
            if not math.isfinite(train_loss):
                raise PaeError(f"training diverged at epoch {epoch + 1}: the loss is {train_loss}.",
                               "lower the learning rate (or use precision fp32); no results were written.")
            row = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"], "train_loss": train_loss,
                   "train_top1": 100.0 * correct.item() / n}
            row.update(evaluate_all())
            row.update({f"grad_norm_l{i}": v / steps for i, v in enumerate(grad_sum.tolist())})
            history.append(row)
            tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch + 1)
            bar.set_postfix(loss=f"{train_loss:.3f}", **{s: f"{row[f'{s}_top1']:.1f}" for s in evals})
        wall = time.perf_counter() - start
        metrics = {
            "task": spec.label, "method": cfg.method, "seed": cfg.seed, "epochs": cfg.epochs,
            "trainable_params": n_trainable, "prompt_params": n_prompt, "wall_time_s": wall,
            **{f"final_{s}_top1": history[-1][f"{s}_top1"] for s in evals},
            **{f"best_{s}_top1": max(r[f"{s}_top1"] for r in history[1:]) for s in evals},
            **{f"initial_{s}_top1": start_row[f"{s}_top1"] for s in evals},
            "final_train_loss": history[-1]["train_loss"], "mlflow_run_id": tracker.run_id,
        }
        _write_outputs(out_dir, cfg, metrics, history, model)
        tracker.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=cfg.epochs)
        tracker.log_artifacts(out_dir)
        ok = True
        return metrics
    finally:
        tracker.finish(ok)
