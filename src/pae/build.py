"""From a run's config to the objects it trains: device, data on the device, frozen backbone, prompted model, PAE
(with MPA's initial prompts). Training, evaluation, the MPA stages and the benchmarks all build through here, so a
run is the same model wherever it is rebuilt."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .backbones import load_backbone
from .config.train import TrainConfig
from .data import FINAL_SPLITS, TUNE_SPLITS, DataSpec, ImageTensors, load_split, train_input
from .errors import PaeError
from .evolution import PAE
from .evolution.pae import discover, record_prompts
from .files import atomic_write
from .prompts import PromptedModel, build_model
from .prompts.base import Trajectory, as_stages


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PaeError(f"device '{name}' requested but CUDA is not available.", "use --device cpu or auto.")
    return torch.device(name)


def uses_bf16(precision: str, device: torch.device) -> bool:
    """'auto' means bf16 autocast on CUDA and fp32 elsewhere."""
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def data_spec(cfg: TrainConfig) -> DataSpec:
    return DataSpec(cfg.data_kind, cfg.data_root, cfg.data_name)


def protocol_splits(cfg: TrainConfig) -> tuple[str, tuple[str, ...]]:
    """(training split, evaluation splits) of the run's protocol; the first evaluation split selects. A search run
    evaluates the test split only when asked (``tune_test``): VPT's search builds no test loader, and VTAB's test
    splits (up to 26k images) would cost more than the search's training."""
    train, evals = (FINAL_SPLITS if cfg.protocol == "final" else TUNE_SPLITS)[cfg.data_kind]
    if cfg.protocol == "tune" and not cfg.tune_test:
        evals = tuple(s for s in evals if s != "test")
    return train, evals


def seeded_backbone(cfg: TrainConfig) -> nn.Module:
    """The run's frozen backbone; without weights, the random one its seed makes, the same in every stage."""
    torch.manual_seed(cfg.seed)
    return load_backbone(cfg.arch, cfg.weights, cfg.img_size)


@dataclass
class LoadedTask:
    """What the runs of one task share: its data on the device, the frozen backbone, MPA's prompts per seed."""

    device: torch.device
    spec: DataSpec
    train_data: ImageTensors
    evals: dict[str, ImageTensors]
    backbone: nn.Module
    init: dict[int, tuple[torch.Tensor, dict]] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.train_data.classes)


def load_task(cfg: TrainConfig, evaluation: bool = True) -> LoadedTask:
    """The task's training split (and, with ``evaluation``, its evaluation splits) on the run's device, and the
    frozen backbone: loaded once for all the runs of a group."""
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    spec = data_spec(cfg)
    train_split, eval_splits = protocol_splits(cfg)
    train_data = load_split(spec, train_split, cfg.img_size, cfg.cache_dir, for_training=True)
    train_data = train_data.balanced_subset(cfg.train_images).to(device)
    evals = {s: load_split(spec, s, cfg.img_size, cfg.cache_dir).to(device) for s in eval_splits} if evaluation else {}
    return LoadedTask(device, spec, train_data, evals, seeded_backbone(cfg).to(device))


def augmentation_draws(spec: DataSpec, n: int, generator: torch.Generator) -> torch.Tensor | None:
    """Uniform numbers (n, 3) for FGVC's random crop and flip (None for data without augmentation), drawn from the
    run's CPU generator, so a run's augmentation is the same on any device and after a resume."""
    return torch.rand(n, 3, generator=generator) if spec.kind == "fgvc" else None


