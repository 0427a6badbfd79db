"""Evaluation: top-1 during training, and the pipeline's evaluate stage, which rebuilds a finished run from its
saved checkpoint alone and re-measures it, so a table never rests on a model that cannot be reloaded."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from .data import ImageTensors, eval_input, load_split
from .errors import PaeError


@torch.no_grad()
def predictions(
    classify: Callable[[torch.Tensor], torch.Tensor], data: ImageTensors, batch_size: int, autocast: bool
) -> torch.Tensor:
    """Predicted classes (..., N) of a whole split, kept on its device (no host sync per batch).

    ``classify`` maps a batch to classes (..., B): one run's (B,), or a group's (R, B) for R runs at once."""
    out = []
    for i in range(0, len(data), batch_size):
        with torch.autocast(data.images.device.type, dtype=torch.bfloat16, enabled=autocast):
            out.append(classify(eval_input(data.images[i : i + batch_size])))
    return torch.cat(out, dim=-1)


def top1(pred: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Accuracy (%) of predictions (..., N), on their device: reading it is the one host sync of an evaluation."""
    return 100.0 * (pred == labels).sum(-1) / len(labels)


def per_class_top1(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float | None]:
    """Recall of each class (%); None for a class with no images in the split."""
    total = torch.bincount(labels, minlength=num_classes)
    hit = torch.bincount(labels[pred == labels], minlength=num_classes)
    return [None if t == 0 else 100.0 * h / t for h, t in zip(hit.tolist(), total.tolist())]


def evaluate_run(run_dir: str | Path, device: str = "auto", tolerance: float = 0.5) -> dict:
    """Rebuild a run from config.json + checkpoint, evaluate every split it was evaluated on, compare with its record.

    A difference above ``tolerance`` points (bf16 and compiled kernels may flip a few borderline images) means the
    checkpoint does not reproduce the run: that is an error, never a table entry.
    """
    from .build import configured_model, data_spec, protocol_splits, resolve_device, seeded_backbone, uses_bf16
    from .config.train import TrainConfig
    from .forward import SingleForward
    from .run_folder import CHECKPOINT, load_checkpoint, read_run, top1_key

    run_dir = Path(run_dir)
    config, tensors, metrics = read_run(run_dir)
    cfg = TrainConfig.from_dict(config)
    dev = resolve_device(device)
    spec = data_spec(cfg)
    splits = {s: load_split(spec, s, cfg.img_size, cfg.cache_dir).to(dev) for s in protocol_splits(cfg)[1]}
    num_classes = len(next(iter(splits.values())).classes)
    model = configured_model(cfg, seeded_backbone(cfg), num_classes).to(dev)
    load_checkpoint(model, tensors, run_dir / CHECKPOINT)
    autocast = uses_bf16(cfg.precision, dev)
    out: dict = {"run_dir": str(run_dir), "mlflow_run_id": metrics.get("mlflow_run_id")}
    for split, data in splits.items():
        pred = predictions(SingleForward(model).classify, data, cfg.eval_batch_size, autocast)[0]
        measured = top1(pred, data.labels).item()
        recorded = metrics[top1_key(split)]
        if abs(measured - recorded) > tolerance:
            raise PaeError(
                f"the checkpoint in '{run_dir}' gives {split} top-1 {measured:.2f}, but the run recorded "
                f"{recorded:.2f}.",
                "the checkpoint does not belong to this run or is damaged; rerun the training job.",
            )
        out[f"{split}_top1"] = measured
        out[f"recorded_{split}_top1"] = recorded
        out[f"{split}_per_class_top1"] = dict(zip(data.classes, per_class_top1(pred, data.labels, num_classes)))
    return out


def evaluate_stage(run_dirs: list[str | Path], out: str | Path, device: str = "auto") -> dict[str, dict]:
    """The pipeline's evaluate job, one per task and method (one process start for all its runs): re-measure each
    run, write ``{run_dir: result}`` to ``out``, add the re-measured top-1s to each run's MLflow run."""
    from .files import write_json
    from .tracking import log_to_run

    results = {}
    for run_dir in run_dirs:
        result = evaluate_run(run_dir, device)
        measured = {k: v for k, v in result.items() if isinstance(v, float) and not k.startswith("recorded")}
        log_to_run(result["mlflow_run_id"], {f"reloaded_{k}": v for k, v in measured.items()})
        results[str(run_dir)] = result
    write_json(results, out)
    return results
