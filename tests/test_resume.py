"""Reliability of training jobs, as real processes: SIGKILL or SIGTERM anywhere and a restart gives exactly the
uninterrupted run's numbers in the same MLflow run; a damaged state falls back to the one before; divergence keeps
the last finite state and writes no results; eight jobs logging to one SQLite store at once each appear once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pae.pipeline.reproduction import tree_differences

EPOCHS = 12


@pytest.fixture()
def env(tmp_path: Path) -> dict:
    return {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlruns.db'}", "PYTHONUNBUFFERED": "1"}


def command(task: Path, out: Path, cache: Path, *extra: str, epochs: int = EPOCHS, seed: int = 5) -> list[str]:
    """VPT-deep + Koopman with prompt dropout on 48 images: every kind of state (optimizer, PAE, RNG) matters."""
    return [
        sys.executable,
        "-m",
        "pae.cli",
        "train",
        "--kind",
        "vtab1k",
        "--root",
        str(task),
        "--img-size",
        "28",
        "--method",
        "vpt_deep",
        "--epochs",
        str(epochs),
        "--warmup-epochs",
        "1",
        "--lr",
        "0.01",
        "--batch-size",
        "8",
        "--seed",
        str(seed),
        "--device",
        "cpu",
        "--threads",
        "1",
        "--num-tokens",
        "3",
        "--prompt-dropout",
        "0.1",
        "--pae-koopman",
        "--pae-koopman-dim",
        "8",
        "--out-dir",
        str(out),
        "--cache-dir",
        str(cache),
        "--experiment",
        "resume",
        *extra,
    ]


def states(out: Path) -> list[Path]:
    return sorted(out.with_name(f".{out.name}.state").glob("state-*.pt"))


def interrupt(cmd: list[str], env: dict, out: Path, sig: int, after_epoch: int) -> subprocess.CompletedProcess:
    """Start the job, send ``sig`` once it has saved epoch ``after_epoch``, and wait for it to end."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not any(int(p.name.split("-")[1]) >= after_epoch for p in states(out)):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def finish(cmd: list[str], env: dict) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def same_run(a: Path, b: Path) -> None:
    """Identical numbers, curves and tensors bit for bit (timings, run ids, the runs' own folders and experiment
    names aside)."""
    assert not tree_differences(a, b, frozenset({"out_dir", "cache_dir", "experiment"}))


@pytest.fixture()
def reference(tiny_task, tmp_path, env) -> Path:
    out = tmp_path / "uninterrupted"
    finish(command(tiny_task, out, tmp_path / "cache"), env)
    assert not states(out)  # a finished run leaves no state behind
    return out


def test_sigkill_anywhere_then_restart_gives_the_uninterrupted_run_in_the_same_mlflow_run(
    tiny_task, tmp_path, env, reference
):
    from mlflow import MlflowClient

    out = tmp_path / "killed"
    cmd = command(tiny_task, out, tmp_path / "cache")
    killed = interrupt(cmd, env, out, signal.SIGKILL, after_epoch=3)
    assert killed.returncode == -signal.SIGKILL and not out.exists() and states(out)
    finish(cmd, env)
    same_run(out, reference)
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("resume").experiment_id])
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}  # the reference and the resumed run
    run_id = json.loads((out / "metrics.json").read_text())["mlflow_run_id"]
    curve = client.get_metric_history(run_id, "test_top1")
    assert sorted(m.step for m in curve) == list(range(EPOCHS + 1))  # epochs logged twice are stored once


def test_sigterm_saves_mid_epoch_and_the_restart_resumes_there(tiny_task, tmp_path, env, reference):
    out = tmp_path / "preempted"
    cmd = command(tiny_task, out, tmp_path / "cache")
    stopped = interrupt(cmd, env, out, signal.SIGTERM, after_epoch=2)
    assert stopped.returncode == 143 and "run the same command again to resume" in stopped.stderr
    assert not out.exists() and states(out)
    finish(cmd, env)
    same_run(out, reference)


def test_a_truncated_state_falls_back_to_the_one_before(tiny_task, tmp_path, env, reference):
    out = tmp_path / "truncated"
    cmd = command(tiny_task, out, tmp_path / "cache")
    interrupt(cmd, env, out, signal.SIGKILL, after_epoch=4)
    newest = states(out)[-1]
    newest.write_bytes(newest.read_bytes()[:1000])  # a disk that filled up mid-write
    done = finish(cmd, env)
    assert f"training state '{newest}' is damaged" in done.stderr
    same_run(out, reference)


def test_a_changed_config_does_not_resume_another_experiments_state(tiny_task, tmp_path, env):
    out = tmp_path / "changed"
    interrupt(command(tiny_task, out, tmp_path / "cache"), env, out, signal.SIGKILL, after_epoch=2)
    done = finish(command(tiny_task, out, tmp_path / "cache", "--lr", "0.02", epochs=3), env)
    assert "belongs to another configuration; starting afresh" in done.stderr
    assert json.loads((out / "metrics.json").read_text())["lr"] == 0.02


