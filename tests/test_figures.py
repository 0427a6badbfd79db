"""Figures from synthetic run folders: the numbers drawn against an independent computation, empty states, errors."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pae.errors import PaeError
from pae.methods import ordered
from pae.reports.figures import (
    gradient_oscillation,
    koopman_eigenvalues,
    koopman_spectrum,
    learning_curve_figure,
    learning_curves,
    load_shortcuts,
    shortcut_figure,
    shortcut_maps,
)

NAN = float("nan")
PAGE_WIDTH_PX = (900, 1800)  # 6-12 in at the figures' 150 dpi: scaled to a page's ~6.5 in, the text still reads


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_run(
    root: Path,
    task: str,
    method: str,
    pae: str,
    seed: int,
    test_top1: list[float],
    step_norms: np.ndarray | None = None,
    koopman: np.ndarray | None = None,
) -> Path:
    """A run folder as train.py writes it. ``step_norms`` is g[step, layer] (None: no prompts, like a linear probe)."""
    run = root / task / method / pae / f"seed{seed}"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(
        json.dumps(
            {
                "task": task,
                "method": method,
                "pae": pae,
                "seed": seed,
                "epochs": len(test_top1) - 1,
                "mlflow_run_id": f"id{seed}",
            }
        )
    )
    layers = 0 if step_norms is None else step_norms.shape[1]
    history = [
        {
            "epoch": e,
            "lr": 0.1,
            "train_loss": NAN if e == 0 else 1.0 / e,
            "test_top1": acc,
            **{f"grad_norm_l{i}": NAN if e == 0 else 1.0 for i in range(layers)},
        }
        for e, acc in enumerate(test_top1)
    ]
    write_csv(run / "history.csv", history)
    if step_norms is not None:
        write_csv(
            run / "grad_norms.csv",
            [{"step": t + 1, **{f"grad_norm_l{i}": v for i, v in enumerate(row)}} for t, row in enumerate(step_norms)],
        )
    tensors = {"head.weight": torch.zeros(2, 3)}
    if koopman is not None:
        tensors["pae.regularizer.K"] = torch.tensor(koopman, dtype=torch.float32)
    save_file(tensors, str(run / "checkpoint.safetensors"))
    return run


def assert_figure_files(out_base: Path) -> None:
    assert Path(f"{out_base}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Path(f"{out_base}.pdf").read_bytes()[:4] == b"%PDF"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels from the PNG's IHDR chunk, read from the file, not from the figure that wrote it."""
    header = path.read_bytes()[16:24]
    return int.from_bytes(header[:4], "big"), int.from_bytes(header[4:], "big")


def panels(fig) -> list:
    """The figure's visible panels: axes with a title (colour bars have none; unused grid cells are hidden)."""
    return [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]


def planted_operator(angles: list[float], radii: list[float], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """K = Q B Q^T with B block-diagonal rotations scaled by ``radii``: eigenvalues r e^{+-i theta}, hidden by Q."""
    k = 2 * len(angles)
    b = np.zeros((k, k))
    for i, (theta, r) in enumerate(zip(angles, radii)):
        b[2 * i : 2 * i + 2, 2 * i : 2 * i + 2] = r * np.array(
            [[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]]
        )
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(k, k)))
    eig = np.array([r * np.exp(s * 1j * theta) for theta, r in zip(angles, radii) for s in (1, -1)])
    return q @ b @ q.T, eig


