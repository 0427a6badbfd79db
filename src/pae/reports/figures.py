"""Figures from run folders and shortcut-discovery files: learning curves, gradient oscillation, frequency-shortcut
maps and Koopman spectra.

Each figure is written as ``<out_base>.png`` and ``<out_base>.pdf`` and its function returns the numbers it drew,
so tests check data, not pixels. A figure with nothing to show is still written, with one panel saying why: the
pipeline declares every figure as an output. Figures are drawn on ``matplotlib.figure.Figure`` (Agg for PNG), never
through pyplot, so no global backend or open-figure state is touched.
"""

from __future__ import annotations

import csv
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure, SubFigure
from matplotlib.ticker import MaxNLocator
from safetensors import SafetensorError, safe_open

from ..diagnostics import grad_norm_matrix
from ..errors import PaeError
from ..files import atomic_write, read_json, write_csv
from ..run_folder import CHECKPOINT, GRAD_NORM_COLUMN, GRAD_NORMS, HISTORY, KOOPMAN_KEY, METRICS
from .tables import ABLATION_ORDER, group_runs, method_order

RERUN_TRAINING = "rerun the training job that writes this run folder."
RERUN_DISCOVERY = "rerun the shortcut-discovery job that writes it."
CURVE_FIELDS = ("task", "method", "pae", "epoch", "top1_mean", "top1_std", "seeds")
MAX_GRADIENT_PANELS = 8
MAX_CLASS_PANELS = 10
CLASS_COLUMNS = 4
CLASS_PANEL = (1.6, 1.7)  # inches per class map; with the band map's wider column a task block is ~10 in wide
BAND_MAP_WIDTH = 1.5  # the band map's column, in class-map widths: room for its axis labels and colour bar
CLASS_TITLE_WIDTH = 18  # characters per line of a class name, so long names wrap rather than overlap
CURVE_COLUMNS = 4
CURVE_PANEL = (2.6, 2.2)  # inches: four panels make a 10.4 in row, which reads when scaled to a page's width
BASE_LABEL = "base (no PAE)"
PAE_DASHES = ("--", "-.", ":", (0, (6, 2, 1, 2, 1, 2)))  # one per PAE variant; the base method ('none') is solid


# reading inputs


def _require(path: Path, fix: str) -> Path:
    if not path.is_file():
        raise PaeError(f"'{path}' is missing.", fix)
    return path


def _read_json(path: Path, fix: str) -> dict:
    return read_json(_require(path, fix), fix)


def _read_csv(path: Path, fix: str) -> list[dict[str, str]]:
    try:
        with open(_require(path, fix), newline="") as f:
            return list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise PaeError(f"'{path}' cannot be read ({exc}).", fix) from exc


def _number(text: str | None) -> float:
    """A CSV cell as a float; empty cells (a column a row did not have) count as NaN, like 'nan'."""
    return float(text) if text not in ("", None) else float("nan")


def load_run(run_dir: str | Path) -> dict:
    """A run's metrics.json with its folder and per-epoch history (floats) under 'run_dir' and 'history'."""
    run_dir = Path(run_dir)
    metrics = _read_json(run_dir / METRICS, RERUN_TRAINING)
    rows = _read_csv(run_dir / HISTORY, RERUN_TRAINING)
    try:
        history = [{k: _number(v) for k, v in row.items()} for row in rows]
    except ValueError as exc:
        raise PaeError(f"'{run_dir / HISTORY}' holds a value that is not a number ({exc}).", RERUN_TRAINING) from exc
    return {**metrics, "run_dir": run_dir, "history": history}


def _pae_rank(pae: str) -> tuple[int, str]:
    """PAE variants in the ablation's order (none first), unknown labels after them by name."""
    return (ABLATION_ORDER.index(pae) if pae in ABLATION_ORDER else len(ABLATION_ORDER), pae)


def _variant_order(key: tuple) -> tuple:
    """(.., method, pae) keys in reading order: methods by name, then PAE variants by ``_pae_rank``."""
    *head, method, pae = key
    return (*head, method, *_pae_rank(pae))


