"""PAE's MPA as pipeline stages of their own: the frequency-shortcut search, then the initial prompts of every block.

MPA depends on the task, the seed and PAE's band settings, not on the prompt method, so the pipeline runs it once
per (task, seed) and every method's training reads the result (``TrainConfig.init_prompts``). The prompts come out
exactly as if training had computed them itself (a test checks).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .build import LoadedTask, data_spec, load_task, sample_batch, save_init_prompts
from .config.train import TrainConfig
from .errors import PaeError
from .evolution.frequency import dominant_frequency_maps, fit_scorer
from .evolution.pae import discover, record_prompts
from .evolution.task_init import mpa_features
from .files import read_json, write_json
from .prompts.base import Trajectory


def training_task(cfg: TrainConfig) -> LoadedTask:
    """The run's training split and frozen backbone on its device, as ``train`` would load them."""
    cfg.resolved().validate()
    return load_task(cfg, evaluation=False)


def find_task_shortcuts(cfg: TrainConfig, out: str | Path) -> dict:
    """MPA phase I on the run's training batch, plus per-class dominant-frequency maps for the figure.

    The maps use a scorer fitted on the discovery batch and are measured on a disjoint batch of training
    images, so they show what the classes rely on rather than what the scorer memorised.
    """
    task = training_task(cfg)
    n, classes, backbone = cfg.pae.init_images, task.num_classes, task.backbone
    x, y = sample_batch(task, n, cfg.img_size, cfg.seed)
    readout = cfg.resolved().readout
    record = discover(cfg.pae, backbone, x, y, classes, cfg.options.num_tokens, cfg.seed, readout)
    start = time.perf_counter()
    held_x, held_y = sample_batch(task, n, cfg.img_size, cfg.seed, offset=n)
    maps: list = []
    if len(held_y):
        with torch.no_grad():
            features = mpa_features(backbone, cfg.options.num_tokens, cfg.pae.zero_prompt_scoring, readout)
            scorer = fit_scorer(cfg.pae.scorer, features(x), y, classes, cfg.seed)
            maps = dominant_frequency_maps(
                features, held_x, held_y, classes, record["window"], record["stride"], scorer
            ).tolist()
    record.update(
        task=task.spec.label,
        seed=cfg.seed,
        protocol=cfg.protocol,
        classes=task.train_data.classes,
        class_maps=maps,
        class_map_images=len(held_y),
        class_map_seconds=time.perf_counter() - start,
    )
    write_json(record, out)
    return record


def build_init_prompts(cfg: TrainConfig, shortcuts: str | Path, out: str | Path) -> Trajectory:
    """MPA phase II: prompts for every block from a shortcut record, saved with the record for the training run."""
    start = time.perf_counter()
    record = read_json(shortcuts, "rerun the shortcut search (pae.cli shortcuts) for this task and seed.")
    if record.get("seed") != cfg.seed or record.get("task") != data_spec(cfg).label:
        raise PaeError(
            f"shortcut record '{shortcuts}' is for task {record.get('task')} seed {record.get('seed')}, "
            f"not this run's.",
            "pass the record of the same task and seed.",
        )
    task = training_task(cfg)
    x, _ = sample_batch(task, cfg.pae.init_images, cfg.img_size, cfg.seed)
    prompts = record_prompts(task.backbone, x, record)
    kept = {k: v for k, v in record.items() if not k.startswith("class_map")}
    kept["seconds"] = record["seconds"] + time.perf_counter() - start  # discovery + pooling: PAE's init cost
    save_init_prompts(out, prompts, kept)
    return prompts
