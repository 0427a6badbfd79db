"""Evaluation: top-1 during training, and the pipeline's evaluate stage, which rebuilds a finished run from its
saved checkpoint alone and re-measures it, so a table never rests on a model that cannot be reloaded."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .data import DataSpec, ImageTensors, eval_input, load_split
from .errors import PaeError
from .prompts import PromptedViT, build_model


@torch.no_grad()
def predictions(classify: Callable[[torch.Tensor], torch.Tensor], data: ImageTensors, batch_size: int,
                autocast: bool) -> torch.Tensor:
    """Predicted classes (..., N) of a whole split, kept on its device (no host sync per batch).

    ``classify`` maps a batch to classes (..., B): one run's (B,), or a group's (R, B) for R runs at once."""
    out = []
    for i in range(0, len(data), batch_size):
        with torch.autocast(data.images.device.type, dtype=torch.bfloat16, enabled=autocast):
            out.append(classify(eval_input(data.images[i:i + batch_size])))
    return torch.cat(out, dim=-1)


def top1(pred: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Accuracy (%) of predictions (..., N), on their device: reading it is the one host sync of an evaluation."""
    return 100.0 * (pred == labels).sum(-1) / len(labels)


def per_class_top1(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float | None]:
    """Recall of each class (%); None for a class with no images in the split."""
    total = torch.bincount(labels, minlength=num_classes)
    hit = torch.bincount(labels[pred == labels], minlength=num_classes)
    return [None if t == 0 else 100.0 * h / t for h, t in zip(hit.tolist(), total.tolist())]


def _read_run(run_dir: Path) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """config.json, checkpoint tensors and metrics.json of a finished run, with a clear error for each missing piece."""
    files = {name: run_dir / name for name in ("config.json", "checkpoint.safetensors", "metrics.json")}
    missing = [name for name, path in files.items() if not path.is_file()]
    if missing:
        raise PaeError(f"run folder '{run_dir}' has no {missing[0]}.", "rerun the training job that writes this folder.")
    try:
        tensors = load_file(str(files["checkpoint.safetensors"]))
    except (SafetensorError, OSError) as exc:
        raise PaeError(f"checkpoint '{files['checkpoint.safetensors']}' cannot be read ({exc}).",
                       "it is damaged or truncated; rerun the training job.") from exc
    return json.loads(files["config.json"].read_text()), tensors, json.loads(files["metrics.json"].read_text())


def load_trained(model: PromptedViT, tensors: dict[str, torch.Tensor], source: str | Path) -> None:
    """Trainable parameters and method buffers from a run's checkpoint; the first mismatching key is named."""
    expected = {n: p for n, p in model.named_parameters() if p.requires_grad}
    expected.update({f"method.{n}": b for n, b in model.method.named_buffers()})
    for name, target in expected.items():
        if name not in tensors:
            raise PaeError(f"checkpoint '{source}' lacks '{name}' that this model needs.",
                           "the run was made with another method or version; rerun it.")
        if tensors[name].shape != target.shape:
            raise PaeError(f"checkpoint '{source}': '{name}' has shape {tuple(tensors[name].shape)}, "
                           f"the model expects {tuple(target.shape)}.", "rebuild the model with the run's own config.json.")
        target.data.copy_(tensors[name].to(target.dtype))


def evaluate_run(run_dir: str | Path, device: str = "auto", tolerance: float = 0.5) -> dict:
    """Rebuild a run from config.json + checkpoint, evaluate every split it was evaluated on, compare with its record.

    A difference above ``tolerance`` points (bf16 and compiled kernels may flip a few borderline images) means the
    checkpoint does not reproduce the run: that is an error, never a table entry.
    """
    from .config import from_dict
    from .execution import SingleForward
    from .train import TrainConfig, resolve_device, run_backbone, run_splits, uses_bf16

    run_dir = Path(run_dir)
    config, tensors, metrics = _read_run(run_dir)
    cfg = from_dict(TrainConfig, config)
    dev = resolve_device(device)
    spec = DataSpec(cfg.data_kind, cfg.data_root, cfg.data_name)
    splits = {s: load_split(spec, s, cfg.img_size, cfg.cache_dir).to(dev) for s in run_splits(cfg, spec)[1]}
    num_classes = len(next(iter(splits.values())).classes)
    model = build_model(cfg.method, run_backbone(cfg), num_classes, **config["options"]).to(dev)
    load_trained(model, tensors, run_dir / "checkpoint.safetensors")
    autocast = uses_bf16(cfg.precision, dev)
    out: dict = {"run_dir": str(run_dir), "mlflow_run_id": metrics.get("mlflow_run_id")}
    for split, data in splits.items():
        pred = predictions(SingleForward(model).classify, data, cfg.eval_batch_size, autocast)[0]
        measured = top1(pred, data.labels).item()
        recorded = metrics[f"final_{split}_top1"]
        if abs(measured - recorded) > tolerance:
            raise PaeError(f"the checkpoint in '{run_dir}' gives {split} top-1 {measured:.2f}, but the run recorded "
                           f"{recorded:.2f}.", "the checkpoint does not belong to this run or is damaged; rerun the training job.")
        out[f"{split}_top1"] = measured
        out[f"recorded_{split}_top1"] = recorded
        out[f"{split}_per_class_top1"] = dict(zip(data.classes, per_class_top1(pred, data.labels, num_classes)))
    return out