def test_divergence_stops_with_the_last_finite_state_kept_and_no_results(tiny_task, tmp_path, env):
    out = tmp_path / "diverged"
    done = subprocess.run(
        command(tiny_task, out, tmp_path / "cache", "--lr", "1e30", epochs=3),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    # VPT's per-epoch schedule runs epoch 1 at lr 0 (warmup from 0): the lr of 1e30 first acts in epoch 2
    assert done.returncode == 2 and "training diverged in epoch 2" in done.stderr
    assert "the last finite state (epoch 1) is kept in" in done.stderr and "lower the learning rate" in done.stderr
    assert not out.exists() and [p.name for p in states(out)] == ["state-00000-000000.pt", "state-00001-000000.pt"]


def test_a_group_resumes_exactly_even_when_killed_between_its_runs_saves(tiny_task, tmp_path, env):
    """A group saves its runs one after another: a kill in between leaves one run a save ahead. The restart aligns
    them on the position both still hold and ends with the uninterrupted group's numbers (dropout masks included)."""

    def group(folder: str) -> list[str]:
        return command(tiny_task, tmp_path / folder / "lr{lr}", tmp_path / "cache", "--lr", "0.01", "0.02")

    finish(group("reference"), env)
    first, second = tmp_path / "stopped" / "lr0.01", tmp_path / "stopped" / "lr0.02"
    stopped = interrupt(group("stopped"), env, first, signal.SIGTERM, after_epoch=2)
    assert stopped.returncode == 143 and len(states(first)) == len(states(second)) == 2
    states(second)[-1].unlink()  # as if killed after the first run's save and before the second's
    finish(group("stopped"), env)
    for lr in ("0.01", "0.02"):
        same_run(tmp_path / "stopped" / f"lr{lr}", tmp_path / "reference" / f"lr{lr}")
    assert json.loads((first / "metrics.json").read_text())["group_size"] == 2


def test_eight_jobs_logging_to_one_sqlite_store_at_once_each_appear_once(tiny_task, tmp_path, env):
    """A fresh store and a fresh data cache: the jobs race to create both, then to write every epoch."""
    from mlflow import MlflowClient

    outs = [tmp_path / f"job{i}" for i in range(8)]
    procs = [
        subprocess.Popen(
            command(tiny_task, out, tmp_path / "cache", epochs=2, seed=i),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, out in enumerate(outs)
    ]
    results = [(*p.communicate(timeout=600), p.returncode) for p in procs]
    assert all(rc == 0 for _, _, rc in results), [err[-2000:] for _, err, rc in results if rc]
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("resume").experiment_id])
    ids = {json.loads((out / "metrics.json").read_text())["mlflow_run_id"] for out in outs}
    assert len(runs) == 8 and {r.info.run_id for r in runs} == ids and {r.info.status for r in runs} == {"FINISHED"}
    assert all(len(client.get_metric_history(r.info.run_id, "test_top1")) == 3 for r in runs)


BROKEN = {  # how a dataset goes wrong -> the message naming it
    "label out of range": (lambda lines: [lines[0].rsplit(" ", 1)[0] + " 99", *lines[1:]], "label 99"),
    "duplicate entry": (lambda lines: [lines[0], *lines], "is listed twice"),
    "empty split": (lambda lines: [], "lists no images"),
    "missing image": (lambda lines: ["images/nope.jpg 0", *lines[1:]], "nope.jpg"),
}


@pytest.mark.parametrize("breakage", BROKEN)
def test_a_broken_dataset_stops_each_stage_with_its_message_and_no_declared_output(tiny_task, tmp_path, env, breakage):
    """What the DAG's prepare_data and train jobs would write (summary, run folder) never appears half made."""
    import shutil

    task = tmp_path / "task"
    shutil.copytree(tiny_task, task, symlinks=True)
    edit, message = BROKEN[breakage]
    split = task / "train800val200.txt"
    split.write_text("\n".join(edit(split.read_text().splitlines())) + "\n")
    prepare = subprocess.run(
        [
            sys.executable,
            "-m",
            "pae.cli",
            "prepare-data",
            "--kind",
            "vtab1k",
            "--root",
            str(task),
            "--img-size",
            "28",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--summary",
            str(tmp_path / "prepared.json"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    trained = subprocess.run(
        command(task, tmp_path / "run", tmp_path / "cache", epochs=2),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    for done in (prepare, trained):
        assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert (
        not (tmp_path / "prepared.json").exists() and not (tmp_path / "run").exists() and not states(tmp_path / "run")
    )
