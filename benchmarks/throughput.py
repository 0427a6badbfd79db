"""Training throughput of the fast path against a plain fp32 PyTorch loop of the same model, in one process.

    python benchmarks/throughput.py                          # GPU: ViT-B/16 + ViT-S/14 at 224 px, batch 128
    python benchmarks/throughput.py --device cpu             # CPU: the same table at reduced size (CI logs)
    python benchmarks/throughput.py --archs vit_base_patch16_224 --methods vpt_deep --group 4 8
    python benchmarks/throughput.py --parts mpa --init-images 128            # one part only (the device check)

What each number is, and why it is measured this way:

- ``plain fp32``: the textbook loop (fp32, eager, a float batch already on the device, ``torch.optim.SGD`` with
  its defaults): the baseline every speed-up is stated against.
- ``fast``: our training loop itself (``pae.loop.train_epoch``): uint8 data on the device, normalisation on the
  device, bf16 autocast and ``torch.compile`` where the device has them, fused SGD, per-step gradient-norm
  diagnostics, and PAE's regularizer when the row says so. Images/s over whole timed epochs after a warm-up epoch.
- ``PAE overhead``: step time with the Koopman + Lyapunov regularizer over step time without (the target: <= 5%).
- ``TFLOP/s`` and ``MFU``: FLOPs of one eager training step (forward + backward, torch's FlopCounterMode) per
  second of a fast step, over the device's dense bf16 peak (``--peak-tflops`` where the device is not known).
- ``compile s``: the warm-up epoch's time less the timed epoch's (the same steps): what compiling cost that row.
  Rows after the first that build the same graph reuse Inductor's on-disk cache, so theirs is smaller.
- ``x plain VPT-deep``: every fast row over the plain loop's VPT-deep (the reference the issue's targets use).
- ``group``: R runs of one task trained as one vmapped group (``pae.forward.GroupForward``) against one run:
  images/s over all runs (how a task's lr/wd search fills a GPU).
- ``MPA search``: PAE's frequency-shortcut search of one task (one FFT, batched band masks) on ``--init-images``
  images, and ``VTAB-1k task``: 1,000 images x ``--task-epochs`` epochs + a test evaluation, end to end.

Weights are random: the cost of a step does not depend on their values. Data is random uint8 images.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import threading
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from pae.build import LoadedTask, sample_batch, seeded_backbone
from pae.config.pae import PAEOptions
from pae.config.train import TrainConfig
from pae.data import DataSpec, ImageTensors, normalize
from pae.errors import PaeError
from pae.evolution.pae import discover
from pae.forward import make_forward
from pae.loop import evaluate_runs, prepare_run, train_epoch
from pae.methods import METHODS
from pae.prompts import build_model

PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 80GB HBM3": 989.0,
    "H100 PCIe": 756.0,
    "H100": 756.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 70.0,
}  # dense, from the vendors' data sheets
PAE_ON = PAEOptions(koopman=True, lyapunov=True)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    models = [
        line.split(":", 1)[1].strip()
        for line in (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
        if line.startswith("model name")
    ]
    return f"{models[0] if models else platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given or device.type != "cuda":
        return given
    name = device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_task(cfg: TrainConfig, images: int, test_images: int, classes: int = 10) -> LoadedTask:
    """Random uint8 images and labels on the device, as a prepared task would be, and the run's random backbone."""
    device = torch.device(cfg.device)
    gen = torch.Generator().manual_seed(0)

    def split(n: int) -> ImageTensors:
        pixels = torch.randint(0, 256, (n, 3, cfg.img_size, cfg.img_size), generator=gen, dtype=torch.uint8)
        return ImageTensors(
            pixels, torch.randint(0, classes, (n,), generator=gen), [str(c) for c in range(classes)]
        ).to(device)

    spec = DataSpec("vtab1k", root="synthetic", name="synthetic")
    return LoadedTask(device, spec, split(images), {"test": split(test_images)}, seeded_backbone(cfg).to(device))


