"""Steps 3 and 4 of the GPU check (``benchmarks/device_check.sh``): a first full-resolution grid sized to the time
left, and its tables.

    python benchmarks/device_grid.py plan   --out OUT --bundle device-bundle --budget-s 540 --elapsed-s 200
    python benchmarks/device_grid.py run    --out OUT
    python benchmarks/device_grid.py tables --out OUT
    (each with --dry-run: the CPU sizes CI runs)

The grid is VPT-deep on the real DINOv2 ViT-S/14 at 224 px on vtab-mini's tasks, with PAE's variants none / init /
koopman+lyapunov / all and the batch-mask row, each (task, variant) one vmapped group of 3 seeds x the lr points,
under the tune protocol (train800 -> val200, test evaluated too) with evaluation every tenth of the epochs.

Why it is planned, not fixed: a GPU is lent for minutes, and how many runs fit depends on numbers only that GPU
gives. ``plan`` reads step 1's images/s and compile seconds and step 2's MPA seconds, predicts each group's time
(``group_seconds``) and picks the largest grid that fits the budget left (``choose_plan``: it gives up lr points
first, then tasks, then epochs), and writes that plan to OUT/plan.json. ``run`` trains it in one process through
the real command line (``pae.cli.main``): torch, the data and Inductor's caches are loaded once, and a group's
compiled graphs are reused by every later group of the same shapes. It stops before a task that would overrun the
deadline. Both are resumable: a finished group is skipped, a cut one resumes from its saved states. ``tables``
picks each (task, variant)'s lr by mean val200 top-1 over seeds (VPT's rule) and writes the accuracy, convergence
and ablation tables (95% CIs over seeds) of those runs.

Nothing here imports MLflow, Snakemake, DVC or jsonschema: the GPU machine has none of them (the CPU dry run
checks that).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import time
import traceback
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from pae.errors import PaeError  # noqa: E402
from pae.files import read_json, write_json  # noqa: E402
from pae.run_folder import METRICS, TEST_TOP1, top1_key  # noqa: E402

ARCH = "vit_small_patch14_dinov2"
VAL_TOP1 = top1_key("val200")  # the score the lr is picked by
SEEDS = (1, 2, 3)
VARIANTS = {  # run folder -> `pae.cli train` flags (the ablation's rows; labels as in the tables)
    "none": [],
    "none_batch_mask": ["--prompt-dropout-mask", "batch"],
    "init": ["--pae-init"],
    "koopman_lyapunov": ["--pae-koopman", "--pae-lyapunov"],
    "all": ["--pae"],
}
INIT_VARIANTS = ("init", "all")  # these run MPA's search once per run before training
EVAL_SPEEDUP = 2.5  # an evaluation image costs ~1/3 of a training image (forward only); 2.5 leaves a margin
SAFETY = 1.25  # predicted seconds are multiplied by this: the plan must end inside the budget, not at it
TABLES_S = 30.0  # what step 4 needs (three tables, one process)
TABLES = ("accuracy", "convergence", "ablation")
OVER_BUDGET = {
    False: " (DOES NOT FIT: the grid stops at the deadline)",
    True: " (does not fit: the dry run trains its first task anyway)",
}
INCOMPLETE = 3  # run's exit status when groups are left (the deadline, a failed group): no done-marker, a rerun goes on


@dataclass(frozen=True)
class Sizes:
    """What one grid run looks like on a device kind: the GPU check, or the CPU dry run that CI runs."""

    device: str
    img_size: int
    max_epochs: int
    lrs: tuple[float, ...]  # in the order they are given up: the first is kept longest
    tasks: tuple[str, ...]  # likewise
    batch_size: int
    eval_batch_size: int
    compile: bool
    max_images: int | None  # per split; None: the whole task
    mpa: tuple[int, int, int]  # window, stride, images
    koopman_dim: int
    num_tokens: int
    group_start_s: float  # a group's fixed cost beyond compiling: building runs, loading the backbone, first data
    first_task_always: bool  # train the first task even past the deadline (the dry run: CI must reach the tables)

    def epoch_options(self) -> list[int]:
        """The epoch counts a plan may use, most first: all, a half, a fifth, a tenth."""
        return sorted({max(1, self.max_epochs // d) for d in (1, 2, 5, 10)}, reverse=True)


GPU = Sizes(
    "cuda",
    224,
    100,
    (0.005, 0.05, 0.001),
    ("cifar10", "gtsrb", "clothing10"),
    128,
    500,
    True,
    None,
    (0, 0, 128),
    256,
    10,
    15.0,
    False,
)
DRY = Sizes(
    "cpu", 28, 2, (0.005, 0.05), ("cifar10", "gtsrb", "clothing10"), 4, 8, False, 4, (8, 8, 4), 16, 4, 3.0, True
)


@dataclass(frozen=True)
class Measured:
    """What steps 1 and 2 measured that the grid's time depends on."""

    images_per_s: float  # training, one run, ViT-S/14 VPT-deep with PAE's regularizer (the slower row)
    compile_s: float  # the first compile of that model
    mpa_s: float  # one MPA search at the grid's size


