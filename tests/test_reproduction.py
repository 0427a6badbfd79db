"""The committed-state check: a stale dvc.lock (other code or params hashes) and an accuracy that moved beyond the
tolerance are each refused, naming what differs; computed outputs may differ (float rounding across CPUs)."""

from __future__ import annotations

import json

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
