"""The parts of a training run: its config, what it builds, its steps, epochs and final metrics (``runs`` drives them).

SGD (momentum 0.9) with linear warmup and cosine decay, weight decay on everything except biases of
the head; bf16 autocast and ``torch.compile`` on GPUs; the data stays on the device as uint8, augmentation draws
move to it once per epoch and metrics accumulate on it, so the inner loop never waits for the host.
"""
from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .backbones import DEFAULT_ARCH, describe, load_backbone
from .data import FINAL_SPLITS, TUNE_SPLITS, DataSpec, ImageTensors, content_sha256, load_split, train_input
from .diagnostics import convergence_epoch, oscillation_summary
from .evaluate import predictions, top1
from .execution import GroupForward, SingleForward
from .errors import PaeError
from .evolution import PAE, PAEOptions
from .evolution.pae import discover, record_prompts
from .prompts import METHODS, MethodOptions, PromptedViT, build_model
from .resume import Progress
from .tracking import git_provenance


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
    compile: bool = False  # torch.compile the prompted forward (eager fallback if it cannot compile)
    eval_every: int = 1  # evaluate every k epochs (and the last): VTAB's test sets hold up to 26k images
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
            (self.eval_every >= 1, f"eval_every must be >= 1, got {self.eval_every}", "evaluate every k >= 1 epochs"),
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


def uses_bf16(precision: str, device: torch.device) -> bool:
    """'auto' means bf16 autocast on CUDA and fp32 elsewhere."""
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def run_splits(cfg: TrainConfig, spec: DataSpec) -> tuple[str, tuple[str, ...]]:
    """(training split, evaluation splits) of the run's protocol; the first evaluation split selects."""
    return (FINAL_SPLITS if cfg.protocol == "final" else TUNE_SPLITS)[spec.kind]


def run_backbone(cfg: TrainConfig) -> torch.nn.Module:
    """The run's frozen backbone; without weights, the random one its seed makes, the same in every stage."""
    torch.manual_seed(cfg.seed)
    return load_backbone(cfg.arch, cfg.weights, cfg.img_size)


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
    draws = augmentation_draws(spec, len(idx), gen)
    return train_input(spec, data.images[idx], sizes, img_size, draws), data.labels[idx]


def augmentation_draws(spec: DataSpec, n: int, generator: torch.Generator) -> torch.Tensor | None:
    """Uniform numbers (n, 3) for FGVC's random crop and flip (None for data without augmentation), drawn from the
    run's CPU generator, so a run's augmentation is the same on any device and after a resume."""
    return torch.rand(n, 3, generator=generator) if spec.kind == "fgvc" else None


def load_init_prompts(path: str | Path) -> tuple[torch.Tensor, dict]:
    """The (depth, p, d) prompts and the MPA record written by `pae.cli init-prompts`."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return f.get_tensor("prompts"), json.loads(f.metadata()["record"])
    except (OSError, KeyError, ValueError, SafetensorError) as exc:
        raise PaeError(f"initial prompts '{path}' cannot be read ({exc}).", "rerun `pae.cli init-prompts` for this task and seed.") from exc


@dataclass
class Shared:
    """What the runs of one task share: the data on the device, the frozen backbone, MPA's prompts per seed."""

    device: torch.device
    spec: DataSpec
    train_data: ImageTensors
    evals: dict[str, ImageTensors]
    backbone: torch.nn.Module
    init: dict[int, tuple[torch.Tensor, dict]] = field(default_factory=dict)


def load_shared(cfg: TrainConfig) -> Shared:
    """Data (on the device) and the frozen backbone of a run's task, loaded once for all the runs of a group."""
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    spec = DataSpec(cfg.data_kind, cfg.data_root, cfg.data_name)
    train_split, eval_splits = run_splits(cfg, spec)
    train_data = load_split(spec, train_split, cfg.img_size, cfg.cache_dir, for_training=True).to(device)
    evals = {s: load_split(spec, s, cfg.img_size, cfg.cache_dir).to(device) for s in eval_splits}
    return Shared(device, spec, train_data, evals, run_backbone(cfg).to(device))


