"""The training loop, read top to bottom: one run, or several runs of one task as one group.

``train_runs`` checks the configs, builds every run on the task's shared data and backbone (``pae.build``), resumes
from saved states, trains epoch by epoch (one forward for all runs of a group, one backward of the summed losses,
then each run's own optimizer step), evaluates, and writes each run's folder (``pae.run_folder``). Everything below
it is in the order it is called.

The recipe is VPT's: SGD (momentum 0.9) with linear warmup and cosine decay, weight decay on everything except the
head's bias. The data stays on the device as uint8, augmentation draws move to it once per epoch and metrics
accumulate on it, so the inner loop never waits for the host. PAE (or any plug-in with the same four calls) adds
named loss terms and parameter groups; the loop sums the terms and records each one by name.

After every epoch (and at the next step after SIGTERM) each run's state is saved beside its output folder; the same
command then resumes from the newest intact states and ends with exactly the numbers of an uninterrupted run,
logging into the same MLflow runs. A run of a group that diverges stops alone and the others finish; under the
final protocol the error names it at the end, under "tune" its metrics say it diverged (a search result).
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .build import LoadedTask, augmentation_draws, load_task, run_model, run_pae, uses_bf16
from .config.options import flatten
from .config.train import TrainConfig, check_group
from .data import train_input
from .diagnostics import convergence_epoch, oscillation_summary
from .errors import PaeError, Preempted
from .evaluate import predictions, top1
from .evolution import PAE
from .forward import GroupForward, SingleForward, make_forward
from .prompts import PromptedModel
from .resume import Progress, discard, diverged, load_states, mark_diverged, preemption, restore, save_state
from .resume import state_dir as state_folder
from .run_folder import (
    BACKBONE,
    BACKBONE_SOURCE,
    CONVERGENCE_EPOCH,
    DIVERGED,
    ERROR,
    FINAL_TRAIN_LOSS,
    GROUP_SIZE,
    PAE_INIT_S,
    PAE_PARAMS,
    PROMPT_PARAMS,
    SELECTION_CURVE,
    SELECTION_SPLIT,
    TRAINABLE_PARAMS,
    WALL_TIME_S,
    RunMetrics,
    check_out_dir,
    grad_norm_column,
    top1_key,
    write_run,
)
from .tracking import Tracker, task_provenance

DIVERGED_FIX = "lower the learning rate (or use precision fp32); no results were written."


@dataclass
class TrainingRun:
    """One run in the loop: what it trains (model, PAE, optimizer), where it stands, and where its results go."""

    cfg: TrainConfig
    task: LoadedTask
    model: PromptedModel
    pae: PAE
    optimizer: torch.optim.Optimizer
    init_record: dict  # MPA's record (empty without PAE's init)
    steps: int  # optimizer steps per epoch
    layers: int  # prompt layers with per-layer gradient norms (0 for linear/full)
    progress: Progress
    tracker: Tracker
    out_dir: Path
    tags: dict[str, str]
    status: str = "FAILED"
    error: PaeError | None = None

    @property
    def label(self) -> str:
        return f"{self.task.spec.label}/{self.cfg.method}/{self.cfg.variant}/seed{self.cfg.seed}"

    @property
    def config(self) -> str:
        """The exact config, as states and MLflow run keys compare it."""
        return json.dumps(asdict(self.cfg), sort_keys=True)

    @property
    def state(self) -> Path:
        return state_folder(self.out_dir)

    @property
    def bf16(self) -> bool:
        return uses_bf16(self.cfg.precision, self.task.device)

    def tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        """Everything training changes, by group: what a state must hold to resume exactly, and the checkpoint."""
        return {
            "trainable": {n: p for n, p in self.model.named_parameters() if p.requires_grad},
            "buffers": dict(self.model.method.named_buffers()),
            "pae": dict(self.pae.named_parameters()),
        }

    def save(self) -> None:
        save_state(self.state, self.progress, self.config, self.tensors(), self.optimizer)

    def log(self, row: dict) -> None:
        self.tracker.log_metrics({k: v for k, v in row.items() if k != "epoch" and math.isfinite(v)}, step=row["epoch"])


def train(cfg: TrainConfig) -> dict:
    """Run one training job end to end and return its final metrics (``train_runs`` for a group)."""
    return train_runs([cfg])[0]


def train_runs(cfgs: list[TrainConfig]) -> list[dict]:
    """Train one run, or several runs of one task as one group (``check_group``); return their final metrics."""
    from tqdm import tqdm

    cfgs = [cfg.resolved() for cfg in cfgs]
    for cfg in cfgs:
        cfg.validate()
    check_group(cfgs)
    out_dirs = [check_out_dir(cfg.out_dir) for cfg in cfgs]
    task = load_task(cfgs[0])
    runs = [prepare_run(cfg, task, out) for cfg, out in zip(cfgs, out_dirs)]
    open_tracking(runs)
    resume(runs)
    cfg = cfgs[0]
    try:
        for run in runs:
            run.tracker.log_params({k: v for k, v in flatten(run.cfg).items() if not k.startswith("tags")}, run.tags)
        active = [r for r in runs if r.error is None]
        forward = make_forward([r.model for r in active], cfg.compile) if active else None
        if active and not active[0].progress.history:
            for run, scores in zip(active, evaluate_runs(active, forward)):
                run.progress.history.append(start_row(run, scores))
                run.save()
        for run in active:
            for row in run.progress.history:  # a resumed run re-logs its history: identical entries are stored once
                run.log(row)
        name = runs[0].label if len(runs) == 1 else f"{len(runs)} runs of {task.spec.label}/{cfg.method}/{cfg.variant}"
        start = active[0].progress.epoch if active else cfg.epochs
        with preemption() as stop, tqdm(total=cfg.epochs, initial=start, desc=name, unit="epoch", leave=False) as bar:
            while active and active[0].progress.epoch < cfg.epochs:
                began = time.perf_counter()  # wall time counts training and the per-epoch evaluation
                if not train_epoch(active, forward, stop):
                    for run in active:
                        run.progress.elapsed += time.perf_counter() - began
                        run.save()
                        run.status = "KILLED"
                    p = active[0].progress
                    raise Preempted(
                        f"stopped by SIGTERM in epoch {p.epoch + 1} at step {p.step}; the state is saved "
                        f"in '{active[0].state}': run the same command again to resume."
                    )
                due = evaluation_due(cfg, active[0].progress.epoch + 1)
                scores = evaluate_runs(active, forward) if due else [unevaluated(task) for _ in active]
                elapsed = time.perf_counter() - began
                for run, score in zip(active, scores):
                    try:
                        row = close_epoch(run, score)
                    except PaeError as exc:
                        run.error = exc
                        mark_diverged(run.state, run.config, exc.problem)
                        continue
                    run.progress.elapsed += elapsed
                    run.save()
                    run.log(row)
                if any(r.error for r in active):
                    active = [r for r in active if r.error is None]
                    forward = make_forward([r.model for r in active], cfg.compile) if active else forward
                bar.update()
        return write_results(runs)
    finally:
        for run in runs:
            run.tracker.finish(run.status)


# ---------------------------------------------------------------------------------------------- building the runs


def prepare_run(cfg: TrainConfig, task: LoadedTask, out_dir: Path | None = None) -> TrainingRun:
    """A run's model (fitted to the data), PAE (with its init) and optimizer on the task's backbone, at its start.

    MLflow tracking is off until ``open_tracking``; benchmarks use a run as it comes from here."""
    model = run_model(cfg, task)
    pae, record = run_pae(cfg, task, model)
    steps, layers = math.ceil(len(task.train_data) / cfg.batch_size), len(model.method.layer_grad_norms())
    progress = Progress.start(cfg.seed, cfg.epochs * steps, layers, len(pae.terms), task.device)
    return TrainingRun(
        cfg,
        task,
        model,
        pae,
        make_optimizer(model, pae, cfg),
        record,
        steps,
        layers,
        progress,
        Tracker(cfg.experiment, "", enabled=False),
        out_dir or Path(cfg.out_dir).resolve(),
        {},
    )


def make_optimizer(model: PromptedModel, pae: PAE, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Weight decay on all trainable tensors except the head's bias (VPT); the plug-in brings its own groups."""
    decay = [p for n, p in model.named_parameters() if p.requires_grad and n != "head.bias"]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": [model.head.bias], "weight_decay": 0.0},
        *pae.parameter_groups(cfg.weight_decay, cfg.optimizer),
    ]
    fused = {"fused": True} if next(model.parameters()).is_cuda else {}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, **fused)
    return torch.optim.AdamW(groups, lr=cfg.lr, **fused)


