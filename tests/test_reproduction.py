"""The committed-state check: a stale dvc.lock (other code or params hashes) and an accuracy that moved beyond the
tolerance are each refused, naming what differs; computed outputs may differ (float rounding across CPUs)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from pae.errors import PaeError
from pae.pipeline.reproduction import accuracy_drift, check_reproduction, stale_inputs


def lock(code_md5: str = "a", lr: float = 0.01, run_md5: str = "r") -> dict:
    return {
        "stages": {
            "train_digits_vpt_deep": {
                "deps": [
                    {"path": "src/pae/loop.py", "md5": code_md5},
                    {"path": "results/default/prepared/digits", "md5": "d"},
                ],
                "params": {"params/default.yaml": {"train": {"lr": lr}}},
                "outs": [{"path": "results/default/runs/digits/vpt_deep", "md5": run_md5}],
            }
        }
    }


def table(value: float) -> dict:
    return {"digits": {"vpt_deep": {"none": {"final_test_top1": value}, "all": {"final_test_top1": 50.0}}}}


def test_only_code_and_params_make_a_lock_stale():
    assert stale_inputs(lock(), lock(run_md5="other", code_md5="a")) == []  # a checkpoint rounded differently
    assert stale_inputs(lock(), lock(code_md5="b")) == ["train_digits_vpt_deep: src/pae/loop.py"]
    assert stale_inputs(lock(), lock(lr=0.02)) == ["train_digits_vpt_deep: params/default.yaml:train"]


def test_accuracies_may_move_up_to_the_tolerance():
    assert accuracy_drift(table(61.36), table(62.36), 2.0) == []
    assert accuracy_drift(table(61.36), table(63.86), 2.0) == [
        "digits / vpt_deep / none: 61.36 committed, 63.86 now (+2.50 points)"
    ]
    missing = {"digits": {"vpt_deep": {"all": {"final_test_top1": 50.0}}}}
    assert accuracy_drift(table(61.36), missing, 2.0) == ["digits / vpt_deep / none: only in the committed table"]


def test_the_check_names_the_stale_input_and_the_fix(tmp_path):
    paths = {name: tmp_path / name for name in ("old.lock", "new.lock", "old.json", "new.json")}
    paths["old.lock"].write_text(yaml.safe_dump(lock()))
    paths["new.lock"].write_text(yaml.safe_dump(lock(code_md5="b")))
    for name in ("old.json", "new.json"):
        paths[name].write_text(json.dumps(table(61.36)))
    with pytest.raises(PaeError, match="src/pae/loop.py") as err:
        check_reproduction(paths["old.lock"], paths["new.lock"], paths["old.json"], paths["new.json"], 2.0)
    assert "make reproduce" in err.value.fix
    paths["new.lock"].write_text(yaml.safe_dump(lock()))
    assert "2 accuracies within 2.0 points" in check_reproduction(*paths.values(), 2.0)


def test_the_readme_states_the_tolerance_the_check_applies():
    """One number: the README's bold tolerance is the check's default, which .ci/run uses (it passes none)."""
    from pae.pipeline.reproduction import TOLERANCE

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    stated = re.search(r"\*\*Tolerance: ([0-9.]+) points\*\*", readme)
    assert stated and float(stated.group(1)) == TOLERANCE
    ci = (Path(__file__).resolve().parents[1] / ".ci/run").read_text()
    assert "check-reproduction" in ci and "--tolerance" not in ci


def planted_run(folder: Path, prompt: float, top1: float, wall: float) -> Path:
    """A run folder as training writes one: a checkpoint, metrics with a timing and a run id, a curve."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    save_file(
        {"prompts": torch.tensor([[prompt, 1.0]]), "head.bias": torch.zeros(2)}, str(folder / "checkpoint.safetensors")
    )
    metrics = {
        "final_test_top1": top1,
        "wall_time_s": wall,
        "mlflow_run_id": str(wall),
        "settings": {"out_dir": str(folder)},
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "history.csv").write_text(f"epoch,test_top1\n1,{top1}\n")
    return folder


def test_trees_differ_only_where_a_number_does(tmp_path):
    """Planted trees: timings, run ids and ignored keys do not count; one flipped bit, one changed top-1, a missing
    run do, each named by its file."""
    from pae.pipeline.reproduction import tree_differences

    a, b = tmp_path / "a", tmp_path / "b"
    planted_run(a / "run1", 0.5, 60.0, wall=12.0)
    planted_run(b / "run1", 0.5, 60.0, wall=13.5)
    assert tree_differences(a, b, frozenset({"out_dir"})) == []
    assert tree_differences(a, b) == ["run1/metrics.json: JSON differs (first keys: ['settings'])"]

    next_float = float(np.nextafter(np.float32(0.5), np.float32(1.0)))  # one bit apart, equal to 6 digits
    planted_run(a / "run2", 0.5, 61.0, wall=1.0)
    planted_run(b / "run2", next_float, 61.5, wall=1.0)
    planted_run(a / "run3", 0.5, 62.0, wall=1.0)
    assert tree_differences(a, b, frozenset({"out_dir"})) == [
        "run2/checkpoint.safetensors: tensor 'prompts' differs",
        "run2/history.csv: bytes differ",
        "run2/metrics.json: JSON differs (first keys: ['final_test_top1'])",
        f"run3/checkpoint.safetensors: only in {a}",
        f"run3/history.csv: only in {a}",
        f"run3/metrics.json: only in {a}",
    ]


