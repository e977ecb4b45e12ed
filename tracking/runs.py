"""Run lifecycle: every run ends FINISHED, FAILED (exception) or KILLED (Ctrl-C / SIGTERM).

MLflow alone leaves a run RUNNING when the process is killed, and its ``atexit`` hook marks
runs FINISHED even after a crash outside a ``with`` block; ``tracked_run`` closes both gaps.
"""

from __future__ import annotations

import contextlib
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

from tracking.errors import AUTH_ERRORS, RunKilled, TrackingError, describe_mlflow_error, error_tag
from tracking.offline import defer_metrics, end_offline, mark_online, offline, quick_requests, server_reachable

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # MLflow's own default, so `mlflow ui` here shows the runs
# Fail fast against a dead server: MLflow's defaults retry for minutes (see the README's Reliability).
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}


def _raise_killed(signum, _frame):
    raise RunKilled(f"received signal {signal.Signals(signum).name}")


def configure() -> str:
    """Set defaults (tracking URI, HTTP retries), install the SIGTERM handler, check the server.

    A sqlite store is created, migrated or repaired here under a file lock (``tracking.store``):
    MLflow does that unlocked in whichever process opens a fresh store first, and concurrent
    first uses break it.
    """
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # Model/checkpoint downloads are small; a bar per download would bury the one-line messages.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow's own "View run" links open the GenAI overview; commands print training-view links instead.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    mlflow.set_tracking_uri(uri)
    signal.signal(signal.SIGTERM, _raise_killed)
    if uri.startswith(("http://", "https://")):
        check_server(uri)
    elif uri.startswith("sqlite:"):
        from tracking.store import ensure_store

        ensure_store(uri)
    return uri


def check_server(uri: str, timeout_s: float = 10) -> None:
    """``/health`` answers within ``timeout_s`` and an API call is accepted (credentials), else TrackingError."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as r:
            r.read()
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise TrackingError(
            f"tracking server {uri} is unreachable ({reason}); start it or fix MLFLOW_TRACKING_URI"
        ) from None
    # /health is open on an auth-enabled server: one cheap API call finds missing credentials
    # before any run exists.
    try:
        with quick_requests(timeout_s):
            MlflowClient(uri).search_experiments(max_results=1)
    except MlflowException as e:
        message = describe_mlflow_error(e)
        if message and e.error_code in AUTH_ERRORS:
            raise TrackingError(message) from None


EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # the UI's model-training kind
UI_VIEW = "workflowType=machine_learning"  # the MLflow UI opens on its training view, not GenAI's
LOCAL_UI = "http://127.0.0.1:5000"  # `make server` / `mlflow ui` for a local store
STARTED: list[str] = []  # top-level runs this process started, in order (linked after each command)


def ui_url(experiment_id: str | None = None, run_id: str | None = None, base: str | None = None) -> str:
    """The MLflow UI page of the experiments, an experiment or one of its runs, on the model-training view.

    ``base``: the server's URL (default: the tracking URI when it is a server, else ``LOCAL_UI``).
    """
    uri = base or mlflow.get_tracking_uri()
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else LOCAL_UI
    if experiment_id is None:
        return f"{base}/#/experiments?{UI_VIEW}"
    page = f"/runs/{run_id}" if run_id else ""
    return f"{base}/#/experiments/{experiment_id}{page}?{UI_VIEW}"


def run_url(run_id: str) -> str:
    return ui_url(MlflowClient().get_run(run_id).info.experiment_id, run_id)


def _mark_experiment(experiment_id: str) -> None:
    """Tag the experiment as model development (once), so MLflow treats it as a training experiment."""
    client = MlflowClient()
    key, value = next(iter(EXPERIMENT_KIND.items()))
    with contextlib.suppress(MlflowException):
        if client.get_experiment(experiment_id).tags.get(key) != value:
            client.set_experiment_tag(experiment_id, key, value)


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
        return client.create_experiment(name, tags=EXPERIMENT_KIND)
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


def parent_run_id() -> str | None:
    """The run the active run is nested in (``mlflow.parentRunId``), None for a top-level run."""
    run = mlflow.active_run()
    return run.data.tags.get("mlflow.parentRunId") if run is not None else None


@contextmanager
def tracked_run(
    run_name: str,
    experiment_id: str | None = None,
    nested: bool = False,
    tags: dict[str, str] | None = None,
    run_id: str | None = None,
    description: str | None = None,
    system_metrics: bool = False,
) -> Iterator[str]:
    """Start (or resume, with ``run_id``) a run and always end it with the right status.

    Outside a nested run, ``MLFLOW_RUN_ID`` (set by ``mlflow run``) is attached to, so the run
    MLflow created for the entry point is the one we fill and end. ``system_metrics``: CPU,
    memory (and GPU) sampled by MLflow's own monitor while the run is open. Yields the run id.
    """
    parent = mlflow.active_run()
    resuming = run_id is not None  # our own resume: its environment params are logged already
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
        log_system_metrics=system_metrics,
    )
    rid = run.info.run_id
    mark_online()  # start_run answered
    if resuming and run.data.tags.get("error"):  # an interrupted run continues: its old error is history
        mlflow.set_tag("previous_error", run.data.tags["error"])
        MlflowClient().delete_tag(rid, "error")
    if run_id and tags:
        mlflow.set_tags(tags)
    if run_id:
        mlflow.set_tag("mlflow.runName", run_name)
    if not resuming:
        from tracking.env import environment_params

        # versions, CPU/GPU, git commit: tags, so the compare view's parameter table holds hyper-parameters only
        set_tags(environment_params())
    if not nested:
        _mark_experiment(run.info.experiment_id)
        STARTED.append(rid)
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
    if not server_reachable():  # never spend minutes of retries on a dead server
        end_offline(run_id, status_name, exc)
        return
    try:
        if exc is not None:
            client = MlflowClient()
            client.set_tag(run_id, "error", error_tag(exc))
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            client.log_text(run_id, text, "error.txt")
    except Exception:  # the server may be the reason we fail; still try to end the run
        pass
    active = mlflow.active_run()
    try:
        if active is not None and active.info.run_id == run_id:
            mlflow.end_run(status_name)
        else:
            MlflowClient().set_terminated(run_id, status_name)
    except Exception:
        if server_reachable():
            raise
        end_offline(run_id, status_name, exc)  # it died during the end: the run is popped already


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


def log_metrics(metrics: dict[str, float], step: int | None = None, model_id: str | None = None, dataset=None) -> None:
    """Metrics of the active run; with ``model_id`` (and ``dataset``) also linked to that LoggedModel."""
    run = mlflow.active_run()
    if offline() and run is not None:  # the server is known to be down: keep them for `resync`
        defer_metrics(run.info.run_id, metrics, step)
        return
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step, model_id=model_id, dataset=dataset)


def use_tracking_uri(uri: str) -> None:
    """Point this process at ``uri`` without ``configure``'s signal handler (safe in worker threads)."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)


def tracking_uri() -> str:
    return mlflow.get_tracking_uri()