@dataclass
class Job:
    """What a run builds once from its config: the prompted model, PAE and the optimizer, on shared data."""

    cfg: TrainConfig
    shared: Shared
    bf16: bool
    model: PromptedViT
    pae: PAE
    optimizer: torch.optim.Optimizer
    steps: int  # optimizer steps per epoch
    layers: int  # prompt layers with per-layer gradient norms (0 for linear/full)
    shortcuts: dict  # PAE's init record (empty without init)

    @property
    def device(self) -> torch.device:
        return self.shared.device

    def state_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        """Everything training changes, by group: what a checkpoint must hold to resume exactly."""
        method = self.model.method
        return {"trainable": {n: p for n, p in self.model.named_parameters() if p.requires_grad},
                "buffers": dict(method.named_buffers()), "pae": dict(self.pae.named_parameters())}


def initial_prompts(cfg: TrainConfig, shared: Shared, model: PromptedViT) -> tuple[torch.Tensor, dict]:
    """MPA's prompts and record: read from ``init_prompts``, or discovered once per seed and shared by its runs."""
    if cfg.init_prompts:
        return load_init_prompts(cfg.init_prompts)
    if cfg.seed not in shared.init:
        start = time.perf_counter()
        spec, data = shared.spec, shared.train_data
        x, y = sample_batch(spec, data, cfg.pae.init_images, cfg.img_size, cfg.seed)
        record = discover(cfg.pae, model.backbone, x, y, len(data.classes), model.method.num_tokens, cfg.seed)
        prompts = record_prompts(model.backbone, x, record, len(model.backbone.blocks))
        record["seconds"] = time.perf_counter() - start
        shared.init[cfg.seed] = prompts, record
    prompts, record = shared.init[cfg.seed]
    return prompts, dict(record)


def build_job(cfg: TrainConfig, shared: Shared) -> Job:
    """Method (with its data fit), PAE (with its init) and optimizer on the shared backbone, seeded by ``cfg.seed``."""
    torch.manual_seed(cfg.seed)  # the method's init depends on the seed alone, not on how the backbone was made
    train_data = shared.train_data
    model = build_model(cfg.method, shared.backbone, len(train_data.classes), **asdict(cfg.options)).to(shared.device)
    method = model.method
    method.fit_to_data(model.backbone, sample_batch(shared.spec, train_data, cfg.options.fit_images, cfg.img_size, cfg.seed)[0])
    pae = PAE(cfg.pae, method, model.backbone.embed_dim).to(shared.device)
    shortcuts = {}
    if cfg.pae.init:
        prompts, shortcuts = initial_prompts(cfg, shared, model)
        pae.initialize(method, prompts)
    torch.manual_seed(cfg.seed + 1)  # training's randomness starts the same whether MPA ran here or in its own stage
    return Job(cfg, shared, uses_bf16(cfg.precision, shared.device), model, pae, make_optimizer(model, pae, cfg),
               math.ceil(len(train_data) / cfg.batch_size), len(method.layer_grad_norms()), shortcuts)


def fresh_progress(job: Job) -> Progress:
    cfg = job.cfg
    return Progress(0, 0, None, None, torch.zeros(3, device=job.device),
                    torch.zeros((), dtype=torch.int64, device=job.device), [],
                    torch.full((cfg.epochs * job.steps, job.layers), float("nan"), device=job.device),
                    torch.Generator().manual_seed(cfg.seed), 0.0, job.shortcuts)


def evaluate_runs(jobs: list[Job], forward: SingleForward | GroupForward) -> list[dict[str, float]]:
    """Top-1 of every run on every evaluation split; a group classifies each batch for all its runs at once."""
    shared, cfg = jobs[0].shared, jobs[0].cfg
    scores: list[dict[str, float]] = [{} for _ in jobs]
    for split, data in shared.evals.items():
        accuracy = top1(predictions(forward.classify, data, cfg.eval_batch_size, jobs[0].bf16), data.labels)
        for row, value in zip(scores, accuracy.tolist()):
            row[f"{split}_top1"] = value
    return scores


def unevaluated(job: Job) -> dict[str, float]:
    """The accuracies of an epoch that ``eval_every`` skips: NaN, which curves and best-of statistics skip."""
    return {f"{s}_top1": float("nan") for s in job.shared.evals}