def eval_every(epochs: int) -> int:
    """Evaluate ten times over training (and at epoch 0 and the end): enough points for a convergence curve."""
    return max(1, epochs // 10)


def group_seconds(
    sizes: Sizes, measured: Measured, epochs: int, lrs: int, split_images: dict[str, int], variant: str
) -> float:
    """Predicted seconds of one (task, variant) group: 3 seeds x ``lrs`` runs trained for ``epochs``, evaluated on
    val200 and test every ``eval_every`` epochs, MPA once per run for the init variants, plus the group's start and
    one compile. Assumes a group is no faster per image than one run (a GPU gains from groups: a margin)."""
    runs = len(SEEDS) * lrs
    train = epochs * split_images["train800"] * runs / measured.images_per_s
    evaluations = epochs // eval_every(epochs) + 1 + (epochs % eval_every(epochs) != 0)
    evaluate = (
        evaluations * (split_images["val200"] + split_images["test"]) * runs / (EVAL_SPEEDUP * measured.images_per_s)
    )
    init = runs * measured.mpa_s if variant in INIT_VARIANTS else 0.0
    return SAFETY * (train + evaluate + init + sizes.group_start_s + measured.compile_s)


def choose_plan(sizes: Sizes, measured: Measured, images: dict[str, dict[str, int]], budget_s: float) -> dict:
    """The largest grid that fits ``budget_s``: most epochs first, then most tasks, then most lr points. Where even
    the smallest does not fit, the smallest, marked ``fits: false`` (the run then stops at the deadline)."""
    options = [
        (e, t, n)
        for e in sizes.epoch_options()
        for t in range(len(sizes.tasks), 0, -1)
        for n in range(len(sizes.lrs), 0, -1)
    ]
    for epochs, n_tasks, n_lrs in options:
        tasks = sizes.tasks[:n_tasks]
        seconds = sum(group_seconds(sizes, measured, epochs, n_lrs, images[t], v) for t in tasks for v in VARIANTS)
        if seconds <= budget_s or (epochs, n_tasks, n_lrs) == options[-1]:
            return {
                "epochs": epochs,
                "eval_every": eval_every(epochs),
                "tasks": list(tasks),
                "lrs": sorted(sizes.lrs[:n_lrs]),
                "seeds": list(SEEDS),
                "variants": list(VARIANTS),
                "predicted_s": round(seconds, 1),
                "budget_s": round(budget_s, 1),
                "fits": seconds <= budget_s,
            }
    raise AssertionError("unreachable: the last option is always returned")


# ---------------------------------------------------------------------------------------------- the bundle


def check_bundle(bundle: Path) -> dict:
    """The bundle's manifest, after checking that every file it lists is there with its size (a cut transfer)."""
    fix = (
        "build it with `make device-bundle` (on a machine with the project's venv), and carry it to the GPU "
        "machine: run(..., carry=['device-bundle'])."
    )
    manifest_path = bundle / "manifest.json"
    if not manifest_path.is_file():
        raise PaeError(f"the device bundle '{bundle}' is missing (no manifest.json there).", fix)
    manifest = read_json(manifest_path, fix)
    for name, f in manifest["files"].items():
        path = bundle / name
        if not path.is_file() or path.stat().st_size != f["bytes"]:
            raise PaeError(f"the device bundle's file '{path}' is missing or not {f['bytes']} bytes long.", fix)
    return manifest


def unpack_tasks(bundle: Path, out: Path, tasks: list[str], max_images: int | None) -> dict[str, Path]:
    """Each task's folder under OUT/data, unpacked once from the bundle; with ``max_images``, its split lists cut
    to their first lines (the CPU dry run)."""
    folders = {}
    for task in tasks:
        folder = out / "data" / task
        if not (folder / "test.txt").is_file():
            with zipfile.ZipFile(bundle / "vtab-mini" / f"{task}.zip") as zf:
                zf.extractall(folder.with_name(task + ".tmp"))
            folder.with_name(task + ".tmp").replace(folder)
            if max_images:
                for split in ("train800", "val200", "train800val200", "test"):
                    lines = (folder / f"{split}.txt").read_text().splitlines()[:max_images]
                    (folder / f"{split}.txt").write_text("\n".join(lines) + "\n")
        folders[task] = folder
    return folders


def split_sizes(folder: Path) -> dict[str, int]:
    return {
        s: sum(1 for line in (folder / f"{s}.txt").read_text().splitlines() if line.strip())
        for s in ("train800", "val200", "test")
    }


# ---------------------------------------------------------------------------------------------- plan


def measured_from(out: Path) -> Measured:
    """Step 1's and step 2's numbers for the grid's model (their files under OUT)."""
    fix = "run steps 1 and 2 first (bash benchmarks/device_check.sh OUT)."
    rows = [
        r for r in read_json(out / "throughput.json", fix)["throughput"] if r["arch"] == ARCH and r["path"] == "fast"
    ]
    mpa = [r for r in read_json(out / "mpa.json", fix)["mpa"] if r["arch"] == ARCH]
    if not rows or not mpa:
        raise PaeError(f"steps 1 and 2 measured no {ARCH} rows.", fix)
    return Measured(
        min(r["images_per_s"] for r in rows), max(r.get("compile_s") or 0.0 for r in rows), mpa[0]["seconds"]
    )


def plan(args: argparse.Namespace) -> int:
    """OUT/plan.json, once: a rerun keeps the plan it started (its runs' folders depend on it)."""
    out, sizes = args.out, DRY if args.dry_run else GPU
    if (out / "plan.json").is_file():
        print(f"plan: kept from the first call ({out / 'plan.json'})")
        return 0
    manifest = check_bundle(args.bundle)
    folders = unpack_tasks(args.bundle, out, list(sizes.tasks), sizes.max_images)
    measured = measured_from(out)
    budget = args.budget_s - args.elapsed_s - TABLES_S
    chosen = choose_plan(sizes, measured, {t: split_sizes(f) for t, f in folders.items()}, budget)
    record = {
        **chosen,
        "sizes": asdict(sizes),
        "measured": asdict(measured),
        "bundle": str(args.bundle),
        "weights": str(args.bundle / manifest["backbone"]),
        "elapsed_before_s": args.elapsed_s,
        "total_budget_s": args.budget_s,
        "data": {t: str(f) for t, f in folders.items()},
    }
    write_json(record, out / "plan.json")
    print(
        f"plan: {len(chosen['tasks'])} tasks x {len(VARIANTS)} variants x {len(SEEDS)} seeds x lrs {chosen['lrs']}, "
        f"{chosen['epochs']} epochs (eval every {chosen['eval_every']}): predicted {chosen['predicted_s']:.0f} s of "
        f"{budget:.0f} s left{'' if chosen['fits'] else OVER_BUDGET[sizes.first_task_always]}"
    )
    return 0


# ---------------------------------------------------------------------------------------------- run


def planned_sizes(record: dict) -> Sizes:
    """The sizes a plan was made for (plan.json holds them as lists)."""
    values = record["sizes"]
    return Sizes(**{**values, **{k: tuple(values[k]) for k in ("lrs", "tasks", "mpa")}})


def train_argv(record: dict, task: str, variant: str, out: Path) -> list[str]:
    """The `pae.cli train` command of one (task, variant) group, as a user would type it."""
    sizes = planned_sizes(record)
    epochs = record["epochs"]
    window, stride, images = sizes.mpa
    return [
        "train",
        "--kind",
        "vtab1k",
        "--root",
        record["data"][task],
        "--name",
        task,
        "--task-group",
        "natural",
        "--protocol",
        "tune",
        "--tune-test",
        "--arch",
        ARCH,
        "--weights",
        record["weights"],
        "--img-size",
        str(sizes.img_size),
        "--method",
        "vpt_deep",
        "--num-tokens",
        str(sizes.num_tokens),
        "--epochs",
        str(epochs),
        "--warmup-epochs",
        str(epochs // 10),
        "--eval-every",
        str(record["eval_every"]),
        "--seed",
        *map(str, record["seeds"]),
        "--lr",
        *map(str, record["lrs"]),
        "--weight-decay",
        "0.001",
        "--batch-size",
        str(sizes.batch_size),
        "--eval-batch-size",
        str(sizes.eval_batch_size),
        "--device",
        sizes.device,
        "--compile" if sizes.compile else "--no-compile",
        "--no-mlflow",
        "--cache-dir",
        str(out / "prepared"),
        "--experiment",
        "device-check",
        "--out-dir",
        str(out / "runs" / task / variant / "lr{lr}_seed{seed}"),
        "--pae-window",
        str(window),
        "--pae-stride",
        str(stride),
        "--pae-init-images",
        str(images),
        "--pae-koopman-dim",
        str(sizes.koopman_dim),
        *VARIANTS[variant],
    ]


def run_folders(record: dict, task: str, variant: str, out: Path) -> list[Path]:
    return [out / "runs" / task / variant / f"lr{lr}_seed{seed}" for lr in record["lrs"] for seed in record["seeds"]]


def train_group(argv: list[str], compile: bool, lines: Path) -> int:
    """One group through the real command line, in this process; its one JSON line per run goes to ``lines``.
    Dynamo starts afresh (its per-function recompile limit would otherwise turn later groups eager without a word);
    Inductor's compiled graphs stay cached."""
    import torch

    from pae.cli import main

    if compile:
        torch._dynamo.reset()
    lines.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(lines, "w") as f, contextlib.redirect_stdout(f):
            return main(argv)
    except Exception:  # one failed group (out of memory, a bug) must not cost the other groups
        traceback.print_exc()
        return 1
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def reality(log: dict, names: list[str]) -> float:
    """Actual over predicted seconds of the groups finished so far (1 before any): the deadline check of the next
    task trusts what this device did, not only what steps 1 and 2 implied (compile reuse, group gains)."""
    done = [log["groups"][n] for n in names if n in log["groups"] and log["groups"][n]["rc"] == 0]
    predicted = sum(g["predicted_s"] for g in done)
    return sum(g["seconds"] for g in done) / predicted if predicted else 1.0


def summary(folders: list[Path]) -> str:
    """The group's mean final val200 and test top-1 over its finished runs, for the log."""
    runs = [json.loads((f / METRICS).read_text()) for f in folders if (f / METRICS).is_file()]
    scores = {k: [r[k] for r in runs if isinstance(r.get(k), (int, float))] for k in (VAL_TOP1, TEST_TOP1)}
    return ", ".join(f"{k.split('_')[1]} {statistics.mean(v):.1f}" for k, v in scores.items() if v) or "no scores"


def run(args: argparse.Namespace) -> int:
    """Train the plan's groups task by task; stop before a task whose predicted time would pass the deadline.
    Returns 0 when every group finished, else INCOMPLETE (a rerun continues)."""
    out = args.out
    record = read_json(out / "plan.json", "run the plan step first.")
    sizes = planned_sizes(record)
    check_bundle(Path(record["bundle"]))
    measured = Measured(**record["measured"])
    deadline = time.monotonic() + args.budget_s - args.elapsed_s - TABLES_S
    log_path = out / "grid.json"
    log = read_json(log_path, "delete it to start the grid log afresh.") if log_path.is_file() else {"groups": {}}
    complete = True
    for i, task in enumerate(record["tasks"]):
        images = split_sizes(Path(record["data"][task]))
        todo = [
            v for v in record["variants"] if not all((f / METRICS).is_file() for f in run_folders(record, task, v, out))
        ]
        scale = reality(log, [f"{t}/{v}" for t in record["tasks"] for v in record["variants"]])
        predicted = {v: group_seconds(sizes, measured, record["epochs"], len(record["lrs"]), images, v) for v in todo}
        forced = i == 0 and sizes.first_task_always
        if todo and time.monotonic() + scale * sum(predicted.values()) > deadline and not forced:
            print(
                f"grid: stopping before {task}: its {len(todo)} groups (~{scale * sum(predicted.values()):.0f} s) "
                "would pass the deadline; a rerun continues from here",
                flush=True,
            )
            return INCOMPLETE
        for variant in record["variants"]:
            name = f"{task}/{variant}"
            if variant not in todo:
                print(f"grid: {name} done already", flush=True)
                continue
            runs = len(record["seeds"]) * len(record["lrs"])
            print(f"grid: {name} ({runs} runs, predicted {scale * predicted[variant]:.0f} s)", flush=True)
            start = time.monotonic()
            rc = train_group(
                train_argv(record, task, variant, out), sizes.compile, out / "runs" / task / f"{variant}.jsonl"
            )
            seconds = time.monotonic() - start
            complete = complete and rc == 0
            log["groups"][name] = {"rc": rc, "seconds": round(seconds, 2), "predicted_s": round(predicted[variant], 2)}
            write_json(log, log_path)
            outcome = "finished" if rc == 0 else f"FAILED (exit {rc}; a rerun resumes it)"
            print(
                f"grid: {name} {outcome} in {seconds:.1f} s: {summary(run_folders(record, task, variant, out))}",
                flush=True,
            )
    return 0 if complete else INCOMPLETE


# ---------------------------------------------------------------------------------------------- tables


def selected_runs(record: dict, out: Path) -> tuple[list[Path], dict]:
    """Per (task, variant): the lr with the best mean final val200 top-1 over seeds (ties: the smaller lr), and
    the metrics.json of its seeds. Groups that did not finish, and lrs where a seed diverged, are left out."""
    chosen, files = {}, []
    for task in record["tasks"]:
        for variant in record["variants"]:
            means = {}
            for lr in record["lrs"]:
                paths = [out / "runs" / task / variant / f"lr{lr}_seed{s}" / METRICS for s in record["seeds"]]
                scores = [json.loads(p.read_text()).get(VAL_TOP1) if p.is_file() else None for p in paths]
                if all(isinstance(s, (int, float)) and math.isfinite(s) for s in scores):
                    means[lr] = (statistics.mean(scores), paths)
            if means:
                lr = min(means, key=lambda k: (-means[k][0], k))
                chosen[f"{task}/{variant}"] = {"lr": lr, "mean_val200_top1": means[lr][0]}
                files += means[lr][1]
    return files, chosen


def tables(args: argparse.Namespace) -> int:
    from pae.reports.summary import write_table

    out = args.out
    record = read_json(out / "plan.json", "run the plan step first.")
    files, chosen = selected_runs(record, out)
    if not files:
        raise PaeError("no (task, variant) group of the grid finished.", "rerun the grid step (it resumes).")
    write_json(chosen, out / "tables" / "selected.json")
    for kind in TABLES:
        base = out / "tables" / kind
        write_table(kind, files, f"{base}.md", f"{base}.csv", f"{base}.json")
        print(f"== {kind} table ({base}.md)\n{Path(f'{base}.md').read_text()}", flush=True)
    return 0


# ---------------------------------------------------------------------------------------------- main

STEPS = {"plan": plan, "run": run, "tables": tables}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("step", choices=list(STEPS))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--bundle", type=Path, default=ROOT / "device-bundle")
    p.add_argument("--budget-s", type=float, default=540.0, help="for steps 1-4 together")
    p.add_argument("--elapsed-s", type=float, default=0.0, help="spent by this call before this step")
    p.add_argument("--dry-run", action="store_true", help="plan for the CPU sizes (CI); later steps follow the plan")
    args = p.parse_args()
    try:
        return STEPS[args.step](args)
    except PaeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