def test_learning_curves_are_seed_means_and_match_their_csv(tmp_path: Path):
    seed_a, seed_b = [10.0, 40.0, 60.0, 70.0], [20.0, 50.0, NAN, 74.0]
    runs = [
        write_run(tmp_path, "digits", "vpt_deep", "none", 42, seed_a),
        write_run(tmp_path, "digits", "vpt_deep", "none", 43, seed_b),
        write_run(tmp_path, "digits", "vpt_deep", "init", 42, [30.0, 55.0, 65.0, 80.0]),
        write_run(tmp_path, "cifar", "linear", "none", 42, [5.0, 6.0]),
    ]
    out = tmp_path / "figs" / "curves"
    rows = learning_curves(runs, out)

    assert_figure_files(out)
    base = [r for r in rows if (r["task"], r["method"], r["pae"]) == ("digits", "vpt_deep", "none")]
    both = np.array([seed_a, seed_b])
    assert [r["epoch"] for r in base] == [0, 1, 2, 3]
    assert [r["top1_mean"] for r in base] == pytest.approx(np.nanmean(both, axis=0))
    assert [r["seeds"] for r in base] == [2, 2, 1, 2]  # epoch 2 of seed 43 was not evaluated
    assert base[0]["top1_std"] == pytest.approx(np.std(both[:, 0], ddof=1))
    assert math.isnan(base[2]["top1_std"])
    # sorted: tasks by name, then methods, then PAE variants in the ablation's order
    assert [(r["task"], r["pae"]) for r in rows if r["epoch"] == 0] == [
        ("cifar", "none"),
        ("digits", "none"),
        ("digits", "init"),
    ]
    with open(f"{out}.csv", newline="") as f:
        written = list(csv.DictReader(f))
    assert len(written) == len(rows)
    assert [float(r["top1_mean"]) for r in written] == pytest.approx([r["top1_mean"] for r in rows])


def curve(task: str, method: str, pae: str, top1: list[float]) -> list[dict]:
    return [
        {"task": task, "method": method, "pae": pae, "epoch": e, "top1_mean": v, "top1_std": NAN, "seeds": 1}
        for e, v in enumerate(top1)
    ]


def test_learning_curves_draw_one_panel_per_method_in_the_registry_order():
    methods = [spec.name for spec in ordered()][:6]
    rows = [
        r
        for i, m in enumerate(reversed(methods))
        for pae in ("none", "init")[: 1 + i % 2]
        for r in curve("digits", m, pae, [10.0 + i, 50.0, 70.0 + i])
    ]  # alternate methods have a PAE variant
    fig = learning_curve_figure(rows)

    axes = panels(fig)
    assert [ax.get_title() for ax in axes] == methods  # not the input's order
    assert max(ax.get_subplotspec().colspan.stop for ax in axes) <= 4  # wraps at four columns
    assert all(ax.get_shared_y_axes().joined(axes[0], ax) for ax in axes)
    colours = []
    for ax, method in zip(axes, methods):
        planted = sorted({r["pae"] for r in rows if r["method"] == method}, key=("none", "init").index)
        assert len(ax.get_lines()) == len(planted)
        assert len({tuple(line.get_color()) for line in ax.get_lines()}) == 1  # a method's variants share a colour
        assert [line.get_linestyle() for line in ax.get_lines()] == ["-", "--"][: len(planted)]
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["base (no PAE)", "PAE init"][: len(planted)]
        colours.append(tuple(ax.get_lines()[0].get_color()))
    assert len(set(colours)) == len(methods)  # and methods differ
    assert fig.get_supylabel() == "test top-1 (%)"


def test_learning_curves_read_at_page_width(tmp_path: Path):
    runs = [
        write_run(tmp_path, "digits", spec.name, pae, 42, [10.0, 40.0, 60.0])
        for spec in ordered()[:7]
        for pae in ("none", "init+koopman+lyapunov")
    ]
    out = tmp_path / "curves"
    learning_curves(runs, out)
    width, height = png_size(Path(f"{out}.png"))
    assert PAGE_WIDTH_PX[0] <= width <= PAGE_WIDTH_PX[1]
    assert width / height <= 2.5  # seven panels make two rows of four, not one strip
    with open(f"{out}.csv", newline="") as f:
        assert tuple(csv.DictReader(f).fieldnames) == (
            "task",
            "method",
            "pae",
            "epoch",
            "top1_mean",
            "top1_std",
            "seeds",
        )


