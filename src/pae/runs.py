"""Runs end to end: one training job, or several runs of one task as one group, from config to outputs.

Each run keeps its own output folder, saved states and MLflow run whether it trains alone or in a group; a
group shares the data, the backbone and one (vmapped) forward (``execution.GroupForward``). Outputs are swapped
in whole, so a declared output is never half written.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from safetensors.torch import save_file

from .config import flatten
from .errors import PaeError
from .execution import make_forward
from .reports.tables import write_csv
from .resume import (Preempted, Progress, diverged, discard, load_states, mark_diverged, preemption, restore,
                     save_state, state_dir)
from .tracking import Tracker
from .train import (DIVERGED_FIX, Job, TrainConfig, build_job, close_epoch, evaluate_runs, evaluation_due,
                    final_metrics, fresh_progress, load_shared, provenance, run_tags, start_row, train_steps,
                    unevaluated)


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


def swap_in(out_dir: Path, files: dict[str, dict], fill: Callable[[Path], None] = lambda folder: None) -> None:
    """Write the JSON ``files`` (and whatever ``fill`` adds) into a sibling temp folder, then swap it in whole:
    a crash never leaves half a run."""
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, content in files.items():
        (tmp / name).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
    fill(tmp)
    old = out_dir.with_name(f".{out_dir.name}.old")
    if out_dir.exists():
        shutil.rmtree(old, ignore_errors=True)
        out_dir.rename(old)
    tmp.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)


def write_outputs(out_dir: Path, job: Job, progress: Progress, metrics: dict) -> None:
    """metrics.json, config.json, the history, per-step gradient norms and the checkpoint of a finished run."""
    cfg = job.cfg
    files = {"metrics.json": metrics, "config.json": asdict(cfg)}
    if progress.shortcuts:
        files["shortcuts.json"] = progress.shortcuts

    def fill(tmp: Path) -> None:
        write_csv(progress.history, tmp / "history.csv")
        if job.layers:
            write_csv([{"step": i + 1, **{f"grad_norm_l{l}": v for l, v in enumerate(r)}}
                       for i, r in enumerate(progress.step_grad_norms.tolist())], tmp / "grad_norms.csv")
        groups = job.state_tensors()
        tensors = {**groups["trainable"], **{f"method.{n}": b for n, b in groups["buffers"].items()},
                   **{f"pae.{n}": t for n, t in groups["pae"].items()}}
        save_file({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()},
                  str(tmp / "checkpoint.safetensors"), metadata={"config": json.dumps(asdict(cfg))})

    swap_in(out_dir, files, fill)


def write_diverged(run: "Run") -> dict:
    """A search point whose loss diverged is a result ("this lr is too high"), not a failed job: its metrics say
    so, with no accuracy, and the selection skips it (VPT's search grids reach lrs that diverge)."""
    cfg = run.job.cfg
    metrics = {"task": run.job.shared.spec.label, "task_group": cfg.task_group, "method": cfg.method,
               "pae": cfg.pae.label, "seed": cfg.seed, "epochs": cfg.epochs, "lr": cfg.lr,
               "weight_decay": cfg.weight_decay, "protocol": cfg.protocol, "diverged": True,
               "error": run.error.problem, "mlflow_run_id": run.tracker.run_id,
               **{f"final_{s}_top1": None for s in run.job.shared.evals}}
    swap_in(run.out_dir, {"metrics.json": metrics, "config.json": asdict(cfg)})
    return metrics


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
    """Each run with its progress: fresh, or resumed from states aligned to one position (see ``load_states``).
    A run that diverged in an earlier attempt keeps its error and stays out of the group."""
    runs, shared_tags = [], provenance(jobs[0].cfg, jobs[0].shared)  # the same for every run of a group
    for job, out in zip(jobs, out_dirs):
        cfg, config = job.cfg, json.dumps(asdict(job.cfg), sort_keys=True)
        label = f"{job.shared.spec.label}/{cfg.method}/{cfg.pae.label}/seed{cfg.seed}"
        tracker = Tracker(cfg.experiment, label, enabled=cfg.mlflow, key=run_key(out, config))
        runs.append(Run(job, out, config, state_dir(out), fresh_progress(job), tracker, run_tags(job, shared_tags), label))
        message = diverged(runs[-1].state, config)
        if message:
            runs[-1].error = PaeError(message, DIVERGED_FIX)
    live = [r for r in runs if r.error is None]
    for run, loaded in zip(live, load_states([r.state for r in live], [r.config for r in live])):
        if loaded:
            run.progress = restore(loaded, run.job.device, run.job.state_tensors(), run.job.optimizer)
    return runs


def train_runs(cfgs: list[TrainConfig]) -> list[dict]:
    """Train one run, or several runs of one task as one group (``check_group``), and return their final metrics.

    After every epoch (and at the next step after SIGTERM) each run's state is saved beside its output folder; the
    same command then resumes from the newest intact states and ends with exactly the numbers of an uninterrupted
    run, logging into the same MLflow runs. A run of a group that diverges stops alone and the others finish; under
    the final protocol the error names it at the end, under "tune" its metrics say it diverged (a search result).
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
        active = [r for r in runs if r.error is None]
        forward = make_forward([r.job.model for r in active], cfg.compile) if active else None
        if active and not active[0].progress.history:
            for run, scores in zip(active, evaluate_runs([r.job for r in active], forward)):
                run.progress.history.append(start_row(run.job, scores))
                run.save()
        for run in active:
            for row in run.progress.history:  # a resumed run re-logs its history: identical entries are stored once
                run.log(row)
        label = runs[0].label if len(runs) == 1 else f"{len(runs)} runs of {shared.spec.label}/{cfg.method}/{cfg.pae.label}"
        start = active[0].progress.epoch if active else cfg.epochs
        with preemption() as stop, tqdm(total=cfg.epochs, initial=start, desc=label, unit="epoch", leave=False) as bar:
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
                        mark_diverged(run.state, run.config, exc.problem)
                        continue
                    run.progress.elapsed += elapsed
                    run.save()
                    run.log(row)
                if any(r.error for r in active):
                    active = [r for r in active if r.error is None]
                    forward = make_forward([r.job.model for r in active], cfg.compile) if active else forward
                bar.update()
        failed = [r for r in runs if r.error is not None]
        tune = cfg.protocol == "tune"  # a diverged search point is a result the selection skips
        results = [write_diverged(r) if r.error else finish(r, len(runs)) for r in runs if tune or r.error is None]
        for run in runs:  # only now: a kill between two runs' outputs must not lose the other runs' states
            if tune or run.error is None:
                discard(run.state)
        if failed and not tune:
            if len(runs) == 1:
                raise failed[0].error
            names = ", ".join(f"'{r.out_dir.name}'" for r in failed)
            others = "the other runs finished and wrote their outputs" if active else "no run finished"
            raise PaeError(f"{len(failed)} of {len(runs)} runs diverged ({names}); {others}. First: "
                           f"{failed[0].error.problem}", failed[0].error.fix)
        return results
    finally:
        for run in runs:
            run.tracker.finish(run.status)


def finish(run: Run, group_size: int) -> dict:
    """Write a finished run's outputs and final metrics and log them."""
    job, progress = run.job, run.progress
    metrics = final_metrics(job, progress, run.tags, run.tracker.run_id, group_size)
    write_outputs(run.out_dir, job, progress, metrics)
    run.tracker.log_metrics({k: v for k, v in metrics.items()  # per-epoch series are logged already
                             if isinstance(v, (int, float)) and math.isfinite(v) and k not in progress.history[-1]},
                            step=job.cfg.epochs)
    run.tracker.log_artifacts(run.out_dir)
    run.status = "FINISHED"
    return metrics


def train(cfg: TrainConfig) -> dict:
    """Run one training job end to end and return its final metrics (``train_runs`` for a group)."""
    return train_runs([cfg])[0]


def run_key(out_dir: Path, config: str) -> str:
    """Names a job across restarts (its folder and exact config), so a resumed run finds its MLflow run again."""
    return hashlib.sha256(f"{out_dir}\n{config}".encode()).hexdigest()[:32]
