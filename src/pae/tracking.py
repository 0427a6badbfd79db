"""MLflow tracking on a SQLite store: one run per training job, per-epoch metrics logged in one batch.

The store defaults to ``sqlite:///<cwd>/mlruns.db`` (MLflow 3 refuses the file store) with artifacts
in ``mlartifacts/`` beside it; ``MLFLOW_TRACKING_URI`` overrides. Telemetry is off.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlruns.db'}"


class Tracker:
    """A thin MLflow run; ``enabled=False`` makes every call a no-op so training code has one path."""

    def __init__(self, experiment: str, run_name: str, enabled: bool = True) -> None:
        self.enabled = enabled
        self.run_id: str | None = None
        if not enabled:
            return
        from mlflow import MlflowClient

        uri = tracking_uri()
        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            artifacts = None
            if uri.startswith("sqlite:///"):
                artifacts = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts" / experiment).resolve().as_uri()
            exp_id = self._create_experiment(experiment, artifacts)
        else:
            exp_id = exp.experiment_id
        self.run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id

    def _create_experiment(self, name: str, artifacts: str | None) -> str:
        try:
            return self.client.create_experiment(name, artifact_location=artifacts)
        except Exception:  # noqa: BLE001 - another job created it first
            return self.client.get_experiment_by_name(name).experiment_id

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

    def finish(self, ok: bool) -> None:
        if self.enabled:
            self.client.set_terminated(self.run_id, status="FINISHED" if ok else "FAILED")