def test_learning_curves_reject_a_split_the_runs_did_not_evaluate(tmp_path: Path):
    run = write_run(tmp_path, "digits", "vpt_deep", "none", 42, [10.0, 20.0])
    with pytest.raises(PaeError, match="val200_top1"):
        learning_curves([run], tmp_path / "curves", split="val200")


@pytest.mark.parametrize("name", ["history.csv", "metrics.json"])
def test_a_run_missing_a_file_raises_an_error_naming_it(tmp_path: Path, name: str):
    run = write_run(tmp_path, "digits", "vpt_deep", "none", 42, [10.0, 20.0])
    (run / name).unlink()
    with pytest.raises(PaeError, match=name) as info:
        learning_curves([run], tmp_path / "curves")
    assert "rerun the training job" in info.value.fix


def test_gradient_oscillation_draws_per_step_norms_deep_methods_first(tmp_path: Path):
    rng = np.random.default_rng(0)
    deep = rng.uniform(0.1, 2.0, size=(12, 4))
    runs = [
        write_run(tmp_path, "digits", "vpt_shallow", "none", 42, [1.0, 2.0], rng.uniform(0.1, 2.0, (12, 1))),
        write_run(tmp_path, "digits", "vpt_deep", "init", 43, [1.0, 2.0], rng.uniform(0.1, 2.0, (12, 4))),
        write_run(tmp_path, "digits", "vpt_deep", "init", 42, [1.0, 2.0], deep),
        write_run(tmp_path, "digits", "linear", "none", 42, [1.0, 2.0]),  # no prompts: left out
        write_run(tmp_path, "zoo", "vpt_deep", "none", 42, [1.0, 2.0], rng.uniform(0.1, 2.0, (12, 4))),
    ]
    out = tmp_path / "grad"
    matrices = gradient_oscillation(runs, out)

    assert_figure_files(out)
    assert list(matrices) == [("vpt_deep", "init"), ("vpt_shallow", "none")]  # first task only, most layers first
    np.testing.assert_array_equal(matrices["vpt_deep", "init"], deep.T)  # lowest seed, layers x steps


def test_gradient_oscillation_caps_the_panels(tmp_path: Path):
    runs = [write_run(tmp_path, "digits", f"m{i}", "none", 42, [1.0, 2.0], np.ones((3, 1 + i % 3))) for i in range(10)]
    matrices = gradient_oscillation(runs, tmp_path / "grad")
    assert len(matrices) == 8
    assert [len(m) for m in matrices.values()] == [3, 3, 3, 2, 2, 2, 1, 1]


def test_gradient_oscillation_needs_grad_norms_csv_when_the_run_has_prompts(tmp_path: Path):
    run = write_run(tmp_path, "digits", "vpt_deep", "none", 42, [1.0, 2.0], np.ones((3, 2)))
    (run / "grad_norms.csv").unlink()
    with pytest.raises(PaeError, match="grad_norms.csv"):
        gradient_oscillation([run], tmp_path / "grad")


def test_koopman_eigenvalues_of_a_planted_operator(tmp_path: Path):
    k, expected = planted_operator([0.3, 1.1, 2.5], [0.9, 0.5, 1.2])
    path = tmp_path / "checkpoint.safetensors"
    save_file({"pae.regularizer.K": torch.tensor(k, dtype=torch.float32)}, str(path))
    eig = koopman_eigenvalues(path)
    assert eig.shape == (6,)
    np.testing.assert_allclose(np.sort_complex(eig), np.sort_complex(expected), atol=1e-5)
    assert abs(eig[0]) == pytest.approx(1.2, abs=1e-5)  # largest modulus first


