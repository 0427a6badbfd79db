"""A task's lr/wd search end to end: one process per grid point (the pipeline with lrs_per_job 0) against the whole
grid as one group in one process (lrs_per_job >= 1), through the same command line the pipeline runs.

    python benchmarks/search_grid.py                                   # the embedded default's task and recipe
    python benchmarks/search_grid.py --device cuda --img-size 224 --epochs 100 --batch-size 128 \\
        --kind vtab1k --root ../shared/data/vtab-mini/cifar10 --lrs 0.001 0.005 0.01 0.05 0.1 --wds 0 0.0001 0.001

Wall-clock seconds of whole commands (start-up, data and backbone loading, training, evaluation, outputs), so
what a group saves is what a user waits for. Both ways train the same runs; the script also checks that they end
with the same validation top-1 where prompt dropout is 0.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pae.run_folder import METRICS, top1_key


def command(args: argparse.Namespace, lrs: list[str], wds: list[str], out: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pae.cli",
        "train",
        "--kind",
        args.kind,
        *(["--root", args.root] if args.root else []),
        "--protocol",
        "tune",
        "--weights",
        args.weights,
        "--img-size",
        str(args.img_size),
        "--method",
        args.method,
        "--epochs",
        str(args.epochs),
        "--warmup-epochs",
        "1",
        "--batch-size",
        str(args.batch_size),
        "--num-tokens",
        "5",
        "--prompt-dropout",
        "0",
        "--threads",
        str(args.threads),
        "--device",
        args.device,
        "--seed",
        "42",
        "--no-mlflow",
        "--lr",
        *lrs,
        "--weight-decay",
        *wds,
        "--out-dir",
        out,
    ]


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return time.perf_counter() - start


def val_top1(folder: Path) -> dict[str, float]:
    return {p.parent.name: json.loads(p.read_text())[top1_key("val200")] for p in sorted(folder.glob(f"*/{METRICS}"))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kind", default="digits")
    p.add_argument("--root")
    p.add_argument("--weights", default="data/backbones/dinov2_s14.safetensors")
    p.add_argument("--method", default="vpt_deep")
    p.add_argument("--img-size", type=int, default=28)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lrs", nargs="+", default=["0.005", "0.01"])
    p.add_argument("--wds", nargs="+", default=["0", "0.001"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="benchmarks/results/search_grid.json")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        serial, grouped = Path(tmp, "serial"), Path(tmp, "group")
        points = list(itertools.product(args.lrs, args.wds))
        t_serial = sum(timed(command(args, [lr], [wd], f"{serial}/lr{lr}_wd{wd}")) for lr, wd in points)
        t_group = timed(command(args, args.lrs, args.wds, f"{grouped}/lr{{lr}}_wd{{wd}}"))
        same = val_top1(serial) == val_top1(grouped)
    result = {
        "settings": vars(args),
        "runs": len(points),
        "serial_s": t_serial,
        "group_s": t_group,
        "speedup": t_serial / t_group,
        "same_val200_top1": same,
    }
    print(
        "| runs | one process per run (s) | one group (s) | speed-up | same val200 top-1 |\n"
        "|---:|---:|---:|---:|---|\n"
        f"| {len(points)} | {t_serial:.1f} | {t_group:.1f} | {t_serial / t_group:.2f} | {same} |"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
