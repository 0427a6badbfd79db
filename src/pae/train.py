"""One training run: a prompt method on a frozen ViT, VPT's optimisation recipe, outputs + MLflow.

SGD (momentum 0.9) with linear warmup and cosine decay, weight decay on everything except biases of
the head; bf16 autocast and ``torch.compile`` on GPUs; the data stays on the device as uint8 and
metrics accumulate on the device, so the inner loop never waits for the host.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
import threading
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
from .evaluate import predictions, top1
from .execution import GroupForward, SingleForward, make_forward
from .errors import PaeError
from .evolution import PAE, PAEOptions
from .evolution.pae import discover, record_prompts
from .prompts import METHODS, MethodOptions, PromptedViT, build_model
from .reports.tables import write_csv
from .resume import Preempted, Progress, discard, load_states, preemption, restore, save_state, state_dir
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
    draws = torch.rand(len(idx), 3, generator=gen).to(data.labels.device)
    return train_input(spec, data.images[idx], sizes, img_size, draws), data.labels[idx]


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


def write_outputs(out_dir: Path, job: "Job", progress: Progress, metrics: dict) -> None:
    """Write everything into a sibling temp folder, then swap it in: a crash never leaves half a run."""
    cfg = job.cfg
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    files = {"metrics.json": metrics, "config.json": asdict(cfg)}
    if progress.shortcuts:
        files["shortcuts.json"] = progress.shortcuts
    for name, content in files.items():
        (tmp / name).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
    write_csv(progress.history, tmp / "history.csv")
    if job.layers:
        write_csv([{"step": i + 1, **{f"grad_norm_l{l}": v for l, v in enumerate(r)}}
                   for i, r in enumerate(progress.step_grad_norms.tolist())], tmp / "grad_norms.csv")
    groups = job.state_tensors()
    tensors = {**groups["trainable"], **{f"method.{n}": b for n, b in groups["buffers"].items()},
               **{f"pae.{n}": t for n, t in groups["pae"].items()}}
    save_file({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}, str(tmp / "checkpoint.safetensors"),
              metadata={"config": json.dumps(asdict(cfg))})
    old = out_dir.with_name(f".{out_dir.name}.old")
    if out_dir.exists():
        shutil.rmtree(old, ignore_errors=True)
        out_dir.rename(old)
    tmp.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)


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
        p.draws = torch.rand(len(data), 3, generator=p.generator).to(job.device)
    idx = p.perm[p.step * bs:(p.step + 1) * bs]
    draws = p.draws[p.step * bs:(p.step + 1) * bs]
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


def close_epoch(job: Job, p: Progress, state: Path, scores: dict[str, float]) -> dict:
    """The finished epoch's history row; resets the running sums. A non-finite loss stops the run here."""
    cfg, n, nan = job.cfg, len(job.shared.train_data), float("nan")
    train_loss, koopman_loss, lyapunov_loss = (p.sums / n).tolist()
    if not math.isfinite(train_loss + koopman_loss + lyapunov_loss):
        raise PaeError(f"training diverged in epoch {p.epoch + 1}: the loss is {train_loss} (L_kp {koopman_loss}, "
                       f"L_stab {lyapunov_loss}); the last finite state (epoch {p.epoch}) is kept in '{state}'.",
                       "lower the learning rate (or use precision fp32); no results were written.")
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


def run_tags(job: Job) -> dict[str, str]:
    cfg = job.cfg
    tags = {"method": cfg.method, "task": job.shared.spec.label, "task_group": cfg.task_group, "pae": cfg.pae.label,
            "data_sha256": content_sha256(job.shared.train_data), **git_provenance(), **cfg.tags}
    return {**tags, **describe(cfg.weights)} if cfg.weights else tags


GROUP_FREE = ("lr", "weight_decay", "seed", "init_prompts", "out_dir", "experiment", "tags")  # may differ in a group


def check_group(cfgs: list[TrainConfig]) -> None:
    """Runs trained as one group share data, backbone, method and schedule; only GROUP_FREE settings may differ."""
    first = asdict(cfgs[0])
    for cfg in cfgs[1:]:
        for key, value in asdict(cfg).items():
            if key not in GROUP_FREE and value != first[key]:
                raise PaeError(f"runs of one group differ in '{key}' ({first[key]!r} vs {value!r}); a group shares "
                               "its data, backbone, method and schedule.", "give one value for it, or train the runs separately.")
    if len(cfgs) > 1 and cfgs[0].method == "full":
        raise PaeError("method 'full' fine-tunes the backbone, so its runs cannot share one.", "train them one by one.")
    if len(cfgs) > 1 and cfgs[0].weights is None and len({c.seed for c in cfgs}) > 1:
        raise PaeError("without --weights the backbone is random and differs per seed, so these runs cannot share one.",
                       "give --weights (pae.cli import-backbone), or group runs of one seed only.")
    outs = [Path(c.out_dir).resolve() for c in cfgs]
    if len(set(outs)) < len(outs):
        raise PaeError("two runs of the group write the same --out-dir.",
                       "give each run its own folder, e.g. --out-dir 'runs/lr{lr}_wd{wd}_seed{seed}'.")


@dataclass
class Run:
    """One run's bookkeeping in the loop: its job, outputs, saved state, progress and MLflow run."""

    job: Job
    out_dir: Path
    config: str
    state: Path
    progress: Progress
    tracker: Tracker
    tags: dict[str, str]
    label: str
    status: str = "FAILED"
    error: PaeError | None = None

    def save(self) -> None:
        save_state(self.state, self.progress, self.config, self.job.state_tensors(), self.job.optimizer)

    def log(self, row: dict) -> None:
        self.tracker.log_metrics({k: v for k, v in row.items() if k != "epoch" and math.isfinite(v)}, step=row["epoch"])