def open_tracking(runs: list[TrainingRun]) -> None:
    """Each run's MLflow run (found again after a restart by its folder and exact config) and tags."""
    shared_tags = task_provenance(runs[0].cfg, runs[0].task)  # the same for every run of a group
    for run in runs:
        cfg = run.cfg
        run.tracker = Tracker(cfg.experiment, run.label, enabled=cfg.mlflow, key=run_key(run.out_dir, run.config))
        run.tags = run_tags(run, shared_tags)


def run_key(out_dir: Path, config: str) -> str:
    """Names a job across restarts (its folder and exact config), so a resumed run finds its MLflow run again."""
    return hashlib.sha256(f"{out_dir}\n{config}".encode()).hexdigest()[:32]


def run_tags(run: TrainingRun, shared: tuple[dict[str, str], dict[str, str]]) -> dict[str, str]:
    """A run's MLflow tags; its own ``tags`` override the data and git tags, the backbone's provenance wins."""
    cfg, (data, backbone) = run.cfg, shared
    return {
        "method": cfg.method,
        "task": run.task.spec.label,
        "task_group": cfg.task_group,
        "pae": cfg.variant,
        **data,
        **cfg.tags,
        **backbone,
    }


def resume(runs: list[TrainingRun]) -> None:
    """Each run's progress from states aligned to one position (see ``load_states``), or fresh; a resumed run says so
    on stderr, so a job's log shows which attempt resumed and from where. A run that diverged in an earlier attempt
    keeps its error and stays out of the group."""
    for run in runs:
        message = diverged(run.state, run.config)
        if message:
            run.error = PaeError(message, DIVERGED_FIX)
    live = [r for r in runs if r.error is None]
    for run, loaded in zip(live, load_states([r.state for r in live], [r.config for r in live])):
        if loaded:
            run.progress = restore(loaded, run.task.device, run.tensors(), run.optimizer)
            at = run.progress
            print(f"resuming {run.label} from epoch {at.epoch}, step {at.step} (state {run.state})", file=sys.stderr)


