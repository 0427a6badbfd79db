"""Pipeline stages around training: MPA's two phases as jobs of their own, and VPT's hyper-parameter selection.

MPA depends on the task, the seed and PAE's band settings, not on the prompt method, so the pipeline runs
it once per (task, seed) and every method's training reads the result (``TrainConfig.init_prompts``).
The prompts come out exactly as if training had computed them itself (a test checks).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from .data import DataSpec, ImageTensors, load_split
from .errors import PaeError
from .evolution.frequency import dominant_frequency_maps, fit_scorer
from .evolution.pae import discover, record_prompts
from .evolution.task_init import cls_features
from .train import TrainConfig, resolve_device, run_backbone, run_splits, sample_batch


def _training_data(cfg: TrainConfig) -> tuple[DataSpec, ImageTensors, torch.nn.Module, torch.device]:
    """The run's training split and frozen backbone on its device, as ``train`` would load them."""
    cfg.validate()
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    spec = DataSpec(cfg.data_kind, cfg.data_root, cfg.data_name)
    data = load_split(spec, run_splits(cfg, spec)[0], cfg.img_size, cfg.cache_dir, for_training=True).to(device)
    return spec, data, run_backbone(cfg).to(device), device


def write_json(record: dict, out: str | Path) -> None:
    """Atomically (temp file + rename), NaN as null: a killed job never leaves half a file behind."""
    clean = json.loads(json.dumps(record), parse_constant=lambda _: None)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(clean, indent=2) + "\n")
    tmp.replace(out)


def find_task_shortcuts(cfg: TrainConfig, out: str | Path) -> dict:
    """MPA phase I on the run's training batch, plus per-class dominant-frequency maps for the figure.

    The maps use a scorer fitted on the discovery batch and are measured on a disjoint batch of training
    images, so they show what the classes rely on rather than what the scorer memorised.
    """
    spec, data, backbone, _ = _training_data(cfg)
    n, classes = cfg.pae.init_images, len(data.classes)
    x, y = sample_batch(spec, data, n, cfg.img_size, cfg.seed)
    record = discover(cfg.pae, backbone, x, y, classes, cfg.options.num_tokens, cfg.seed)
    start = time.perf_counter()
    held_x, held_y = sample_batch(spec, data, n, cfg.img_size, cfg.seed, offset=n)
    maps: list = []
    if len(held_y):
        with torch.no_grad():
            scorer = fit_scorer(cfg.pae.scorer, cls_features(backbone, x), y, classes, cfg.seed)
            maps = dominant_frequency_maps(lambda b: cls_features(backbone, b), held_x, held_y, classes,
                                           record["window"], record["stride"], scorer).tolist()
    record.update(task=spec.label, seed=cfg.seed, protocol=cfg.protocol, classes=data.classes, class_maps=maps,
                  class_map_images=len(held_y), class_map_seconds=time.perf_counter() - start)
    write_json(record, out)
    return record


def build_init_prompts(cfg: TrainConfig, shortcuts: str | Path, out: str | Path) -> torch.Tensor:
    """MPA phase II: prompts for every block from a shortcut record, saved with the record for the training run."""
    start = time.perf_counter()
    record = json.loads(Path(shortcuts).read_text())
    if record.get("seed") != cfg.seed or record.get("task") != DataSpec(cfg.data_kind, cfg.data_root, cfg.data_name).label:
        raise PaeError(f"shortcut record '{shortcuts}' is for task {record.get('task')} seed {record.get('seed')}, "
                       f"not this run's.", "pass the record of the same task and seed.")
    spec, data, backbone, _ = _training_data(cfg)
    x, _ = sample_batch(spec, data, cfg.pae.init_images, cfg.img_size, cfg.seed)
    prompts = record_prompts(backbone, x, record, len(backbone.blocks)).float().cpu().contiguous()
    kept = {k: v for k, v in record.items() if not k.startswith("class_map")}
    kept["seconds"] = record["seconds"] + time.perf_counter() - start  # discovery + pooling: PAE's init cost
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(out).with_name(f".{Path(out).name}.tmp")
    save_file({"prompts": prompts}, str(tmp), metadata={"record": json.dumps(kept)})
    tmp.replace(out)
    return prompts


def select_hparams(metrics_files: list[str | Path], out: str | Path) -> dict:
    """VPT's rule: the (lr, weight decay) with the best final val200 top-1; ties go to the smaller lr, then wd."""
    runs = [json.loads(Path(p).read_text()) for p in metrics_files]
    if not runs:
        raise PaeError("no search runs were given.", "list the tune runs' metrics.json files.")
    not_tune = [r for r in runs if r.get("protocol") != "tune" or "final_val200_top1" not in r]
    if not_tune:
        r = not_tune[0]
        raise PaeError(f"run {r.get('task')}/{r.get('method')}/lr {r.get('lr')} was not trained on the tune "
                       "protocol (train800 -> val200).", "select only among runs made with --protocol tune.")
    scored = [r for r in runs if r["final_val200_top1"] is not None and math.isfinite(r["final_val200_top1"])]
    if not scored:
        raise PaeError("every search run ended without a finite val200 top-1.", "widen the search toward smaller lrs.")
    best = min(scored, key=lambda r: (-r["final_val200_top1"], r["lr"], r["weight_decay"]))
    record = {"lr": best["lr"], "weight_decay": best["weight_decay"], "val200_top1": best["final_val200_top1"],
              "mlflow_run_id": best.get("mlflow_run_id"),
              "candidates": [{k: r.get(k) for k in ("lr", "weight_decay", "final_val200_top1", "mlflow_run_id")}
                             for r in sorted(runs, key=lambda r: (r["lr"], r["weight_decay"]))]}
    write_json(record, out)
    return record
