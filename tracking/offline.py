"""Offline buffering: a tracking server that dies mid-run loses nothing.

Once the server is found unreachable (a failed metric flush, a ``/health`` probe at the end of a
run), calls that would go to it are recorded in ``<local_run_dir>/pending.json`` (files copied
beside it) and replayed by ``python -m pipelines resync RUN_ID`` or on resume.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from tracking.errors import TrackingError, error_tag

RESYNC_HINT = "python -m pipelines resync {run_id}"
PENDING = "pending.json"
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


def end_offline(run_id: str, status_name: str, exc: BaseException | None) -> None:
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
            rec["tags"]["error"] = error_tag(exc)

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