def open_runs(jobs: list[Job], out_dirs: list[Path]) -> list[Run]:
    """Each run with its progress: fresh, or resumed from states aligned to one position (see ``load_states``)."""
    configs = [json.dumps(asdict(job.cfg), sort_keys=True) for job in jobs]
    states = [state_dir(out) for out in out_dirs]
    saved = load_states(states, configs)
    runs = []
    for job, out, config, state, loaded in zip(jobs, out_dirs, configs, states, saved):
        progress = restore(loaded, job.device, job.state_tensors(), job.optimizer) if loaded else fresh_progress(job)
        cfg = job.cfg
        label = f"{job.shared.spec.label}/{cfg.method}/{cfg.pae.label}/seed{cfg.seed}"
        tracker = Tracker(cfg.experiment, label, enabled=cfg.mlflow, key=run_key(out, config))
        runs.append(Run(job, out, config, state, progress, tracker, run_tags(job), label))
    return runs


def train_runs(cfgs: list[TrainConfig]) -> list[dict]:
    """Train one run, or several runs of one task as one group (``check_group``), and return their final metrics.

    After every epoch (and at the next step after SIGTERM) each run's state is saved beside its output folder; the
    same command then resumes from the newest intact states and ends with exactly the numbers of an uninterrupted
    run, logging into the same MLflow runs. A run of a group that diverges stops alone; the others finish, and the
    error names it at the end.
    """
    from tqdm import tqdm

    for cfg in cfgs:
        cfg.validate()
    check_group(cfgs)
    out_dirs = [check_out_dir(cfg.out_dir) for cfg in cfgs]
    shared = load_shared(cfgs[0])
    jobs = [build_job(cfg, shared) for cfg in cfgs]
    runs = open_runs(jobs, out_dirs)
    cfg = cfgs[0]
    try:
        for run in runs:
            run.tracker.log_params({k: v for k, v in flatten(run.job.cfg).items() if not k.startswith("tags")}, run.tags)
        active = runs
        forward = make_forward([r.job.model for r in active], cfg.compile)
        if not runs[0].progress.history:
            for run, scores in zip(runs, evaluate_runs(jobs, forward)):
                run.progress.history.append(start_row(run.job, scores))
                run.save()
        for run in runs:
            for row in run.progress.history:  # a resumed run re-logs its history: identical entries are stored once
                run.log(row)
        label = runs[0].label if len(runs) == 1 else f"{len(runs)} runs of {shared.spec.label}/{cfg.method}/{cfg.pae.label}"
        with preemption() as stop, tqdm(total=cfg.epochs, initial=runs[0].progress.epoch, desc=label, unit="epoch",
                                        leave=False) as bar:
            while active and active[0].progress.epoch < cfg.epochs:
                began = time.perf_counter()  # wall time counts training and the per-epoch evaluation
                progress = [r.progress for r in active]
                if not train_steps([r.job for r in active], progress, forward, stop):
                    for run in active:
                        run.progress.elapsed += time.perf_counter() - began
                        run.save()
                        run.status = "KILLED"
                    raise Preempted(f"stopped by SIGTERM in epoch {progress[0].epoch + 1} at step {progress[0].step}; "
                                    f"the state is saved in '{active[0].state}': run the same command again to resume.")
                due = evaluation_due(cfg, progress[0].epoch + 1)
                scores = evaluate_runs([r.job for r in active], forward) if due else [unevaluated(r.job) for r in active]
                elapsed = time.perf_counter() - began
                for run, score in zip(active, scores):
                    try:
                        row = close_epoch(run.job, run.progress, run.state, score)
                    except PaeError as exc:
                        run.error = exc
                        continue
                    run.progress.elapsed += elapsed
                    run.save()
                    run.log(row)
                if any(r.error for r in active):
                    active = [r for r in active if r.error is None]
                    forward = make_forward([r.job.model for r in active], cfg.compile) if active else forward
                bar.update()
        results = [finish(run, len(runs)) for run in active]
        failed = [r for r in runs if r.error is not None]
        if len(runs) == 1 and failed:
            raise failed[0].error
        if failed:
            names = ", ".join(f"'{r.out_dir.name}'" for r in failed)
            raise PaeError(f"{len(failed)} of {len(runs)} runs diverged ({names}); the other runs finished and wrote "
                           f"their outputs. First: {failed[0].error.problem}", failed[0].error.fix)
        return results
    finally:
        for run in runs:
            run.tracker.finish(run.status)


def finish(run: Run, group_size: int) -> dict:
    """Write a finished run's outputs and final metrics, log them, drop its saved states."""
    job, progress = run.job, run.progress
    metrics = final_metrics(job, progress, run.tags, run.tracker.run_id, group_size)
    write_outputs(run.out_dir, job, progress, metrics)
    run.tracker.log_metrics({k: v for k, v in metrics.items()  # per-epoch series are logged already
                             if isinstance(v, (int, float)) and math.isfinite(v) and k not in progress.history[-1]},
                            step=job.cfg.epochs)
    run.tracker.log_artifacts(run.out_dir)
    discard(run.state)
    run.status = "FINISHED"
    return metrics


def train(cfg: TrainConfig) -> dict:
    """Run one training job end to end and return its final metrics (``train_runs`` for a group)."""
    return train_runs([cfg])[0]


def run_key(out_dir: Path, config: str) -> str:
    """Names a job across restarts (its folder and exact config), so a resumed run finds its MLflow run again."""
    return hashlib.sha256(f"{out_dir}\n{config}".encode()).hexdigest()[:32]
