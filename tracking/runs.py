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
    # before any run exists (issue 8).
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


def ui_url(experiment_id: str | None = None, run_id: str | None = None) -> str:
    """The MLflow UI page of an experiment (or one of its runs), opening on the model-training view."""
    uri = mlflow.get_tracking_uri()
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


def _error_tag(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return f"interrupted: {exc}" if str(exc) else "interrupted"
    return _one_line(exc)


def _end(run_id: str, status: int, exc: BaseException | None) -> None:
    status_name = RunStatus.to_string(status)
    if not server_reachable():  # never spend minutes of retries on a dead server (issue 8)
        _end_offline(run_id, status_name, exc)
        return
    try:
        if exc is not None:
            client = MlflowClient()
            client.set_tag(run_id, "error", _error_tag(exc))
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
        _end_offline(run_id, status_name, exc)  # it died during the end: the run is popped already


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


def run_experiment_id(run_id: str) -> str:
    return MlflowClient().get_run(run_id).info.experiment_id


def run_data(run_id: str) -> tuple[dict[str, str], dict[str, float], dict[str, str]]:
    """(params, latest metrics, tags) of a finished run."""
    run = MlflowClient().get_run(run_id)
    return run.data.params, run.data.metrics, run.data.tags


# --- studies (issue 5) ---
# Read-side queries (search, metric history, registry look-up) and client-side run ends, for
# studies, sweeps and `compare`. Plain records out, so callers never touch MLflow entities.

from dataclasses import dataclass  # noqa: E402


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


def use_tracking_uri(uri: str) -> None:
    """Point this process at ``uri`` without ``configure``'s signal handler (safe in worker threads)."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)


def tracking_uri() -> str:
    return mlflow.get_tracking_uri()


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


# --- end studies (issue 5) ---


# --- reliability (issue 8) ---
# A tracking server that dies mid-run must neither stop training nor hang the end of a run for
# minutes nor lose anything. Once it is found unreachable (a failed metric flush, a /health probe
# at the end of a run), calls that would go to it are recorded in ``<local_run_dir>/pending.json``
# (files copied beside it) and replayed by ``python -m pipelines resync RUN_ID`` or on resume.

import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

RESYNC_HINT = "python -m pipelines resync {run_id}"
PENDING = "pending.json"
AUTH_ERRORS = ("UNAUTHENTICATED", "PERMISSION_DENIED")
_OFFLINE: dict[str, str | None] = {"reason": None}  # why the server was last found unreachable


def local_run_dir(run_id: str) -> Path:
    """A run's local folder: checkpoint, metrics.jsonl, pending.json (``$PIPELINE_CHECKPOINT_DIR/<run_id>``)."""
    return Path(os.environ.get("PIPELINE_CHECKPOINT_DIR", "checkpoints")) / run_id


def warn(message: str) -> None:
    """One ``warning:`` line on stderr, on its own line even while a progress bar is drawn."""
    from tqdm import tqdm

    tqdm.write(f"warning: {message}", file=sys.stderr)


def server_reachable(timeout_s: float = 3.0) -> bool:
    """True unless the tracking URI is http(s) and its ``/health`` does not answer within ``timeout_s``."""
    uri = mlflow.get_tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return True
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as r:
            r.read()
        return True
    except urllib.error.HTTPError:  # it answered
        return True
    except (urllib.error.URLError, OSError):
        return False


def mark_offline(reason: str) -> None:
    _OFFLINE["reason"] = reason


def mark_online() -> None:
    _OFFLINE["reason"] = None


def offline() -> bool:
    """The server was found unreachable and has not answered since: defer instead of calling it."""
    return _OFFLINE["reason"] is not None


@contextmanager
def quick_requests(timeout_s: float = 5.0) -> Iterator[None]:
    """MLflow HTTP calls inside fail at once (no retries, short timeout): for probes and ending offline."""
    keys = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update({keys[0]: "0", keys[1]: str(max(1, int(timeout_s)))})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def describe_mlflow_error(exc: BaseException) -> str | None:
    """One line for MLflow errors a user causes or can fix (missing run, credentials, dead server); else None."""
    if not isinstance(exc, MlflowException):
        return None
    uri = mlflow.get_tracking_uri()
    text = " ".join(str(exc.message).split())
    if exc.error_code in AUTH_ERRORS:
        return (
            f"tracking server {uri} refused the request ({exc.error_code}): "
            "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD for a user allowed to use it"
        )
    if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
        return text[:300]
    if any(s in text for s in ("Max retries exceeded", "Failed to establish", "timed out", "Connection refused")):
        return f"tracking server {uri} is unreachable; start it or fix MLFLOW_TRACKING_URI"
    return None


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


def _pending_file(run_id: str) -> Path:
    return local_run_dir(run_id) / PENDING


def load_pending(run_id: str) -> dict | None:
    path = _pending_file(run_id)
    return json.loads(path.read_text()) if path.is_file() else None


def _save_pending(run_id: str, rec: dict) -> None:
    path = _pending_file(run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(PENDING + ".tmp")
    tmp.write_text(json.dumps(rec, indent=1))
    os.replace(tmp, path)


def _update_pending(run_id: str, change) -> None:
    rec = load_pending(run_id) or {
        "run_id": run_id,
        "tracking_uri": mlflow.get_tracking_uri(),
        "metrics": [],
        "artifacts": [],
        "tags": {},
        "end": None,
    }
    change(rec)
    _save_pending(run_id, rec)


def defer_artifact(run_id: str, local: str | Path, artifact_dir: str | None = None) -> Path:
    """Record a file to upload later; files outside the run's local folder are copied into it first."""
    root = local_run_dir(run_id).resolve()
    local = Path(local).resolve()
    if root not in local.parents:
        dst = root / "pending" / (artifact_dir or "") / local.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(local, dst)
        local = dst
    entry = [str(local), artifact_dir]
    _update_pending(run_id, lambda r: entry in r["artifacts"] or r["artifacts"].append(entry))
    return local


def defer_text(run_id: str, text: str, artifact_file: str) -> Path:
    """Record a text artifact (JSON, report) to upload later."""
    path = local_run_dir(run_id).resolve() / "pending" / artifact_file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    parent = Path(artifact_file).parent.as_posix()
    return defer_artifact(run_id, path, None if parent == "." else parent)


def defer_metrics(run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
    ts = int(time.time() * 1000)
    rows = [[k, float(v), ts, step or 0] for k, v in metrics.items()]
    _update_pending(run_id, lambda r: r["metrics"].extend(rows))


def _end_offline(run_id: str, status_name: str, exc: BaseException | None) -> None:
    """End a run while its server is down: pop it locally, record the end, say how to finish it."""
    uri = mlflow.get_tracking_uri()
    mark_offline("unreachable at the end of a run")
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        with quick_requests(2), contextlib.suppress(Exception):  # expected to fail: the server is down
            mlflow.end_run(status_name)  # pops the run before its request, which fails at once

    def change(rec: dict) -> None:
        rec["end"] = {"status": status_name, "end_time": int(time.time() * 1000)}
        if exc is not None:
            rec["tags"]["error"] = _error_tag(exc)

    _update_pending(run_id, change)
    if exc is not None and not isinstance(exc, KeyboardInterrupt):
        defer_text(run_id, "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)), "error.txt")
    message = (
        f"tracking server {uri} is unreachable: run {run_id} ({status_name}) is kept in {local_run_dir(run_id)} "
        f"(metrics, checkpoint, outputs); when the server is back run `{RESYNC_HINT.format(run_id=run_id)}`"
    )
    if exc is None:
        raise TrackingError(message)
    warn(message)


def replay_pending(run_id: str, end: bool = True) -> dict:
    """Send what ``pending.json`` holds (metrics, files, tags, and with ``end`` the run's end); remove it.

    Without ``end`` (a resume), the recorded end is dropped: the resumed run ends itself.
    Returns counts: ``{"metrics": n, "artifacts": n, "status": str | None}``.
    """
    from mlflow.entities import Metric

    rec = load_pending(run_id)
    if rec is None:
        return {"metrics": 0, "artifacts": 0, "status": None}
    client = MlflowClient()
    metrics = [Metric(k, v, ts, step) for k, v, ts, step in rec["metrics"]]
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i : i + 1000])
    rec["metrics"] = []
    _save_pending(run_id, rec)  # a failure below never sends the metrics twice
    uploaded = 0
    for local, artifact_dir in rec["artifacts"]:
        if Path(local).is_file():
            client.log_artifact(run_id, local, artifact_dir)
            uploaded += 1
    for k, v in rec["tags"].items():
        client.set_tag(run_id, k, v)
    status = None
    if end and rec.get("end"):
        status = rec["end"]["status"]
        client.set_terminated(run_id, status, end_time=rec["end"]["end_time"])
    _pending_file(run_id).unlink()
    shutil.rmtree(local_run_dir(run_id) / "pending", ignore_errors=True)
    return {"metrics": len(metrics), "artifacts": uploaded, "status": status}


# --- end reliability (issue 8) ---
