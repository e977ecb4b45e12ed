"""Read-side queries and ends of runs from outside them: plain records out, so callers never touch MLflow entities."""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tracking.errors import AUTH_ERRORS, TrackingError, describe_mlflow_error


def run_experiment_id(run_id: str) -> str:
    return MlflowClient().get_run(run_id).info.experiment_id


def run_data(run_id: str) -> tuple[dict[str, str], dict[str, float], dict[str, str]]:
    """(params, latest metrics, tags) of a finished run."""
    run = MlflowClient().get_run(run_id)
    return run.data.params, run.data.metrics, run.data.tags


@dataclass
class RunRecord:
    run_id: str
    experiment_id: str
    status: str  # RUNNING | FINISHED | FAILED | KILLED | SCHEDULED
    name: str
    start_time: int  # ms since epoch
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]


def _record(run) -> RunRecord:
    return RunRecord(
        run.info.run_id,
        run.info.experiment_id,
        run.info.status,
        run.data.tags.get("mlflow.runName", run.info.run_name or ""),
        run.info.start_time or 0,
        dict(run.data.params),
        dict(run.data.metrics),
        dict(run.data.tags),
    )


def find_experiment_id(name: str) -> str | None:
    """Id of an existing experiment (never creates one)."""
    exp = MlflowClient().get_experiment_by_name(name)
    return exp.experiment_id if exp is not None else None


def find_runs(
    experiment_ids: list[str], filter_string: str = "", order_by: list[str] | None = None, max_results: int = 5000
) -> list[RunRecord]:
    """Runs matching an MLflow search filter, newest first unless ``order_by`` says otherwise."""
    runs = MlflowClient().search_runs(
        experiment_ids, filter_string, max_results=max_results, order_by=order_by or ["attributes.start_time DESC"]
    )
    return [_record(r) for r in runs]


def get_run_record(run_id: str) -> RunRecord | None:
    try:
        return _record(MlflowClient().get_run(run_id))
    except MlflowException:
        return None


def metric_history(run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of every logged value of ``key``, by step."""
    return sorted((m.step, m.value) for m in MlflowClient().get_metric_history(run_id, key))


def end_run_as(run_id: str, status: str, tags: dict | None = None) -> None:
    """Set tags on and end a run from outside it (e.g. one whose worker process was stopped)."""
    client = MlflowClient()
    for k, v in (tags or {}).items():
        client.set_tag(run_id, k, str(v))
    client.set_terminated(run_id, status)


def require_run(run_id: str, step: str | tuple[str, ...] | None = None):
    """The run ``run_id`` (with ``step``: tagged as that step / one of them), else a one-line TrackingError.

    Read-only: no run is created, so a wrong id given to a step fails before that step's run exists.
    """
    rid = (run_id or "").strip()
    if not rid:
        raise TrackingError("run id is empty")
    try:
        run = MlflowClient().get_run(rid)
    except MlflowException as e:
        if e.error_code in AUTH_ERRORS or "unreachable" in (describe_mlflow_error(e) or ""):
            raise TrackingError(describe_mlflow_error(e)) from None
        raise TrackingError(f"no run {rid!r} on tracking server {mlflow.get_tracking_uri()}") from None
    got = run.data.tags.get("step")
    steps = (step,) if isinstance(step, str) else step
    if steps and got not in steps:
        raise TrackingError(f"run {rid} is a {got or 'untagged'} run, not a {' or '.join(steps)} run")
    return run


def set_run_status(run_id: str, status: str, error: str | None = None) -> None:
    """End a run from outside it (one left RUNNING by a killed process), with an ``error`` tag if given."""
    client = MlflowClient()
    if error:
        client.set_tag(run_id, "error", error)
    client.set_terminated(run_id, status)