def test_koopman_eigenvalues_of_layerwise_operators(tmp_path: Path):
    planted = [planted_operator([0.2 * t + 0.1, 1.5], [0.8, 0.3 + 0.2 * t], seed=t) for t in range(3)]
    path = tmp_path / "checkpoint.safetensors"
    save_file({"pae.regularizer.K": torch.tensor(np.stack([k for k, _ in planted]), dtype=torch.float32)}, str(path))
    eig = koopman_eigenvalues(path)
    assert eig.shape == (3, 4)
    for row, (_, expected) in zip(eig, planted):
        np.testing.assert_allclose(np.sort_complex(row), np.sort_complex(expected), atol=1e-5)


def test_koopman_spectrum_shows_only_runs_with_koopman(tmp_path: Path):
    k_global, expected = planted_operator([0.4], [0.7])
    k_layers = np.stack([planted_operator([0.5], [0.6 + 0.1 * t])[0] for t in range(3)])
    runs = [
        write_run(tmp_path, "digits", "vpt_deep", "koopman", 42, [1.0, 2.0], koopman=k_global),
        write_run(tmp_path, "digits", "vpt_deep", "koopman", 43, [1.0, 2.0], koopman=np.eye(2)),
        write_run(tmp_path, "digits", "vpt_deep", "init+koopman+lyapunov", 42, [1.0, 2.0], koopman=k_layers),
        write_run(tmp_path, "digits", "vpt_deep", "none", 42, [1.0, 2.0]),
    ]
    out = tmp_path / "spectrum"
    spectra = koopman_spectrum(runs, out)

    assert_figure_files(out)
    assert list(spectra) == [("digits", "vpt_deep", "koopman"), ("digits", "vpt_deep", "init+koopman+lyapunov")]
    np.testing.assert_allclose(
        np.sort_complex(spectra["digits", "vpt_deep", "koopman"]), np.sort_complex(expected), atol=1e-5
    )  # the lowest seed's K
    assert spectra["digits", "vpt_deep", "init+koopman+lyapunov"].shape == (3, 2)