# ---------------------------------------------------------------------------------------------- one epoch


def lr_at(t: int, total: int, warmup: int, base: float) -> float:
    """VPT's WarmupCosineSchedule: linear from 0 over ``warmup`` units, then cosine to 0 at ``total``."""
    if t < warmup:
        return base * t / max(1, warmup)
    progress = (t - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(run: TrainingRun) -> None:
    """VPT's schedule at the current step (or epoch): a pure function of the position, so a resume restores it."""
    cfg, p, steps = run.cfg, run.progress, run.steps
    per_step = cfg.schedule_unit == "step"
    total, warm = (cfg.epochs * steps, cfg.warmup_epochs * steps) if per_step else (cfg.epochs, cfg.warmup_epochs)
    t = p.epoch * steps + p.step if per_step else p.epoch
    for group in run.optimizer.param_groups:
        group["lr"] = lr_at(t, total, warm, cfg.lr)


def next_batch(run: TrainingRun) -> tuple[torch.Tensor, torch.Tensor]:
    """The step's images (augmented, normalised) and labels, from the epoch's order and draws on the device."""
    task, p, bs = run.task, run.progress, run.cfg.batch_size
    data = task.train_data
    if p.perm is None:  # a new epoch: its order and augmentation draws, moved to the device once
        p.perm = torch.randperm(len(data), generator=p.generator).to(task.device)
        draws = augmentation_draws(task.spec, len(data), p.generator)
        p.draws = None if draws is None else draws.to(task.device)
    idx = p.perm[p.step * bs : (p.step + 1) * bs]
    draws = None if p.draws is None else p.draws[p.step * bs : (p.step + 1) * bs]
    sizes = None if data.sizes is None else data.sizes[idx]
    return train_input(task.spec, data.images[idx], sizes, run.cfg.img_size, draws), data.labels[idx]


def train_epoch(runs: list[TrainingRun], forward: SingleForward | GroupForward, stop: threading.Event) -> bool:
    """Finish the current epoch of every run from its ``step`` on, updating each run's progress after every step.

    The runs move in lockstep: one forward for all, one backward of the summed losses (disjoint tensors, so each
    run's gradient is its own), then each run's plug-in hook, gradient diagnostics and optimizer step. Returns
    False when ``stop`` was set (SIGTERM) before the epoch ended; the progress is then consistent for a save."""
    while runs[0].progress.step < runs[0].steps:
        if stop.is_set():
            return False
        batches = []
        for run in runs:
            set_lr(run)
            batches.append(next_batch(run))
        with torch.autocast(runs[0].task.device.type, dtype=torch.bfloat16, enabled=runs[0].bf16):
            logits = forward.train([x for x, _ in batches])
        total, records = 0.0, []
        for run, out, (_, y) in zip(runs, logits, batches):
            ce = F.cross_entropy(out.float(), y)
            terms = run.pae.loss_terms(run.model.method)
            total = total + ce + sum(weight * value for weight, value in terms.values())
            records.append(torch.stack([ce.detach(), *(value.detach() for _, value in terms.values())]))
        for run in runs:
            run.optimizer.zero_grad(set_to_none=True)
        total.backward()
        for run, out, (_, y), losses in zip(runs, logits, batches, records):
            p = run.progress
            run.pae.before_step()
            if run.layers:
                p.step_grad_norms[p.epoch * run.steps + p.step] = run.model.method.layer_grad_norms()
            run.optimizer.step()
            p.sums += losses * y.numel()
            p.correct += (out.argmax(1) == y).sum()
            p.step += 1
    return True


def evaluation_due(cfg: TrainConfig, epoch: int) -> bool:
    """Whether finished ``epoch`` (1-based) is evaluated: every ``eval_every``-th, and always the last."""
    return epoch % cfg.eval_every == 0 or epoch == cfg.epochs


def evaluate_runs(runs: list[TrainingRun], forward: SingleForward | GroupForward) -> list[dict[str, float]]:
    """Top-1 of every run on every evaluation split; a group classifies each batch for all its runs at once."""
    first = runs[0]
    scores: list[dict[str, float]] = [{} for _ in runs]
    for split, data in first.task.evals.items():
        accuracy = top1(predictions(forward.classify, data, first.cfg.eval_batch_size, first.bf16), data.labels)
        for row, value in zip(scores, accuracy.tolist()):
            row[f"{split}_top1"] = value
    return scores


def unevaluated(task: LoadedTask) -> dict[str, float]:
    """The accuracies of an epoch that ``eval_every`` skips: NaN, which curves and best-of statistics skip."""
    return {f"{s}_top1": float("nan") for s in task.evals}


def close_epoch(run: TrainingRun, scores: dict[str, float]) -> dict:
    """The finished epoch's history row; resets the running sums. A non-finite loss stops the run here."""
    p, n = run.progress, len(run.task.train_data)
    train_loss, *term_losses = (p.sums / n).tolist()
    terms = dict(zip(run.pae.terms, term_losses))
    if not math.isfinite(train_loss + sum(term_losses)):
        parts = "".join(f", {name} term {value}" for name, value in terms.items())
        raise PaeError(
            f"training diverged in epoch {p.epoch + 1}: the loss is {train_loss}{parts}; the last finite "
            f"state (epoch {p.epoch}) is kept in '{run.state}'.",
            DIVERGED_FIX,
        )
    epoch_norms = p.step_grad_norms[p.epoch * run.steps : (p.epoch + 1) * run.steps].mean(0).tolist()
    row = {
        "epoch": p.epoch + 1,
        "lr": run.optimizer.param_groups[0]["lr"],
        "train_loss": train_loss,
        "train_top1": 100.0 * p.correct.item() / n,
        **{f"{name}_loss": v for name, v in terms.items()},
        **scores,
        **{grad_norm_column(i): v for i, v in enumerate(epoch_norms)},
        **run.pae.diagnostics(run.model.method),
    }
    p.epoch, p.step, p.perm, p.draws = p.epoch + 1, 0, None, None
    p.sums.zero_()
    p.correct.zero_()
    p.history.append(row)
    return row


def start_row(run: TrainingRun, scores: dict[str, float]) -> dict:
    """Epoch 0: the untrained starting point (after PAE's init, if on), where every learning curve starts."""
    nan = float("nan")
    return {
        "epoch": 0,
        "lr": 0.0,
        "train_loss": nan,
        "train_top1": nan,
        **{f"{t}_loss": nan for t in run.pae.terms},
        **scores,
        **{grad_norm_column(i): nan for i in range(run.layers)},
        **run.pae.diagnostics(run.model.method),
    }


# ---------------------------------------------------------------------------------------------- results


def write_results(runs: list[TrainingRun]) -> list[dict]:
    """Every run's folder, then (only then: a kill between two runs' outputs must not lose the other runs' states)
    the states are dropped. A diverged search point is a result the selection skips; a diverged final run fails."""
    tune = runs[0].cfg.protocol == "tune"
    results = [write_diverged(r) if r.error else finish(r, len(runs)) for r in runs if tune or r.error is None]
    for run in runs:
        if tune or run.error is None:
            discard(run.state)
    failed = [r for r in runs if r.error is not None]
    if failed and not tune:
        if len(runs) == 1:
            raise failed[0].error
        names = ", ".join(f"'{r.out_dir.name}'" for r in failed)
        others = "the other runs finished and wrote their outputs" if len(failed) < len(runs) else "no run finished"
        raise PaeError(
            f"{len(failed)} of {len(runs)} runs diverged ({names}); {others}. First: {failed[0].error.problem}",
            failed[0].error.fix,
        )
    return results


def finish(run: TrainingRun, group_size: int) -> dict:
    """Write a finished run's folder and final metrics, and log them."""
    metrics = final_metrics(run, group_size)
    p = run.progress
    write_run(
        run.out_dir,
        run.cfg,
        metrics,
        p.history,
        p.step_grad_norms.tolist() if run.layers else None,
        run.tensors(),
        run.init_record,
    )
    record = metrics.to_json()
    run.tracker.log_metrics(
        {
            k: v
            for k, v in record.items()  # per-epoch series are logged already
            if isinstance(v, (int, float)) and math.isfinite(v) and k not in p.history[-1]
        },
        step=run.cfg.epochs,
    )
    run.tracker.log_artifacts(run.out_dir)
    run.status = "FINISHED"
    return record


def write_diverged(run: TrainingRun) -> dict:
    """A search point whose loss diverged is a result ("this lr is too high"), not a failed job: its metrics say
    so, with no accuracy, and the selection skips it (VPT's search grids reach lrs that diverge)."""
    metrics = RunMetrics.of(
        run.cfg,
        run.task.spec.label,
        run.tracker.run_id,
        **{DIVERGED: True, ERROR: run.error.problem},
        **{top1_key(s): None for s in run.task.evals},
    )
    write_run(run.out_dir, run.cfg, metrics)
    return metrics.to_json()


def final_metrics(run: TrainingRun, group_size: int) -> RunMetrics:
    cfg, method, evals, history = run.cfg, run.model.method, run.task.evals, run.progress.history
    selection_split = next(iter(evals))  # val200 under "tune", test under "final" (VTAB's protocol)

    def curve(split: str) -> list[float]:
        return [r[f"{split}_top1"] for r in history]  # NaN where an epoch was not evaluated

    numbers = {
        BACKBONE: cfg.arch,
        BACKBONE_SOURCE: run.tags.get("pae.source", "random weights"),
        TRAINABLE_PARAMS: sum(t.numel() for t in run.model.trainable_parameters()),
        PROMPT_PARAMS: sum(t.numel() for t in method.parameters() if t.requires_grad),
        PAE_PARAMS: sum(t.numel() for t in run.pae.parameters()),
        WALL_TIME_S: run.progress.elapsed,
        GROUP_SIZE: group_size,  # a group's runs share its wall time
        PAE_INIT_S: run.init_record.get("seconds", 0.0),
        **{top1_key(s): history[-1][f"{s}_top1"] for s in evals},
        **{top1_key(s, "best"): max(v for v in curve(s)[1:] if math.isfinite(v)) for s in evals},
        **{top1_key(s, "initial"): history[0][f"{s}_top1"] for s in evals},
        SELECTION_SPLIT: selection_split,
        CONVERGENCE_EPOCH: convergence_epoch(curve(selection_split)),
        SELECTION_CURVE: curve(selection_split),  # the convergence table's common-target columns read it
        FINAL_TRAIN_LOSS: history[-1]["train_loss"],
        # oscillation over epochs (per-epoch mean norms): per-step norms mostly measure minibatch noise
        **(oscillation_summary(history[1:]) if run.layers else {}),
        **run.pae.diagnostics(method),
    }
    return RunMetrics.of(cfg, run.task.spec.label, run.tracker.run_id, **numbers)