def sample_batch(
    task: LoadedTask, n: int, img_size: int, seed: int, offset: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random training images as model input (training augmentation) and their labels, fixed by ``seed``.

    ``offset`` skips that many images of the same permutation: a batch disjoint from the one at offset 0."""
    data = task.train_data
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data), generator=gen)[offset : offset + n].to(data.labels.device)
    sizes = None if data.sizes is None else data.sizes[idx]
    draws = augmentation_draws(task.spec, len(idx), gen)
    return train_input(task.spec, data.images[idx], sizes, img_size, draws), data.labels[idx]


def configured_model(cfg: TrainConfig, backbone: nn.Module, num_classes: int) -> PromptedModel:
    """The prompted model ``cfg`` describes, freshly initialised from the global RNG (training seeds it; evaluation
    overwrites it with a checkpoint)."""
    resolved = cfg.resolved()
    return build_model(cfg.method, backbone, num_classes, cfg.options, cfg.head_init, cfg.pae.enabled, resolved.readout)


def run_model(cfg: TrainConfig, task: LoadedTask) -> PromptedModel:
    """The prompted model of a run on the task's backbone, fitted to the data where its method needs it; its init
    depends on the seed alone, not on how the backbone was made."""
    torch.manual_seed(cfg.seed)
    model = configured_model(cfg, task.backbone, task.num_classes).to(task.device)
    method = model.method
    if method.fit_images:
        method.fit_to_data(model.backbone, sample_batch(task, method.fit_images, cfg.img_size, cfg.seed)[0])
    return model


def save_init_prompts(path: str | Path, prompts: Trajectory, record: dict) -> None:
    """MPA's prompts as fp32 tensors with their record: one ``prompts`` (L, p, d) on a ViT, ``prompts.<stage>`` per
    Swin stage."""
    from safetensors.torch import save_file

    stages = as_stages(prompts)
    keys = ["prompts"] if isinstance(prompts, torch.Tensor) else [f"prompts.{i}" for i in range(len(stages))]
    tensors = {k: s.float().cpu().contiguous() for k, s in zip(keys, stages)}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"record": json.dumps(record)}))


def load_init_prompts(path: str | Path) -> tuple[Trajectory, dict]:
    """The prompts and the MPA record written by ``save_init_prompts`` (`pae.cli init-prompts`)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            record = json.loads(f.metadata()["record"])
            keys = list(f.keys())
            if "prompts" in keys:
                return f.get_tensor("prompts"), record
            return [f.get_tensor(f"prompts.{i}") for i in range(len(keys))], record
    except (OSError, KeyError, ValueError, SafetensorError) as exc:
        raise PaeError(
            f"initial prompts '{path}' cannot be read ({exc}).", "rerun `pae.cli init-prompts` for this task and seed."
        ) from exc


def initial_prompts(cfg: TrainConfig, task: LoadedTask, model: PromptedModel) -> tuple[Trajectory, dict]:
    """MPA's prompts and record: read from ``init_prompts``, or discovered once per seed and shared by its runs."""
    if cfg.init_prompts:
        return load_init_prompts(cfg.init_prompts)
    if cfg.seed not in task.init:
        start = time.perf_counter()
        x, y = sample_batch(task, cfg.pae.init_images, cfg.img_size, cfg.seed)
        record = discover(
            cfg.pae, model.backbone, x, y, task.num_classes, model.method.num_tokens, cfg.seed, model.pool
        )
        prompts = record_prompts(model.backbone, x, record)
        record["seconds"] = time.perf_counter() - start
        task.init[cfg.seed] = prompts, record
    prompts, record = task.init[cfg.seed]
    return prompts, dict(record)


def run_pae(cfg: TrainConfig, task: LoadedTask, model: PromptedModel) -> tuple[PAE, dict]:
    """PAE for the run's method, with MPA's prompts written into the method when init is on, and MPA's record
    (empty without init). Training's randomness then starts from ``seed + 1``, whether MPA ran here or in its own
    stage."""
    pae = PAE(cfg.pae, model.method).to(task.device)
    record: dict = {}
    if cfg.pae.init:
        prompts, record = initial_prompts(cfg, task, model)
        pae.initialize(model.method, prompts)
    torch.manual_seed(cfg.seed + 1)
    return pae, record
