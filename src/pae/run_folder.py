"""A run's folder: which files it holds, the record its metrics.json is, the checkpoint's tensor names, and the one
way it is written (whole, by ``files.atomic_write``) and read back.

    metrics.json   what the run is and what it scored (``RunMetrics``); tables, the selection, evaluate read it
    config.json    the TrainConfig it ran with; ``evaluate`` rebuilds the run from it and the checkpoint
    history.csv    one row per epoch, epoch 0 (untrained) first; grad_norms.csv: per-step prompt-gradient norms
    checkpoint.safetensors   trainable tensors, method buffers ("method.*") and PAE's ("pae.*")
    shortcuts.json MPA's record, for runs with PAE's init

Nothing here imports torch at module level: the figures read the checkpoint's names without it.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config.options import flatten
from .errors import PaeError
from .files import atomic_write, json_text, read_json, write_csv

if TYPE_CHECKING:
    import torch

    from .config.train import TrainConfig

METRICS, CONFIG, HISTORY, GRAD_NORMS = "metrics.json", "config.json", "history.csv", "grad_norms.csv"
CHECKPOINT, SHORTCUTS = "checkpoint.safetensors", "shortcuts.json"
RUN_FILES = (CHECKPOINT, CONFIG, GRAD_NORMS, HISTORY, METRICS, SHORTCUTS)
METHOD_PREFIX, PAE_PREFIX = "method.", "pae."
KOOPMAN_KEY = f"{PAE_PREFIX}regularizer.K"  # the Koopman operator K in a checkpoint (the spectrum figure reads it)
RERUN = "rerun the training job that writes this run folder."


# metrics.json's fields beside the identity (``RunMetrics``' own fields, under their names); nothing else names them

# the backbone: its timm name and where its weights came from
BACKBONE, BACKBONE_SOURCE = "backbone", "backbone_source"
# cost: parameter counts (all trainable, the prompt method's, PAE's) and seconds; a group's runs share its wall time
TRAINABLE_PARAMS, PROMPT_PARAMS, PAE_PARAMS = "trainable_params", "prompt_params", "pae_params"
WALL_TIME_S, GROUP_SIZE, PAE_INIT_S = "wall_time_s", "group_size", "pae_init_s"
# convergence: the split a run is judged on, its top-1 there per epoch (epoch 0 first), epochs to 99% of its best
SELECTION_SPLIT, SELECTION_CURVE, CONVERGENCE_EPOCH = "selection_split", "selection_curve", "convergence_epoch"
FINAL_TRAIN_LOSS = "final_train_loss"
# the Koopman regularizer's diagnostics: rho(K) (per transition: "_t<i>" added), ||U||, the lift gain
KOOPMAN_SPECTRAL_RADIUS, KOOPMAN_LIFT_NORM, KOOPMAN_LIFT_GAIN = (
    "koopman_spectral_radius",
    "koopman_lift_norm",
    "koopman_lift_gain",
)
# a search point whose loss diverged: true, and the error; its top-1s are null
DIVERGED, ERROR = "diverged", "error"
SETTINGS = "settings"  # the run's flattened TrainConfig, tags left out


def top1_key(split: str, kind: str = "final") -> str:
    """The metrics.json name of a top-1: kind 'final' (last epoch), 'best' or 'initial' (epoch 0) on ``split``."""
    return f"{kind}_{split}_top1"


TEST_TOP1 = top1_key("test")  # the number every accuracy table reports


def grad_norm_column(layer: int) -> str:
    """The history.csv and grad_norms.csv column of prompt layer ``layer``'s gradient norm (0 = first prompt layer)."""
    return f"grad_norm_l{layer}"


GRAD_NORM_COLUMN = re.compile(r"grad_norm_l(\d+)")  # ``grad_norm_column``'s names; group 1 is the layer


def grad_key(stat: str, part: int | str) -> str:
    """The metrics.json name of a gradient-oscillation statistic (``diagnostics.oscillation_summary``): ``stat``
    'flip_rate' or 'cv', of prompt layer ``part`` (an int) or averaged over the 'shallow' or 'deep' half."""
    return f"grad_{stat}_{f'l{part}' if isinstance(part, int) else part}"


