"""MLflow tracking on a SQLite store: one run per training job, per-epoch metrics logged in one batch.

The store defaults to ``sqlite:///<cwd>/mlruns.db`` (MLflow 3 refuses the file store) with artifacts
in ``mlartifacts/`` beside it; ``MLFLOW_TRACKING_URI`` overrides. Telemetry is off.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlruns.db'}"


def git_provenance() -> dict[str, str]:
    """The code's commit and whether the working tree differed from it, for every run's tags."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
    except (OSError, subprocess.SubprocessError):
        commit = ""
    if not commit:
        return {"git_commit": "unknown (not a git checkout)"}
    return {"git_commit": commit, "git_dirty": str(bool(git("status", "--porcelain", "--untracked-files=no")))}


@contextlib.contextmanager
def _setup_lock(db: Path | None) -> Iterator[None]:
    """Serialise store creation and experiment/run set-up across processes.

    Parallel Snakemake jobs on a fresh SQLite store otherwise race to create its tables and fail.
    """
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class Tracker:
    """A thin MLflow run; ``enabled=False`` makes every call a no-op so training code has one path."""

    def __init__(self, experiment: str, run_name: str, enabled: bool = True) -> None:
        self.enabled = enabled
        self.run_id: str | None = None
        if not enabled:
            return
        from mlflow import MlflowClient

        uri = tracking_uri()
        db = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
        with _setup_lock(db):
            self.client = MlflowClient(tracking_uri=uri)
            exp = self.client.get_experiment_by_name(experiment)
            if exp is None:
                artifacts = None if db is None else (db.parent / "mlartifacts" / experiment).resolve().as_uri()
                exp_id = self.client.create_experiment(experiment, artifact_location=artifacts)
            else:
                exp_id = exp.experiment_id
            self.run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id

    def log_params(self, params: dict[str, Any], tags: dict[str, str]) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Param, RunTag

        self.client.log_batch(self.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()],
                              tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def log_artifacts(self, directory: str | Path) -> None:
        if self.enabled:
            self.client.log_artifacts(self.run_id, str(directory))

    def log_file(self, path: str | Path) -> None:
        if self.enabled:
            self.client.log_artifact(self.run_id, str(path))

    def finish(self, ok: bool) -> None:
        if self.enabled:
            self.client.set_terminated(self.run_id, status="FINISHED" if ok else "FAILED")


def log_to_run(run_id: str | None, metrics: dict[str, float]) -> None:
    """Add final metrics (e.g. the evaluate stage's re-measurement) to an existing run; no-op without one."""
    if not run_id:
        return
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    MlflowClient(tracking_uri=tracking_uri()).log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
