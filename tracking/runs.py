"""Run lifecycle: every run ends FINISHED, FAILED (exception) or KILLED (Ctrl-C / SIGTERM).

MLflow alone leaves a run RUNNING when the process is killed, and its ``atexit`` hook marks
runs FINISHED even after a crash outside a ``with`` block; ``tracked_run`` closes both gaps.
"""

from __future__ import annotations

import os
import signal
import traceback
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import mlflow
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # MLflow's own default, so `mlflow ui` here shows the runs
# Fail fast against a dead server: MLflow's defaults retry for minutes (PITFALLS: ~246 s).
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}


class TrackingError(RuntimeError):
    """The tracking server cannot be used (user-facing, one line)."""


class RunKilled(BaseException):
    """Raised in the main thread on SIGTERM so the run can end KILLED after a checkpoint."""


def _raise_killed(signum, _frame):
    raise RunKilled(f"received signal {signal.Signals(signum).name}")


def configure() -> str:
    """Set defaults (tracking URI, HTTP retries), install the SIGTERM handler, check the server."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    mlflow.set_tracking_uri(uri)
    signal.signal(signal.SIGTERM, _raise_killed)
    if uri.startswith(("http://", "https://")):
        check_server(uri)
    return uri


def check_server(uri: str, timeout_s: float = 10) -> None:
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as r:
            r.read()
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise TrackingError(
            f"tracking server {uri} is unreachable ({reason}); start it or fix MLFLOW_TRACKING_URI"
        ) from None


def experiment_id_for(name: str | None) -> str | None:
    """Experiment id by name, created once if missing (race-safe: never ``set_experiment``).

    Under ``mlflow run`` the experiment was chosen already: ``MLFLOW_EXPERIMENT_ID`` wins.
    """
    if os.environ.get("MLFLOW_EXPERIMENT_ID"):
        return os.environ["MLFLOW_EXPERIMENT_ID"]
    if not name:
        return None
    client = MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:  # another process created it between our get and create
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def active_run_id() -> str:
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("no active MLflow run")
    return run.info.run_id


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:500]


@contextmanager
def tracked_run(
    run_name: str,
    experiment_id: str | None = None,
    nested: bool = False,
    tags: dict[str, str] | None = None,
    run_id: str | None = None,
    description: str | None = None,
) -> Iterator[str]:
    """Start (or resume, with ``run_id``) a run and always end it with the right status.

    Outside a nested run, ``MLFLOW_RUN_ID`` (set by ``mlflow run``) is attached to, so the run
    MLflow created for the entry point is the one we fill and end. Yields the run id.
    """
    parent = mlflow.active_run()
    if run_id is None and not nested and parent is None:
        # Attach once, then hide the variable: start_run() reads it too and would make every
        # later "new" child run resume this one.
        run_id = os.environ.pop("MLFLOW_RUN_ID", None)
    if nested and experiment_id is None and parent is not None:
        experiment_id = parent.info.experiment_id  # children live beside their parent
    run = mlflow.start_run(
        run_id=run_id,
        experiment_id=None if run_id else experiment_id,
        run_name=None if run_id and not nested else run_name,
        nested=nested,
        tags=tags,
        description=description,
    )
    rid = run.info.run_id
    if run_id and tags:
        mlflow.set_tags(tags)
    if run_id:
        mlflow.set_tag("mlflow.runName", run_name)
    try:
        yield rid
    except (KeyboardInterrupt, RunKilled) as e:
        _end(rid, RunStatus.KILLED, e)
        raise
    except BaseException as e:
        _end(rid, RunStatus.FAILED, e)
        raise
    else:
        _end(rid, RunStatus.FINISHED, None)


def _end(run_id: str, status: int, exc: BaseException | None) -> None:
    status_name = RunStatus.to_string(status)
    try:
        if exc is not None:
            client = MlflowClient()
            client.set_tag(run_id, "error", _one_line(exc) if not isinstance(exc, KeyboardInterrupt) else "interrupted")
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            client.log_text(run_id, text, "error.txt")
    except Exception:  # the server may be the reason we fail; still try to end the run
        pass
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        mlflow.end_run(status_name)
    else:
        MlflowClient().set_terminated(run_id, status_name)


def fail_run(run_id: str, message: str) -> None:
    """End a run that exists already (``mlflow run`` creates it first) FAILED with ``message``."""
    client = MlflowClient()
    client.set_tag(run_id, "error", message)
    client.set_terminated(run_id, "FAILED")


def log_params(params: dict) -> None:
    """All params in one request (values stringified, capped at MLflow's 6000 chars)."""
    mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})


def set_tags(tags: dict) -> None:
    mlflow.set_tags({k: str(v) for k, v in tags.items()})


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def run_experiment_id(run_id: str) -> str:
    return MlflowClient().get_run(run_id).info.experiment_id


def run_data(run_id: str) -> tuple[dict[str, str], dict[str, float], dict[str, str]]:
    """(params, latest metrics, tags) of a finished run."""
    run = MlflowClient().get_run(run_id)
    return run.data.params, run.data.metrics, run.data.tags