def run_epoch(runs: list, forward) -> None:
    """One more epoch of our training loop from the start of an epoch (no evaluation, no history)."""
    for run in runs:
        run.progress.step, run.progress.perm, run.progress.draws = 0, None, None
    train_epoch(runs, forward, threading.Event())


def fast_images_per_s(cfgs: list[TrainConfig], task: LoadedTask) -> tuple[float, float]:
    """Images/s over all runs of one timed epoch of our training loop, after one warm-up epoch (compilation), and
    the seconds the warm-up epoch took beyond the timed one (compiling).

    Dynamo's caches are reset first: every row compiles a new model, and past its recompile limit (8 per code
    object) Dynamo would run later rows eagerly without a word."""
    torch._dynamo.reset()
    runs = [prepare_run(cfg, task) for cfg in cfgs]
    forward = make_forward([r.model for r in runs], cfgs[0].compile)
    seconds = []
    for _ in range(2):
        sync(task.device)
        start = time.perf_counter()
        run_epoch(runs, forward)
        sync(task.device)
        seconds.append(time.perf_counter() - start)
    return len(cfgs) * len(task.train_data) / seconds[1], max(0.0, seconds[0] - seconds[1])


def plain_images_per_s(cfg: TrainConfig, task: LoadedTask, steps: int) -> float:
    """The baseline: fp32, eager, float inputs prepared once, torch.optim.SGD with its defaults."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.method, task.backbone, task.num_classes, cfg.options).to(task.device)
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=cfg.lr, momentum=0.9)
    x = normalize(task.train_data.images[: cfg.batch_size])
    y = task.train_data.labels[: cfg.batch_size]
    model.train()
    for step in range(steps + 1):
        if step == 1:
            sync(task.device)
            start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync(task.device)
    return steps * cfg.batch_size / (time.perf_counter() - start)


def step_flops(cfg: TrainConfig, task: LoadedTask) -> float:
    """FLOPs of one training step (forward + backward) of the method, counted by torch on an eager step."""
    run = prepare_run(cfg, task)
    x = normalize(task.train_data.images[: cfg.batch_size])
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(run.model(x), task.train_data.labels[: cfg.batch_size]).backward()
    return float(counter.get_total_flops())


def throughput_rows(args: argparse.Namespace, base: TrainConfig) -> list[dict]:
    rows = []
    peak = peak_tflops(torch.device(base.device), args.peak_tflops)
    for arch, img_size in zip(args.archs, args.img_sizes):
        cfg = replace(base, arch=arch, img_size=img_size)
        task = synthetic_task(cfg, cfg.batch_size * args.steps, args.batch)
        baseline = plain_images_per_s(replace(cfg, method="vpt_deep"), task, args.steps)
        rows.append(
            {
                "arch": arch,
                "img_size": img_size,
                "method": "vpt_deep",
                "pae": "none",
                "path": "plain fp32",
                "images_per_s": baseline,
            }
        )
        print(f"{arch} plain fp32 vpt_deep: {baseline:.1f} img/s", flush=True)
        for method in args.methods:
            without = None
            for pae in (PAEOptions(), PAE_ON):
                run = replace(cfg, method=method, pae=replace(pae, koopman_dim=args.koopman_dim))
                try:
                    speed, compile_s = fast_images_per_s([run], task)
                except PaeError:  # shallow methods: PAE is their init only, no per-step cost to measure
                    continue
                flops = step_flops(run, task)
                tflops = flops * speed / cfg.batch_size / 1e12
                without = speed if without is None else without
                rows.append(
                    {
                        "arch": arch,
                        "img_size": img_size,
                        "method": method,
                        "pae": run.pae.label,
                        "path": "fast",
                        "images_per_s": speed,
                        "speedup_vs_plain": speed / baseline,
                        "tflops": tflops,
                        "mfu": tflops / peak if peak else None,
                        "step_gflop": flops / 1e9,
                        "compile_s": compile_s if run.compile else None,
                        "pae_overhead": without / speed - 1 if pae.koopman else None,
                    }
                )
                print(f"{arch} fast {method}/{run.pae.label}: {speed:.1f} img/s", flush=True)
    return rows


def group_rows(args: argparse.Namespace, base: TrainConfig) -> list[dict]:
    cfg = replace(base, arch=args.archs[0], img_size=args.img_sizes[0], method="vpt_deep")
    task = synthetic_task(cfg, cfg.batch_size * args.steps, args.batch)
    rows = []
    for size in [1, *args.group]:
        runs = [replace(cfg, lr=cfg.lr * (i + 1), out_dir=f"run{i}") for i in range(size)]
        speed, _ = fast_images_per_s(runs, task)
        rows.append(
            {
                "arch": cfg.arch,
                "img_size": cfg.img_size,
                "runs": size,
                "images_per_s": speed,
                "speedup_vs_one_run": speed / rows[0]["images_per_s"] if rows else 1.0,
            }
        )
        print(f"group of {size}: {speed:.1f} img/s", flush=True)
    return rows


def mpa_rows(args: argparse.Namespace, base: TrainConfig) -> list[dict]:
    """MPA's frequency-shortcut search on one task (``--init-images`` images, every band of the spectrum)."""
    rows = []
    for arch, img_size in zip(args.archs, args.img_sizes):
        cfg = replace(base, arch=arch, img_size=img_size, method="vpt_deep")
        task = synthetic_task(cfg, args.init_images, 1)
        x, y = sample_batch(task, args.init_images, img_size, cfg.seed)
        sync(task.device)
        start = time.perf_counter()
        record = discover(cfg.pae, task.backbone, x, y, 10, cfg.options.num_tokens, cfg.seed)
        sync(task.device)
        rows.append(
            {
                "arch": arch,
                "img_size": img_size,
                "what": f"MPA search: {record['grid'] ** 2} bands x {args.init_images} images",
                "seconds": time.perf_counter() - start,
            }
        )
        print(f"{arch}: {rows[-1]['what']} {rows[-1]['seconds']:.1f} s", flush=True)
    return rows