def _first_seeds(runs: list[dict], *keys: str) -> dict[tuple, dict]:
    """The lowest-seed run of each group of ``keys``: figures that show one run per variant show the same one."""
    return {key: min(rs, key=lambda r: r.get("seed", 0)) for key, rs in group_runs(runs, *keys).items()}


def _label(method: str, pae: str) -> str:
    return method if pae == "none" else f"{method} + PAE {pae}"


# drawing helpers


def _panels(
    count: int, columns: int = 4, size: tuple[float, float] = (4.0, 3.2), sharey: bool = False
) -> tuple[Figure, list[Axes]]:
    """A figure with ``count`` panels on a grid of at most ``columns`` columns; cells beyond ``count`` are hidden.
    ``sharey`` puts every panel on one y scale, labelled on the first column only."""
    cols = min(columns, count)
    rows = -(-count // cols)
    fig = Figure(figsize=(size[0] * cols, size[1] * rows), layout="constrained")
    axes = list(fig.subplots(rows, cols, squeeze=False, sharey=sharey).ravel())
    for ax in axes[count:]:
        ax.set_visible(False)
    return fig, axes[:count]


def _save(fig: Figure, out_base: str | Path) -> None:
    """PNG and PDF side by side; the PDF without its creation date, so reruns give the same bytes for DVC."""
    atomic_write(f"{out_base}.png", lambda tmp: fig.savefig(tmp, dpi=150, format="png"))
    atomic_write(f"{out_base}.pdf", lambda tmp: fig.savefig(tmp, format="pdf", metadata={"CreationDate": None}))


def _save_empty(out_base: str | Path, reason: str) -> None:
    """The declared figure, holding only the reason it has nothing to show."""
    fig, (ax,) = _panels(1, size=(6.0, 2.5))
    ax.text(0.5, 0.5, textwrap.fill(reason, 60), ha="center", va="center", fontsize=11, transform=ax.transAxes)
    ax.set_axis_off()
    _save(fig, out_base)


# learning curves


def curve_rows(runs: list[dict], split: str = "test") -> list[dict]:
    """Per (task, method, pae) and epoch: mean and sample std of ``{split}_top1`` over the seeds that have a value."""
    column = f"{split}_top1"
    rows = []
    groups = group_runs(runs, "task", "method", "pae")
    for task, method, pae in sorted(groups, key=_variant_order):
        by_epoch: dict[int, list[float]] = {}
        for run in groups[task, method, pae]:
            if run["history"] and column not in run["history"][0]:
                raise PaeError(
                    f"'{run['run_dir'] / HISTORY}' has no '{column}' column.",
                    "pick a split the runs evaluated: 'test' for the final protocol, 'val200' for tune.",
                )
            for row in run["history"]:
                if np.isfinite(row[column]):
                    by_epoch.setdefault(int(row["epoch"]), []).append(row[column])
        for epoch, values in sorted(by_epoch.items()):
            rows.append(
                {
                    "task": task,
                    "method": method,
                    "pae": pae,
                    "epoch": epoch,
                    "top1_mean": float(np.mean(values)),
                    "top1_std": float(np.std(values, ddof=1)) if len(values) > 1 else float("nan"),
                    "seeds": len(values),
                }
            )
    return rows


def _method_rank(method: str) -> tuple[int, str]:
    """Methods in the registry's display order (the linear probe first), unregistered ones after them by name."""
    order = method_order()
    return (order.index(method) if method in order else len(order), method)


def _line_styles(rows: list[dict]) -> tuple[dict[str, object], dict[str, str]]:
    """One colour per method and one dash per PAE variant (solid for none), fixed across the figure's panels: a
    method's variants share its colour, so a panel compares them by dash alone."""
    methods = sorted({r["method"] for r in rows}, key=_method_rank)
    variants = sorted({r["pae"] for r in rows} - {"none"}, key=_pae_rank)
    palette = colormaps["tab10" if len(methods) <= 10 else "tab20"]
    colours = {m: palette(i % palette.N) for i, m in enumerate(methods)}
    dashes = {"none": "-", **{p: PAE_DASHES[i % len(PAE_DASHES)] for i, p in enumerate(variants)}}
    return colours, dashes


def _curve_panels(rows: list[dict]) -> dict[tuple[str, str], dict[str, list[dict]]]:
    """{(task, method): {pae: rows by epoch}}, panels tasks first then methods in the registry's order: one
    method's variants per panel, so thirteen curves never share one axis."""
    panels: dict[tuple[str, str], dict[str, list[dict]]] = {}
    for r in sorted(rows, key=lambda r: (r["task"], *_method_rank(r["method"]), *_pae_rank(r["pae"]), r["epoch"])):
        panels.setdefault((r["task"], r["method"]), {}).setdefault(r["pae"], []).append(r)
    return panels


def _draw_curves(ax: Axes, lines: dict[str, list[dict]], colour: object, dashes: dict[str, str]) -> None:
    """A method's variants: the seed mean, with a band of one sample std where there are several seeds."""
    for pae, line in lines.items():
        epochs = np.array([r["epoch"] for r in line])
        mean, std = np.array([r["top1_mean"] for r in line]), np.array([r["top1_std"] for r in line])
        label = BASE_LABEL if pae == "none" else f"PAE {pae}"
        ax.plot(epochs, mean, color=colour, linestyle=dashes[pae], label=label)
        ax.fill_between(epochs, mean - std, mean + std, color=colour, alpha=0.12, linewidth=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="x-small")  # where it covers the fewest points: flat curves sit low, rising high


def learning_curve_figure(rows: list[dict], split: str = "test") -> Figure:
    """``curve_rows`` drawn one panel per (task, method) on a shared y axis, at most four panels a row, so the
    figure reads at page width."""
    colours, dashes = _line_styles(rows)
    panels = _curve_panels(rows)
    tasks = {task for task, _ in panels}
    fig, axes = _panels(len(panels), columns=CURVE_COLUMNS, size=CURVE_PANEL, sharey=True)
    for ((task, method), lines), ax in zip(panels.items(), axes):
        _draw_curves(ax, lines, colours[method], dashes)
        ax.set_title(method if len(tasks) == 1 else f"{task} / {method}", fontsize="medium")
    if len(tasks) == 1:
        fig.suptitle(next(iter(tasks)))
    fig.supxlabel("epoch (0 = untrained start)", fontsize="medium")
    fig.supylabel(f"{split} top-1 (%)", fontsize="medium")
    return fig


def learning_curves(run_dirs: Sequence[str | Path], out_base: str | Path, split: str = "test") -> list[dict]:
    """Top-1 against epoch (see ``learning_curve_figure``). Also writes ``<out_base>.csv``; returns its rows."""
    rows = curve_rows([load_run(d) for d in run_dirs], split)
    write_csv(rows, f"{out_base}.csv", header=list(CURVE_FIELDS))  # long format for `dvc plots`; a header always
    if not rows:
        _save_empty(out_base, "no training run was given, so there is no learning curve to draw.")
        return rows
    _save(learning_curve_figure(rows, split), out_base)
    return rows


# gradient oscillation


def _has_prompt_layers(run: dict) -> bool:
    """Runs without prompts (linear probe) have no grad_norm columns in history.csv, and no grad_norms.csv."""
    return bool(run["history"]) and any(GRAD_NORM_COLUMN.fullmatch(k) for k in run["history"][0])


def step_gradient_norms(run_dir: str | Path) -> np.ndarray:
    """Per-step prompt-gradient norms as g[layer, step] from a run's grad_norms.csv."""
    path = Path(run_dir) / GRAD_NORMS
    try:
        return grad_norm_matrix(_read_csv(path, RERUN_TRAINING)).T
    except ValueError as exc:
        raise PaeError(f"'{path}' holds a value that is not a number ({exc}).", RERUN_TRAINING) from exc


def _positive_range(matrices: list[np.ndarray]) -> tuple[float, float]:
    """The log colour scale's limits: the smallest and largest positive norms (zeros and NaN have no log)."""
    positive = np.concatenate([m[m > 0] for m in matrices])
    return (float(positive.min()), float(positive.max())) if positive.size else (1e-8, 1.0)


def gradient_oscillation(run_dirs: Sequence[str | Path], out_base: str | Path) -> dict[tuple[str, str], np.ndarray]:
    """The paper's motivation figure: per-step prompt-gradient norms, layers x steps on one shared log colour scale,
    one panel per (method, PAE variant) of the first task (lowest seed). Methods with the most prompt layers come
    first and at most 8 panels are drawn. Returns {(method, pae): g[layer, step]} for the panels drawn."""
    runs = [r for r in map(load_run, run_dirs) if _has_prompt_layers(r)]
    if not runs:
        _save_empty(
            out_base,
            "no run in this experiment has prompt layers (only linear probes or no runs), "
            "so there are no prompt gradients to show.",
        )
        return {}
    task = min(r["task"] for r in runs)
    chosen = _first_seeds([r for r in runs if r["task"] == task], "method", "pae")
    matrices = {key: step_gradient_norms(run["run_dir"]) for key, run in chosen.items()}
    order = sorted(matrices, key=lambda k: (-len(matrices[k]), *_variant_order(k)))[:MAX_GRADIENT_PANELS]
    norm = LogNorm(*_positive_range([matrices[k] for k in order]))
    fig, axes = _panels(len(order), columns=2, size=(6.0, 3.0))
    for (method, pae), ax in zip(order, axes):
        g = matrices[method, pae]
        image = ax.imshow(
            np.ma.masked_where(~(g > 0), g),
            aspect="auto",
            origin="lower",
            interpolation="nearest",
            norm=norm,
            cmap="viridis",
            extent=(0.5, g.shape[1] + 0.5, -0.5, len(g) - 0.5),
        )
        ax.set(
            title=f"{task} / {_label(method, pae)} (seed {chosen[method, pae].get('seed')})",
            xlabel="optimizer step",
            ylabel="prompt layer",
        )
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.colorbar(image, ax=axes, label="prompt-gradient norm (log scale)")
    _save(fig, out_base)
    return {k: matrices[k] for k in order}


# shortcut maps


def load_shortcuts(path: str | Path) -> dict:
    """A shortcuts.json with its maps as n x n arrays (band s at row s // n, column s % n of the centred spectrum):
    'band_map', 'selected_cells' ((row, col) per selected band) and 'class_map_arrays' (NaN for absent classes)."""
    path = Path(path)
    found = _read_json(path, RERUN_DISCOVERY)
    missing = [k for k in ("task", "grid", "band_losses", "selected") if k not in found]
    if missing:
        raise PaeError(f"'{path}' lacks the key(s) {', '.join(missing)}.", RERUN_DISCOVERY)
    n = int(found["grid"])
    maps = [found["band_losses"], *(m for m in found.get("class_maps") or [] if m is not None)]
    if any(len(m) != n * n for m in maps):
        raise PaeError(f"'{path}' has a map whose length is not grid x grid = {n * n}.", RERUN_DISCOVERY)
    if any(not 0 <= int(s) < n * n for s in found["selected"]):
        raise PaeError(f"'{path}' selects a band outside its {n} x {n} grid.", RERUN_DISCOVERY)
    blank = np.full((n, n), np.nan)
    return {
        **found,
        "band_map": np.asarray(found["band_losses"], dtype=float).reshape(n, n),
        "selected_cells": np.array([divmod(int(s), n) for s in found["selected"]]).reshape(-1, 2),
        "class_map_arrays": np.array(
            [blank if m is None else np.asarray(m, dtype=float).reshape(n, n) for m in found.get("class_maps") or []]
        ).reshape(-1, n, n),
    }


def _draw_band_map(ax: Axes, found: dict) -> None:
    """Scorer loss per band (lower = stronger shortcut), the selected bands circled; the title says so, as a legend
    would hide bands."""
    image = ax.imshow(found["band_map"], cmap="viridis_r", interpolation="nearest")
    rows, cols = found["selected_cells"].T
    ax.scatter(cols, rows, s=40, facecolors="none", edgecolors="red", linewidths=1.2)
    ax.set_title("band loss (circled: selected)", fontsize="medium")
    ax.set_xlabel("horizontal band (centre = DC)", fontsize="small")
    ax.set_ylabel("vertical band", fontsize="small")
    ax.figure.colorbar(image, ax=ax, label="loss (lower = shortcut)", shrink=0.8)


def _draw_class_maps(axes: list[Axes], found: dict) -> None:
    """Per class, the loss increase when a band is removed (higher = relied on), on one colour scale per task.
    Class names wrap at their underscores, so long ones stay within their panel. Bands sit where they sit in the
    band-loss map beside them, so the class panels carry no ticks."""
    maps = found["class_map_arrays"][: len(axes)]
    names = found.get("classes") or []
    finite = maps[np.isfinite(maps)]
    limits = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    image = None
    for k, (ax, m) in enumerate(zip(axes, maps)):
        name = textwrap.fill((names[k] if k < len(names) else f"class {k}").replace("_", " "), CLASS_TITLE_WIDTH)
        ax.set_xticks([])
        ax.set_yticks([])
        if np.isnan(m).all():
            ax.set_title(f"{name}: absent", fontsize="medium")
            continue
        image = ax.imshow(m, cmap="magma", vmin=limits[0], vmax=limits[1], interpolation="nearest")
        ax.set_title(name, fontsize="medium")
    if image is not None:
        axes[0].figure.colorbar(image, ax=axes, label="loss increase when removed", shrink=0.8)


def _task_title(found: dict, drawn: int) -> str:
    title = f"{found['task']} (seed {found.get('seed')}): frequency shortcuts"
    classes = len(found["class_map_arrays"])
    return title + (f", first {drawn} of {classes} classes shown" if drawn < classes else "")


def _draw_task(sub: SubFigure, found: dict, class_columns: int, rows: int) -> None:
    """The band-loss map at the top of its own column, then the classes' maps wrapped at ``class_columns`` with the
    one colour bar they share. The two sit on separate grids, so the band map's axis labels and colour bar neither
    widen nor push apart the class panels' rows."""
    drawn = min(MAX_CLASS_PANELS, len(found["class_map_arrays"]))
    band, classes = sub.add_gridspec(1, 2, width_ratios=(BAND_MAP_WIDTH, class_columns))
    _draw_band_map(sub.add_subplot(band.subgridspec(rows, 1)[0, 0]), found)
    cells = classes.subgridspec(rows, class_columns)
    if drawn:
        _draw_class_maps([sub.add_subplot(cells[divmod(k, class_columns)]) for k in range(drawn)], found)
    sub.suptitle(_task_title(found, drawn), fontsize="large")


def shortcut_figure(by_task: dict[str, dict]) -> Figure:
    """One block per task: the band-loss map with the selected bands marked, then up to 10 classes'
    dominant-frequency maps on a grid of at most four columns, so eleven panels make a page-wide figure, not a
    strip."""
    drawn = [min(MAX_CLASS_PANELS, len(f["class_map_arrays"])) for f in by_task.values()]
    class_columns = max(1, min(CLASS_COLUMNS, max(drawn)))
    rows = [max(1, -(-n // class_columns)) for n in drawn]
    width, height = CLASS_PANEL
    fig = Figure(
        figsize=(width * (BAND_MAP_WIDTH + class_columns) + 1.2, height * sum(rows) + 0.5 * len(rows)),
        layout="constrained",
    )
    blocks = fig.subfigures(len(by_task), 1, height_ratios=rows, squeeze=False)[:, 0]
    for sub, found, task_rows in zip(blocks, by_task.values(), rows):
        _draw_task(sub, found, class_columns, task_rows)
    return fig


def shortcut_maps(shortcut_files: Sequence[str | Path], out_base: str | Path) -> dict[str, dict]:
    """The lowest seed's shortcut maps per task (see ``shortcut_figure``). Returns {task: load_shortcuts(...)} for
    the tasks drawn."""
    by_task: dict[str, dict] = {}
    for found in sorted(map(load_shortcuts, shortcut_files), key=lambda f: (f["task"], f.get("seed", 0))):
        by_task.setdefault(found["task"], found)
    if not by_task:
        _save_empty(out_base, "no shortcut-discovery file was given: no run in this experiment has the PAE init on.")
        return {}
    _save(shortcut_figure(by_task), out_base)
    return by_task


# Koopman spectrum


def koopman_eigenvalues(checkpoint_path: str | Path) -> np.ndarray:
    """Eigenvalues of the checkpoint's Koopman operator K, largest modulus first: shape (k,) for the global K,
    (T, k) for layerwise mode (one row per transition). Only K is read, as numpy: a report needs neither the
    whole checkpoint nor torch."""
    path = _require(Path(checkpoint_path), RERUN_TRAINING)
    try:
        with safe_open(str(path), framework="numpy") as f:
            if KOOPMAN_KEY not in f.keys():  # noqa: SIM118 - safe_open has keys(), no __contains__
                raise PaeError(f"'{path}' holds no '{KOOPMAN_KEY}' although its run has Koopman on.", RERUN_TRAINING)
            k = f.get_tensor(KOOPMAN_KEY).astype(np.float64)
    except (OSError, SafetensorError) as exc:
        raise PaeError(f"'{path}' cannot be read ({exc}).", RERUN_TRAINING) from exc
    if k.ndim not in (2, 3) or k.shape[-1] != k.shape[-2]:
        raise PaeError(f"'{KOOPMAN_KEY}' in '{path}' has shape {k.shape}, not (k, k) or (T, k, k).", RERUN_TRAINING)
    eig = np.linalg.eigvals(k)
    return np.take_along_axis(eig, np.argsort(-np.abs(eig), axis=-1, kind="stable"), axis=-1)


def _draw_spectrum(ax: Axes, eig: np.ndarray, title: str) -> None:
    """Eigenvalues against the unit circle (|lambda| > 1 lets the lifted prompt chain grow with depth)."""
    angle = np.linspace(0, 2 * np.pi, 361)
    ax.plot(np.cos(angle), np.sin(angle), color="0.6", linewidth=0.8, label="unit circle")
    if eig.ndim == 2:
        transition = np.repeat(np.arange(len(eig)), eig.shape[1])
        points = ax.scatter(eig.real.ravel(), eig.imag.ravel(), c=transition, cmap="viridis", s=12)
        ax.figure.colorbar(points, ax=ax, label="transition (layer l to l+1)")
    else:
        ax.scatter(eig.real, eig.imag, s=12, color="tab:blue")
    reach = 1.1 * max(1.0, float(np.abs(eig).max()))
    ax.set(xlim=(-reach, reach), ylim=(-reach, reach), aspect="equal", xlabel="Re $\\lambda$", ylabel="Im $\\lambda$")
    ax.set_title(f"{title}\n$\\rho(K)$ = {np.abs(eig).max():.3f}", fontsize="small")
    ax.grid(alpha=0.3)


def koopman_spectrum(run_dirs: Sequence[str | Path], out_base: str | Path) -> dict[tuple[str, str, str], np.ndarray]:
    """K's eigenvalues in the complex plane, one panel per (task, method, PAE variant) with Koopman on (lowest
    seed). Returns {(task, method, pae): koopman_eigenvalues(...)}."""
    runs = [r for r in map(load_run, run_dirs) if "koopman" in str(r.get("pae", "none"))]
    chosen = _first_seeds(runs, "task", "method", "pae")
    keys = sorted(chosen, key=_variant_order)
    spectra = {key: koopman_eigenvalues(chosen[key]["run_dir"] / CHECKPOINT) for key in keys}
    if not spectra:
        _save_empty(out_base, "no run in this experiment has the Koopman regularizer on, so there is no K to show.")
        return spectra
    fig, axes = _panels(len(keys), columns=3, size=(4.2, 4.0))
    for (task, method, pae), ax in zip(keys, axes):
        _draw_spectrum(ax, spectra[task, method, pae], f"{task} / {method}\nPAE {pae}")
    _save(fig, out_base)
    return spectra


FIGURE_MAKERS = {
    "learning_curves": learning_curves,
    "gradient_oscillation": gradient_oscillation,
    "koopman_spectrum": koopman_spectrum,
    "shortcut_maps": shortcut_maps,
}


def write_figure(kind: str, inputs: list[str], out_base: str | Path) -> None:
    """The pipeline's figure job: run folders are the parents of the given metrics.json files; shortcut maps take
    shortcuts.json files."""
    sources = inputs if kind == "shortcut_maps" else sorted({str(Path(f).parent) for f in inputs})
    FIGURE_MAKERS[kind](sources, out_base)