def test_koopman_run_whose_checkpoint_lacks_k_or_is_corrupt_is_an_error(tmp_path: Path):
    run = write_run(tmp_path, "digits", "vpt_deep", "koopman", 42, [1.0, 2.0])
    with pytest.raises(PaeError, match="holds no 'pae.regularizer.K'"):
        koopman_spectrum([run], tmp_path / "spectrum")
    (run / "checkpoint.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(PaeError, match="checkpoint.safetensors' cannot be read"):
        koopman_spectrum([run], tmp_path / "spectrum")


def write_shortcuts(
    path: Path, task: str, seed: int, n: int, band_losses: list[float], selected: list[int], class_maps: list | None
) -> Path:
    classes = None if class_maps is None else [f"c{k}" for k in range(len(class_maps))]
    path.write_text(
        json.dumps(
            {
                "task": task,
                "seed": seed,
                "img_size": 28,
                "window": 2,
                "stride": 1,
                "grid": n,
                "scorer": "linear_probe",
                "band_losses": band_losses,
                "selected": selected,
                "classes": classes,
                "class_maps": class_maps,
                "seconds": 0.1,
            }
        )
    )
    return path


def test_shortcut_maps_put_band_s_at_row_s_div_n_column_s_mod_n(tmp_path: Path):
    n, planted = 4, 6
    losses = [1.0] * n * n
    losses[planted] = 0.0
    relied = [0.0] * n * n
    relied[13] = 5.0
    class_maps = [relied, None, *([[0.1] * n * n] * 10)]  # 12 classes: one absent, only 10 drawn
    files = [
        write_shortcuts(tmp_path / "b.json", "digits", 43, n, [9.0] * n * n, [0], None),
        write_shortcuts(tmp_path / "a.json", "digits", 42, n, losses, [planted, 3], class_maps),
        write_shortcuts(tmp_path / "c.json", "cifar", 42, n, [2.0] * n * n, [1], None),
    ]
    out = tmp_path / "shortcuts"
    maps = shortcut_maps(files, out)

    assert_figure_files(out)
    assert list(maps) == ["cifar", "digits"]
    digits = maps["digits"]
    assert digits["seed"] == 42  # the lowest seed per task
    assert np.argwhere(digits["band_map"] == 0.0).tolist() == [[planted // n, planted % n]]
    assert digits["selected_cells"].tolist() == [[1, 2], [0, 3]]
    assert digits["class_map_arrays"].shape == (12, n, n)
    assert digits["class_map_arrays"][0, 13 // n, 13 % n] == 5.0
    assert np.isnan(digits["class_map_arrays"][1]).all()
    assert maps["cifar"]["class_map_arrays"].shape == (0, n, n)


def test_shortcut_maps_are_a_page_wide_grid_not_a_strip(tmp_path: Path):
    n, classes = 6, 12
    maps = [[float(k)] * n * n for k in range(classes)]
    path = write_shortcuts(tmp_path / "s.json", "digits", 42, n, [1.0] * n * n, [7, 8], maps)
    out = tmp_path / "shortcuts"
    shortcut_maps([path], out)

    width, height = png_size(Path(f"{out}.png"))
    assert PAGE_WIDTH_PX[0] <= width <= PAGE_WIDTH_PX[1]
    assert width / height <= 2.2  # the band map and ten classes: eleven panels on rows, the old strip was 9:1
    fig = shortcut_figure({"digits": load_shortcuts(path)})
    titles = [ax.get_title() for ax in panels(fig)]
    assert len(titles) == 1 + 10  # the band map, then the first ten classes
    assert titles[1:] == [f"c{k}" for k in range(10)]
    assert max(ax.get_subplotspec().colspan.stop for ax in panels(fig)[1:]) <= 4  # classes wrap at four columns
    colour_bars = [ax for ax in fig.axes if not ax.get_title()]
    assert len(colour_bars) == 2  # the band loss's, and one that all class maps share


def test_shortcut_maps_stack_one_block_per_task_and_wrap_long_class_names(tmp_path: Path):
    n = 4
    files = [
        write_shortcuts(tmp_path / f"{task}.json", task, 42, n, [1.0] * n * n, [0], [[0.5] * n * n] * 3)
        for task in ("cifar", "digits")
    ]
    found = {task: load_shortcuts(f) for task, f in zip(("cifar", "digits"), files)}
    found["cifar"]["classes"] = ["aquarium_fish", "pickup_truck_and_trailer", "x"]
    fig = shortcut_figure(found)

    assert [sub.get_suptitle() for sub in fig.subfigs] == [
        "cifar (seed 42): frequency shortcuts",
        "digits (seed 42): frequency shortcuts",
    ]
    assert len(panels(fig)) == 2 * (1 + 3)
    assert "\n" in panels(fig)[2].get_title()  # 24 characters do not fit one panel's width


def test_shortcut_file_with_a_map_of_the_wrong_size_is_an_error(tmp_path: Path):
    path = write_shortcuts(tmp_path / "s.json", "digits", 42, 4, [1.0] * 15, [0], None)
    with pytest.raises(PaeError, match="s.json"):
        shortcut_maps([path], tmp_path / "shortcuts")


def test_every_figure_is_written_even_with_nothing_to_show(tmp_path: Path):
    probe = write_run(tmp_path, "digits", "linear", "none", 42, [1.0, 2.0])
    assert learning_curves([], tmp_path / "curves") == []
    assert gradient_oscillation([probe], tmp_path / "grad") == {}
    assert shortcut_maps([], tmp_path / "shortcuts") == {}
    assert koopman_spectrum([probe], tmp_path / "spectrum") == {}
    for name in ("curves", "grad", "shortcuts", "spectrum"):
        assert_figure_files(tmp_path / name)
    assert (tmp_path / "curves.csv").read_text().strip() == "task,method,pae,epoch,top1_mean,top1_std,seeds"