def set_lr(job: Job, p: Progress) -> None:
    """VPT's schedule at the current step (or epoch): a pure function of the position, so a resume restores it."""
    cfg = job.cfg
    total, warm = ((cfg.epochs * job.steps, cfg.warmup_epochs * job.steps) if cfg.schedule_unit == "step"
                   else (cfg.epochs, cfg.warmup_epochs))
    t = p.epoch * job.steps + p.step if cfg.schedule_unit == "step" else p.epoch
    for group in job.optimizer.param_groups:
        group["lr"] = lr_at(t, total, warm, cfg.lr)


def next_batch(job: Job, p: Progress) -> tuple[torch.Tensor, torch.Tensor]:
    """The step's images (augmented, normalised) and labels, from the epoch's order and draws on the device."""
    data, bs = job.shared.train_data, job.cfg.batch_size
    if p.perm is None:  # a new epoch: its order and augmentation draws, moved to the device once
        p.perm = torch.randperm(len(data), generator=p.generator).to(job.device)
        draws = augmentation_draws(job.shared.spec, len(data), p.generator)
        p.draws = None if draws is None else draws.to(job.device)
    idx = p.perm[p.step * bs:(p.step + 1) * bs]
    draws = None if p.draws is None else p.draws[p.step * bs:(p.step + 1) * bs]
    sizes = None if data.sizes is None else data.sizes[idx]
    return train_input(job.shared.spec, data.images[idx], sizes, job.cfg.img_size, draws), data.labels[idx]


def train_steps(jobs: list[Job], progress: list[Progress], forward: SingleForward | GroupForward,
                stop: threading.Event) -> bool:
    """Finish the current epoch of every run from its ``step`` on, updating each ``Progress`` after every step.

    The runs move in lockstep: one forward for all, one backward of the summed losses (disjoint tensors, so each
    run's gradient is its own), then each run's clip, diagnostics and optimizer step. Returns False when ``stop``
    was set (SIGTERM) before the epoch ended; the progress is then consistent for a save."""
    while progress[0].step < jobs[0].steps:
        if stop.is_set():
            return False
        batches = []
        for job, p in zip(jobs, progress):
            set_lr(job, p)
            batches.append(next_batch(job, p))
        with torch.autocast(jobs[0].device.type, dtype=torch.bfloat16, enabled=jobs[0].bf16):
            logits = forward.train([x for x, _ in batches])
        total, records = 0.0, []
        for job, out, (_, y) in zip(jobs, logits, batches):
            ce = F.cross_entropy(out.float(), y)
            reg, terms = job.pae.loss(job.model.method) if job.pae.regularizer is not None else (0.0, {})
            total = total + ce + reg
            records.append((ce, terms))
        for job in jobs:
            job.optimizer.zero_grad(set_to_none=True)
        total.backward()
        for job, p, out, (_, y), (ce, terms) in zip(jobs, progress, logits, batches, records):
            job.pae.clip_gradients()
            if job.layers:
                p.step_grad_norms[p.epoch * job.steps + p.step] = job.model.method.layer_grad_norms()
            job.optimizer.step()
            zero = ce.new_zeros(())
            p.sums += torch.stack([ce.detach(), terms.get("koopman", zero).detach(),
                                   terms.get("lyapunov", zero).detach()]) * y.numel()
            p.correct += (out.argmax(1) == y).sum()
            p.step += 1
    return True


def evaluation_due(cfg: TrainConfig, epoch: int) -> bool:
    """Whether finished ``epoch`` (1-based) is evaluated: every ``eval_every``-th, and always the last."""
    return epoch % cfg.eval_every == 0 or epoch == cfg.epochs


DIVERGED_FIX = "lower the learning rate (or use precision fp32); no results were written."


