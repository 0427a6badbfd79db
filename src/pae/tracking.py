"""MLflow tracking on a SQLite store: one run per training job, per-epoch metrics logged in one batch.

The store defaults to ``sqlite:///<cwd>/mlruns.db`` (MLflow 3 refuses the file store) with artifacts
in ``mlartifacts/`` beside it; ``MLFLOW_TRACKING_URI`` overrides. Telemetry is off.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
T = TypeVar("T")
LOCK_RETRIES = 12
RUN_KEY = "pae_run_key"


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


def task_provenance(cfg: Any, task: Any) -> tuple[dict[str, str], dict[str, str]]:
    """Tags every run of a task shares, computed once per group (hashing the data and the backbone file is not
    free): the training data's content hash and the git state; the backbone file's provenance."""
    from .backbones import describe
    from .data import content_sha256

    return (
        {"data_sha256": content_sha256(task.train_data), **git_provenance()},
        describe(cfg.weights) if cfg.weights else {},
    )


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


def retry_when_locked(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call through SQLite's 'database is locked' with jittered exponential backoff (about a minute in all).

    Many Snakemake jobs write one store; SQLite lets one writer in at a time and the others time out."""
    delay = 0.05
    for attempt in range(LOCK_RETRIES):
        try:
            return call(*args, **kwargs)
        except Exception as exc:
            if "locked" not in str(exc).lower() or attempt == LOCK_RETRIES - 1:
                raise
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")


class Tracker:
    """A thin MLflow run; ``enabled=False`` makes every call a no-op so training code has one path.

    ``key`` names a job across restarts: an unfinished run with the same key is resumed, not duplicated. Metric
    timestamps are the run's start time plus the step, so logging the same value again stores nothing new.
    """

    def __init__(self, experiment: str, run_name: str, enabled: bool = True, key: str | None = None) -> None:
        self.enabled = enabled
        self.run_id: str | None = None
        if not enabled:
            return
        from mlflow import MlflowClient

        uri = tracking_uri()
        db = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
        with _setup_lock(db):
            self.client = MlflowClient(tracking_uri=uri)
            exp = retry_when_locked(self.client.get_experiment_by_name, experiment)
            if exp is None:
                artifacts = None if db is None else (db.parent / "mlartifacts" / experiment).resolve().as_uri()
                exp_id = retry_when_locked(self.client.create_experiment, experiment, artifact_location=artifacts)
            else:
                exp_id = exp.experiment_id
            run = self._unfinished(exp_id, key) if key else None
            if run is None:
                run = retry_when_locked(
                    self.client.create_run, exp_id, run_name=run_name, tags={RUN_KEY: key} if key else None
                )
            else:
                retry_when_locked(self.client.update_run, run.info.run_id, status="RUNNING")
        self.run_id, self.start_ms = run.info.run_id, run.info.start_time

    def _unfinished(self, exp_id: str, key: str):
        runs = retry_when_locked(
            self.client.search_runs, [exp_id], f"tags.{RUN_KEY} = '{key}'", order_by=["attributes.start_time DESC"]
        )
        return next((r for r in runs if r.info.status != "FINISHED"), None)

    def log_params(self, params: dict[str, Any], tags: dict[str, str]) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Param, RunTag

        retry_when_locked(
            self.client.log_batch,
            self.run_id,
            params=[Param(k, str(v)[:6000]) for k, v in params.items()],
            tags=[RunTag(k, str(v)) for k, v in tags.items()],
        )

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Metric

        stamp = self.start_ms + step
        retry_when_locked(
            self.client.log_batch, self.run_id, metrics=[Metric(k, float(v), stamp, step) for k, v in metrics.items()]
        )

    def log_artifacts(self, directory: str | Path) -> None:
        if self.enabled:
            retry_when_locked(self.client.log_artifacts, self.run_id, str(directory))

    def log_file(self, path: str | Path) -> None:
        if self.enabled:
            retry_when_locked(self.client.log_artifact, self.run_id, str(path))

    def finish(self, status: str) -> None:
        """FINISHED, FAILED, or KILLED (preempted: the next start resumes it)."""
        if self.enabled:
            retry_when_locked(self.client.set_terminated, self.run_id, status=status)


def log_to_run(run_id: str | None, metrics: dict[str, float]) -> None:
    """Add final metrics (e.g. the evaluate stage's re-measurement) to an existing run; no-op without one."""
    if not run_id:
        return
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client = MlflowClient(tracking_uri=tracking_uri())
    retry_when_locked(client.log_batch, run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