@dataclass
class RunMetrics:
    """metrics.json: who the run is (its identity, shared by finished and diverged runs) and what it measured."""

    task: str
    task_group: str
    method: str
    pae: str
    seed: int
    epochs: int
    lr: float
    weight_decay: float
    protocol: str
    profile: str
    mlflow_run_id: str | None
    numbers: dict[str, Any] = field(default_factory=dict)  # top-1s, costs, diagnostics (flat, JSON-ready)

    @classmethod
    def of(cls, cfg: TrainConfig, task: str, mlflow_run_id: str | None, **numbers: Any) -> RunMetrics:
        return cls(
            task,
            cfg.task_group,
            cfg.method,
            cfg.variant,
            cfg.seed,
            cfg.epochs,
            cfg.lr,
            cfg.weight_decay,
            cfg.protocol,
            cfg.profile,
            mlflow_run_id,
            {SETTINGS: {k: v for k, v in flatten(cfg).items() if not k.startswith("tags")}, **numbers},
        )

    def to_json(self) -> dict[str, Any]:
        """One flat mapping; undefined statistics (NaN, inf), at any depth, are null, as JSON has no NaN."""
        identity = {k: v for k, v in asdict(self).items() if k != "numbers"}
        return json.loads(json.dumps({**identity, **self.numbers}), parse_constant=lambda _: None)


def read_metrics(path: str | Path) -> dict[str, Any]:
    return read_json(path, RERUN)


def check_out_dir(out_dir: str | Path) -> Path:
    """Refuse, before any work, a folder that holds anything but an earlier run's outputs: it gets replaced."""
    out = Path(out_dir).resolve()
    if out.exists() and not out.is_dir():
        raise PaeError(f"output path '{out}' is a file, not a folder.", "choose a new --out-dir.")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in RUN_FILES) if out.is_dir() else []
    if foreign:
        raise PaeError(
            f"output folder '{out}' holds files that are not a run's outputs (first: '{foreign[0]}'); "
            "a run replaces its whole folder.",
            "choose an empty or new --out-dir; nothing was touched.",
        )
    return out


def checkpoint_tensors(groups: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """A run's tensor groups (trainable, buffers, pae) under their checkpoint names."""
    prefix = {"trainable": "", "buffers": METHOD_PREFIX, "pae": PAE_PREFIX}
    return {prefix[group] + name: t for group, named in groups.items() for name, t in named.items()}


def write_run(
    out_dir: Path,
    cfg: TrainConfig,
    metrics: RunMetrics,
    history: list[dict] | None = None,
    grad_norms: list[list[float]] | None = None,
    groups: dict[str, dict[str, torch.Tensor]] | None = None,
    shortcuts: dict | None = None,
) -> None:
    """Write the run folder whole: a crash never leaves half a run. A diverged search point has metrics and config
    only."""
    from safetensors.torch import save_file

    config = asdict(cfg)
    files = {METRICS: metrics.to_json(), CONFIG: config, **({SHORTCUTS: shortcuts} if shortcuts else {})}

    def fill(folder: Path) -> None:
        folder.mkdir()
        for name, content in files.items():
            (folder / name).write_text(json_text(content))
        if history is not None:
            write_csv(history, folder / HISTORY)
        if grad_norms:
            write_csv(
                [
                    {"step": i + 1, **{grad_norm_column(layer): v for layer, v in enumerate(row)}}
                    for i, row in enumerate(grad_norms)
                ],
                folder / GRAD_NORMS,
            )
        if groups is not None:
            tensors = {k: v.detach().float().cpu().contiguous() for k, v in checkpoint_tensors(groups).items()}
            save_file(tensors, str(folder / CHECKPOINT), metadata={"config": json.dumps(config)})

    atomic_write(out_dir, fill)


def read_run(run_dir: str | Path) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """config.json, checkpoint tensors and metrics.json of a finished run, with a clear error for each missing piece."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    missing = [name for name in (CONFIG, CHECKPOINT, METRICS) if not (run_dir / name).is_file()]
    if missing:
        raise PaeError(
            f"run folder '{run_dir}' has no {missing[0]}.", "rerun the training job that writes this folder."
        )
    try:
        tensors = load_file(str(run_dir / CHECKPOINT))
    except (SafetensorError, OSError) as exc:
        raise PaeError(
            f"checkpoint '{run_dir / CHECKPOINT}' cannot be read ({exc}).",
            "it is damaged or truncated; rerun the training job.",
        ) from exc
    return read_json(run_dir / CONFIG, RERUN), tensors, read_metrics(run_dir / METRICS)


def load_checkpoint(model: Any, tensors: dict[str, torch.Tensor], source: str | Path) -> None:
    """A run's trainable parameters and method buffers into ``model``; the first mismatching key is named."""
    expected = {n: p for n, p in model.named_parameters() if p.requires_grad}
    expected.update({METHOD_PREFIX + n: b for n, b in model.method.named_buffers()})
    for name, target in expected.items():
        if name not in tensors:
            raise PaeError(
                f"checkpoint '{source}' lacks '{name}' that this model needs.",
                "the run was made with another method or version; rerun it.",
            )
        if tensors[name].shape != target.shape:
            raise PaeError(
                f"checkpoint '{source}': '{name}' has shape {tuple(tensors[name].shape)}, "
                f"the model expects {tuple(target.shape)}.",
                "rebuild the model with the run's own config.json.",
            )
        target.data.copy_(tensors[name].to(target.dtype))