def test_compare_results_exits_nonzero_naming_what_differs(tmp_path, capsys):
    from pae.cli import main

    planted_run(tmp_path / "a" / "run", 0.5, 60.0, wall=1.0)
    planted_run(tmp_path / "b" / "run", 0.5, 60.0, wall=2.0)
    assert main(["compare-results", str(tmp_path / "a"), str(tmp_path / "b"), "--ignore", "out_dir"]) == 0
    assert "identical: 3 files" in capsys.readouterr().out
    planted_run(tmp_path / "c" / "run", -0.5, 60.0, wall=1.0)
    assert main(["compare-results", str(tmp_path / "a"), str(tmp_path / "c"), "--ignore", "out_dir"]) == 2
    assert "run/checkpoint.safetensors: tensor 'prompts' differs" in capsys.readouterr().err
    assert main(["compare-results", str(tmp_path / "typo"), str(tmp_path / "typo2")]) == 2  # not "0 files equal"
    assert f"'{tmp_path / 'typo'}' is not a folder" in capsys.readouterr().err


def test_a_fresh_clone_lock_check_ignores_cached_outputs_and_names_code_params_commands_tables_and_orphans():
    """`dvc status --json` as DVC writes it for a fresh clone (outputs not in cache) and for a stale lock."""
    from pae.pipeline.reproduction import lock_changes

    dvc_yaml = {"stages": {"train_digits_vpt": {"cmd": "x"}, "table": {"foreach": ["accuracy", "cost"], "do": {}}}}
    lock = {"stages": {"train_digits_vpt": {}, "table@accuracy": {}, "table@cost": {}}}
    fresh_clone = {
        "train_digits_vpt": [{"changed outs": {"results/default/runs/digits/vpt": "not in cache"}}],
        "table@accuracy": [{"changed deps": {"results/default/runs/digits/vpt": "deleted"}}],
    }
    assert lock_changes(fresh_clone, lock, dvc_yaml) == []
    stale = {
        "train_digits_vpt": [
            {"changed deps": {"src/pae/prompts/vpt.py": "modified", "params/default.yaml": {"train.lr": "modified"}}},
            {"changed outs": {"results/default/runs/digits/vpt": "not in cache"}},
        ],
        "table@cost": ["changed command"],
        "table@accuracy": [{"changed outs": {"reports/default/accuracy.md": "modified"}}],
    }
    orphan = {"stages": {**lock["stages"], "data@digits": {}}}
    committed = frozenset({"reports/default/accuracy.md"})  # git tracks it: a fresh clone has it
    assert lock_changes(stale, orphan, dvc_yaml, committed) == [
        "train_digits_vpt: src/pae/prompts/vpt.py",
        "train_digits_vpt: params/default.yaml (train.lr)",
        "table@cost: its command changed",
        "table@accuracy: reports/default/accuracy.md",
        "data@digits: in dvc.lock, not in dvc.yaml",
    ]
    assert "table@accuracy: reports/default/accuracy.md" not in lock_changes(stale, orphan, dvc_yaml)


def test_check_lock_and_prune_lock_on_a_real_dvc_project(tmp_path):
    """DVC's own status on a git + DVC project it built: clean; clean again without the cached outputs and the cache
    (a fresh clone); a code edit, a params edit and an edited committed table named; a stage removed from dvc.yaml
    named, then dropped from the lock by prune_lock."""
    import shutil
    import subprocess
    import sys

    from pae.pipeline.dvc_stages import prune_lock
    from pae.pipeline.reproduction import check_lock

    def run(*cmd: str) -> None:
        done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr

    (tmp_path / "src").mkdir()
    (tmp_path / "src/x.py").write_text("a = 1\n")
    (tmp_path / "params").mkdir()
    (tmp_path / "params/default.yaml").write_text("lr: 0.1\nother: 1\n")
    table = {"cmd": "cp out.txt t_${item}.txt", "deps": ["out.txt"], "outs": [{"t_${item}.txt": {"cache": False}}]}
    stages = {
        "train": {
            "cmd": "cp src/x.py out.txt",
            "deps": ["src/x.py"],
            "params": [{"params/default.yaml": ["lr"]}],
            "outs": ["out.txt"],
        },
        "table": {"foreach": ["a", "b"], "do": table},
    }
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    run("git", "init", "-q")
    run(sys.executable, "-m", "dvc", "init", "-q")
    run(sys.executable, "-m", "dvc", "repro", "-q")
    run("git", "add", "-A")  # the tables are committed, as reports/ is; out.txt is cached (git-ignored by DVC)
    assert check_lock(tmp_path) == "ok: dvc.lock records this checkout's code, params and 3 stages"

    (tmp_path / "out.txt").unlink()
    shutil.rmtree(tmp_path / ".dvc/cache")
    assert check_lock(tmp_path).startswith("ok")  # a fresh clone has no cached outputs and no cache

    (tmp_path / "src/x.py").write_text("a = 2\n")
    (tmp_path / "params/default.yaml").write_text("lr: 0.2\nother: 1\n")
    (tmp_path / "t_b.txt").write_text("edited by hand\n")
    del stages["table"]["foreach"][0]
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    with pytest.raises(PaeError) as err:
        check_lock(tmp_path)
    assert sorted(err.value.problem.splitlines()[1:]) == [
        "  table@a: in dvc.lock, not in dvc.yaml",
        "  table@b: t_b.txt",
        "  train: params/default.yaml (lr)",
        "  train: src/x.py",
    ]
    assert prune_lock(yaml.safe_load((tmp_path / "dvc.yaml").read_text()), tmp_path / "dvc.lock") == ["table@a"]
    assert set(yaml.safe_load((tmp_path / "dvc.lock").read_text())["stages"]) == {"train", "table@b"}