def task_rows(args: argparse.Namespace, base: TrainConfig) -> list[dict]:
    """One VTAB-1k-sized task end to end (train + a test evaluation)."""
    rows = []
    for arch, img_size in zip(args.archs, args.img_sizes):
        cfg = replace(base, arch=arch, img_size=img_size, method="vpt_deep", epochs=args.task_epochs, warmup_epochs=0)
        task = synthetic_task(cfg, args.task_images, args.test_images)
        start = time.perf_counter()
        torch._dynamo.reset()
        run = prepare_run(cfg, task)
        forward = make_forward([run.model], cfg.compile)
        for _ in range(cfg.epochs):
            run_epoch([run], forward)
        evaluate_runs([run], forward)
        sync(task.device)
        rows.append(
            {
                "arch": arch,
                "img_size": img_size,
                "what": f"VTAB-1k task: {args.task_images} images x "
                f"{cfg.epochs} epochs + {args.test_images} test images",
                "seconds": time.perf_counter() - start,
            }
        )
        print(f"{arch}: {rows[-1]['what']} {rows[-1]['seconds']:.1f} s", flush=True)
    return rows


def markdown(result: dict) -> str:
    fmt = lambda v, spec: "" if v is None else format(v, spec)  # noqa: E731
    lines = [
        f"Device: {result['device']}; torch {result['torch']}; batch {result['batch']}; "
        f"precision {result['precision']}; compile {result['compile']}",
        "",
        "| backbone | px | method | PAE | path | img/s | x plain VPT-deep | TFLOP/s | MFU | PAE overhead | compile s |",
        "|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result.get("throughput", []):
        lines.append(
            f"| {r['arch']} | {r['img_size']} | {r['method']} | {r['pae']} | {r['path']} | "
            f"{r['images_per_s']:.1f} | {fmt(r.get('speedup_vs_plain'), '.2f')} | {fmt(r.get('tflops'), '.2f')} | "
            f"{fmt(r.get('mfu'), '.1%')} | {fmt(r.get('pae_overhead'), '+.1%')} | "
            f"{fmt(r.get('compile_s'), '.1f')} |"
        )
    lines += ["", "| backbone | px | runs in one group | img/s (all runs) | x one run |", "|---|---:|---:|---:|---:|"]
    lines += [
        f"| {r['arch']} | {r['img_size']} | {r['runs']} | {r['images_per_s']:.1f} | {r['speedup_vs_one_run']:.2f} |"
        for r in result.get("group", [])
    ]
    lines += ["", "| backbone | px | what | seconds |", "|---|---:|---|---:|"]
    lines += [
        f"| {r['arch']} | {r['img_size']} | {r['what']} | {r['seconds']:.2f} |"
        for part in ("mpa", "task")
        for r in result.get(part, [])
    ]
    return "\n".join(lines)


PARTS = {"throughput": throughput_rows, "group": group_rows, "mpa": mpa_rows, "task": task_rows}


def patch_size(arch: str) -> int:
    """The patch size timm's ViT names carry (vit_base_patch16_224 -> 16)."""
    found = re.search(r"patch(\d+)", arch)
    return int(found.group(1)) if found else 16


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--archs", nargs="+", default=["vit_base_patch16_224", "vit_small_patch14_dinov2"])
    p.add_argument("--img-sizes", nargs="+", type=int, help="one per arch (default: 224 on a GPU, 2 patches on a CPU)")
    p.add_argument("--batch", type=int, help="default: 128 on a GPU, 16 on a CPU")
    p.add_argument("--steps", type=int, help="timed steps per epoch (default: 20 on a GPU, 2 on a CPU)")
    p.add_argument("--methods", nargs="+", default=[m for m, spec in METHODS.items() if spec.has_prompts])
    p.add_argument("--num-tokens", type=int, default=10)
    p.add_argument("--koopman-dim", type=int, default=256)
    p.add_argument("--mpa-window", type=int, default=0, help="MPA's band size (0: the paper's 16 at 224 px, scaled)")
    p.add_argument("--mpa-stride", type=int, default=0, help="MPA's band stride (0: window // 2)")
    p.add_argument("--group", nargs="+", type=int, help="group sizes to time (default: 2 4 8 on a GPU, 2 on a CPU)")
    p.add_argument("--init-images", type=int, help="MPA's images (default: 128 as the paper on a GPU, 16 on a CPU)")
    p.add_argument("--task-images", type=int, help="VTAB-1k task images (default: 1000 on a GPU, 64 on a CPU)")
    p.add_argument("--task-epochs", type=int, help="default: 100 on a GPU, 2 on a CPU")
    p.add_argument("--test-images", type=int, help="default: 10000 on a GPU, 64 on a CPU")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, help="default: on a GPU only")
    p.add_argument("--peak-tflops", type=float, help="dense bf16 peak of the device, for MFU where it is not known")
    p.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS), help="what to measure")
    p.add_argument("--out", default="benchmarks/results/throughput.json")
    args = p.parse_args()
    gpu = args.device.startswith("cuda")
    defaults = {
        "img_sizes": [224 if gpu else 2 * patch_size(a) for a in args.archs],
        "batch": 128 if gpu else 16,
        "steps": 20 if gpu else 2,
        "group": [2, 4, 8] if gpu else [2],
        "task_images": 1000 if gpu else 64,
        "task_epochs": 100 if gpu else 2,
        "test_images": 10000 if gpu else 64,
        "compile": gpu,
        "init_images": 128 if gpu else 16,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if len(args.img_sizes) != len(args.archs):
        p.error("give one --img-sizes value per --archs entry")
    return args


def main() -> None:
    args = parse_args()
    base = TrainConfig(
        device=args.device,
        batch_size=args.batch,
        eval_batch_size=max(512, args.batch),
        lr=0.01,
        compile=args.compile,
        mlflow=False,
        options={"num_tokens": args.num_tokens},
        pae=PAEOptions(window=args.mpa_window, stride=args.mpa_stride),
    )
    device = torch.device(args.device)
    result = {
        "device": device_name(device),
        "torch": torch.__version__,
        "batch": args.batch,
        "compile": args.compile,
        "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
        "settings": vars(args),
        **{part: PARTS[part](args, base) for part in args.parts},
    }
    table = markdown(result)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**result, "table": table}, indent=2) + "\n")


if __name__ == "__main__":
    main()
