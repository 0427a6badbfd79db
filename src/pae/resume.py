"""Resumable training: the state of a run between optimizer steps, saved atomically, restored exactly.

A long grid gets killed (SIGKILL, preemption, a full disk): a restarted job must end with the same numbers as an
uninterrupted one, not start over and not silently differ. The state holds everything the rest of the run reads:
trainable tensors, method buffers, PAE's parameters, the optimizer, every random generator, the epoch and step, the
current epoch's permutation and running sums, and the history so far. It is written with ``torch.save`` to a
temporary file and renamed into place, read back with ``weights_only=True``, and the two newest states are kept,
so a truncated file falls back to the one before it.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from .files import atomic_write, write_text

KEEP = 2  # states kept on disk: the newest, and one to fall back on if the newest is damaged
FORMAT = 4  # 2: the epoch's augmentation draws; 3: running sums per named loss term, no MPA record; 4: Koopman
# lifts per stage (regularizer.lifts.<s>)


@dataclass
class Progress:
    """Where a run stands between two optimizer steps."""

    epoch: int  # completed epochs
    step: int  # completed steps of the current epoch (0: at an epoch boundary)
    perm: torch.Tensor | None  # the current epoch's sample order (None at a boundary)
    draws: torch.Tensor | None  # the current epoch's augmentation draws (N, 3) (FGVC only; None at a boundary)
    sums: torch.Tensor  # running CE and each loss term of the plug-ins (weighted by batch size) of the epoch
    correct: torch.Tensor  # running correct predictions of the current epoch
    history: list[dict]  # one row per finished epoch, epoch 0 first
    step_grad_norms: torch.Tensor  # (epochs * steps, layers)
    generator: torch.Generator  # data order and augmentation
    elapsed: float = 0.0  # seconds of training and per-epoch evaluation so far, over all sessions

    @classmethod
    def start(cls, seed: int, steps: int, layers: int, terms: int, device: torch.device) -> Progress:
        """Before the first step: ``steps`` in all, ``layers`` with gradient norms, ``terms`` loss terms beside CE."""
        return cls(
            epoch=0,
            step=0,
            perm=None,
            draws=None,
            sums=torch.zeros(1 + terms, device=device),
            correct=torch.zeros((), dtype=torch.int64, device=device),
            history=[],
            step_grad_norms=torch.full((steps, layers), float("nan"), device=device),
            generator=torch.Generator().manual_seed(seed),
        )


def state_dir(out_dir: Path) -> Path:
    """Beside the run's output folder, never inside it: the outputs are swapped in whole at the end."""
    return out_dir.with_name(f".{out_dir.name}.state")


def _state_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("state-*.pt"))  # zero-padded names: newest last