def close_epoch(job: Job, p: Progress, state: Path, scores: dict[str, float]) -> dict:
    """The finished epoch's history row; resets the running sums. A non-finite loss stops the run here."""
    cfg, n, nan = job.cfg, len(job.shared.train_data), float("nan")
    train_loss, koopman_loss, lyapunov_loss = (p.sums / n).tolist()
    if not math.isfinite(train_loss + koopman_loss + lyapunov_loss):
        raise PaeError(f"training diverged in epoch {p.epoch + 1}: the loss is {train_loss} (L_kp {koopman_loss}, "
                       f"L_stab {lyapunov_loss}); the last finite state (epoch {p.epoch}) is kept in '{state}'.",
                       DIVERGED_FIX)
    epoch_norms = p.step_grad_norms[p.epoch * job.steps:(p.epoch + 1) * job.steps].mean(0).tolist()
    row = {"epoch": p.epoch + 1, "lr": job.optimizer.param_groups[0]["lr"], "train_loss": train_loss,
           "train_top1": 100.0 * p.correct.item() / n,
           "koopman_loss": koopman_loss if job.pae.regularizer is not None else nan,
           "lyapunov_loss": lyapunov_loss if cfg.pae.lyapunov else nan,
           **scores, **{f"grad_norm_l{i}": v for i, v in enumerate(epoch_norms)},
           **job.pae.diagnostics(job.model.method)}
    p.epoch, p.step, p.perm, p.draws = p.epoch + 1, 0, None, None
    p.sums.zero_()
    p.correct.zero_()
    p.history.append(row)
    return row


def start_row(job: Job, scores: dict[str, float]) -> dict:
    """Epoch 0: the untrained starting point (after PAE's init, if on), where every learning curve starts."""
    nan = float("nan")
    return {"epoch": 0, "lr": 0.0, "train_loss": nan, "train_top1": nan, "koopman_loss": nan, "lyapunov_loss": nan,
            **scores, **{f"grad_norm_l{i}": nan for i in range(job.layers)},
            **job.pae.diagnostics(job.model.method)}


def final_metrics(job: Job, p: Progress, tags: dict, run_id: str | None, group_size: int) -> dict:
    cfg, method, history, evals = job.cfg, job.model.method, p.history, job.shared.evals
    selection_split = next(iter(evals))  # val200 under "tune", test under "final" (VTAB's protocol)
    curve = lambda split: [r[f"{split}_top1"] for r in history]  # noqa: E731 - NaN where an epoch was not evaluated
    metrics = {
        "task": job.shared.spec.label, "task_group": cfg.task_group, "method": cfg.method, "pae": cfg.pae.label,
        "seed": cfg.seed, "epochs": cfg.epochs, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "protocol": cfg.protocol,
        "backbone": cfg.arch, "backbone_source": tags.get("pae.source", "random weights"),
        "trainable_params": sum(t.numel() for t in job.model.trainable_parameters()),
        "prompt_params": sum(t.numel() for t in method.parameters() if t.requires_grad),
        "pae_params": sum(t.numel() for t in job.pae.parameters()),
        "wall_time_s": p.elapsed, "group_size": group_size,  # a group's runs share its wall time
        "pae_init_s": p.shortcuts.get("seconds", 0.0),
        **{f"final_{s}_top1": history[-1][f"{s}_top1"] for s in evals},
        **{f"best_{s}_top1": max(v for v in curve(s)[1:] if math.isfinite(v)) for s in evals},
        **{f"initial_{s}_top1": history[0][f"{s}_top1"] for s in evals},
        "selection_split": selection_split,
        "convergence_epoch": convergence_epoch(curve(selection_split)),
        "final_train_loss": history[-1]["train_loss"], "mlflow_run_id": run_id,
        # oscillation over epochs (per-epoch mean norms): per-step norms mostly measure minibatch noise
        **(oscillation_summary(history[1:]) if job.layers else {}),
        **job.pae.diagnostics(method),
    }
    # undefined statistics (e.g. oscillation of a run too short for the window) are null: JSON has no NaN
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in metrics.items()}


def provenance(cfg: TrainConfig, shared: Shared) -> tuple[dict[str, str], dict[str, str]]:
    """Tags every run of a task shares, computed once per process (hashing the data and the backbone file is not
    free): the training data's content hash and the git state; the backbone file's provenance."""
    return ({"data_sha256": content_sha256(shared.train_data), **git_provenance()},
            describe(cfg.weights) if cfg.weights else {})


def run_tags(job: Job, shared_tags: tuple[dict[str, str], dict[str, str]]) -> dict[str, str]:
    """A run's MLflow tags; its own ``tags`` override the data and git tags, the backbone's provenance wins."""
    cfg, (data, backbone) = job.cfg, shared_tags
    return {"method": cfg.method, "task": job.shared.spec.label, "task_group": cfg.task_group, "pae": cfg.pae.label,
            **data, **cfg.tags, **backbone}