def save_state(
    folder: Path,
    progress: Progress,
    config: str,
    tensors: dict[str, dict[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
) -> Path:
    """Write one state atomically (temp file, fsync, rename) and drop all but the newest ``KEEP``."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        "format": FORMAT,
        "config": config,
        "epoch": progress.epoch,
        "step": progress.step,
        "perm": _cpu(progress.perm),
        "draws": _cpu(progress.draws),
        "sums": _cpu(progress.sums),
        "correct": _cpu(progress.correct),
        "history": json.dumps(progress.history),
        "step_grad_norms": _cpu(progress.step_grad_norms),
        "generator": progress.generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "elapsed": progress.elapsed,
        "tensors": {group: {k: _cpu(v) for k, v in named.items()} for group, named in tensors.items()},
        "optimizer": optimizer.state_dict(),
    }
    path = atomic_write(
        folder / f"state-{progress.epoch:05d}-{progress.step:06d}.pt", lambda tmp: torch.save(state, tmp), durable=True
    )
    for old in _state_files(folder)[:-KEEP]:
        old.unlink()
    return path


def _cpu(t: torch.Tensor | None) -> torch.Tensor | None:
    """Device-independent states: a run saved on a GPU resumes anywhere."""
    return None if t is None else t.detach().cpu()


def _read(path: Path) -> dict | None:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        print(
            f"warning: training state '{path}' is damaged ({type(exc).__name__}); trying the one before it.",
            file=sys.stderr,
        )
        return None


def _readable(folder: Path, config: str) -> list[tuple[tuple[int, int], Path, dict]]:
    """(position, file, state) of every intact state of this config, newest first. States of another config or
    version (the params or the code changed) are discarded: resuming them would mix two experiments."""
    found = []
    for path in reversed(_state_files(folder)):
        state = _read(path)
        if state is None:
            continue
        if state.get("format") != FORMAT or state.get("config") != config:
            why = "another configuration" if state.get("format") == FORMAT else "another version of this code"
            print(f"note: training state in '{folder}' belongs to {why}; starting afresh.", file=sys.stderr)
            discard(folder)
            return []
        found.append(((state["epoch"], state["step"]), path, state))
    return found


def load_state(folder: Path, config: str) -> dict | None:
    """The newest readable state of this exact config, or None (a damaged file is reported and skipped)."""
    found = _readable(folder, config)
    return found[0][2] if found else None


def load_states(folders: list[Path], configs: list[str]) -> list[dict | None]:
    """The states of a group's runs, all at one position: the newest position every run still holds.

    A group saves its runs one after another, so a kill during the saves leaves some runs one save ahead; each of
    them still holds the state before (``KEEP``), the position the others are at. States ahead of that position
    are dropped, so later saves sort after it. When no common position exists (e.g. a run without any state),
    nothing is deleted and the group starts afresh."""
    found = [_readable(folder, config) for folder, config in zip(folders, configs)]
    common = set.intersection(*({position for position, _, _ in f} for f in found)) if found else set()
    if not common:
        if any(found):
            print(
                "note: the runs of this group hold no saved position in common; the group starts afresh.",
                file=sys.stderr,
            )
            for folder in folders:
                discard(folder)
        return [None] * len(folders)
    at = max(common)
    for f in found:
        for position, path, _ in f:
            if position > at:
                path.unlink()
    return [next(state for position, _, state in f if position == at) for f in found]


DIVERGED = "diverged.json"  # in a run's state folder: this config diverged; a group's restart leaves the run out


def mark_diverged(folder: Path, config: str, message: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_text(json.dumps({"config": config, "message": message}), folder / DIVERGED)


def diverged(folder: Path, config: str) -> str | None:
    """The divergence message of this exact config from an earlier attempt, or None (another config: forgotten)."""
    path = folder / DIVERGED
    if not path.is_file():
        return None
    mark = json.loads(path.read_text())
    if mark["config"] != config:
        discard(folder)
        return None
    return mark["message"]


def restore(
    state: dict, device: torch.device, tensors: dict[str, dict[str, torch.Tensor]], optimizer: torch.optim.Optimizer
) -> Progress:
    """Copy a loaded state into the live tensors, optimizer and generators, and return the progress it records."""
    for group, named in tensors.items():
        for name, target in named.items():
            target.data.copy_(state["tensors"][group][name].to(target.device, target.dtype))
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"]:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    generator = torch.Generator()
    generator.set_state(state["generator"])

    def to(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(device)

    return Progress(
        epoch=state["epoch"],
        step=state["step"],
        perm=to(state["perm"]),
        draws=to(state["draws"]),
        sums=to(state["sums"]),
        correct=to(state["correct"]),
        history=json.loads(state["history"]),
        step_grad_norms=to(state["step_grad_norms"]),
        generator=generator,
        elapsed=state["elapsed"],
    )


def discard(folder: Path) -> None:
    for path in [*folder.glob("state-*"), *folder.glob(".state-*"), folder / DIVERGED]:
        path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.rmdir()


@contextlib.contextmanager
def preemption() -> Iterator[threading.Event]:
    """An event set by SIGTERM (SLURM's preemption and time-limit signal) while the block runs."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        yield stop
    finally:
        signal.signal(signal.SIGTERM, previous)
