"""Run lifecycle, batched metrics and the champion rule, against the real test server."""

from __future__ import annotations

import json
import threading
import time

import pytest
from mlflow.tracking import MlflowClient

from tracking import RunKilled, experiment_id_for, tracked_run
from tracking.metrics import MetricLogger, resync


def _status(run_id: str) -> str:
    return MlflowClient().get_run(run_id).info.status


def test_statuses(tracking):
    exp = experiment_id_for("lifecycle")
    with tracked_run("ok", exp) as ok:
        pass
    assert _status(ok) == "FINISHED"

    ids = {}
    with pytest.raises(ZeroDivisionError), tracked_run("crash", exp) as ids["crash"]:
        1 / 0  # noqa: B018
    assert _status(ids["crash"]) == "FAILED"
    tags = MlflowClient().get_run(ids["crash"]).data.tags
    assert tags["error"] == "ZeroDivisionError: division by zero"
    assert "error.txt" in [a.path for a in MlflowClient().list_artifacts(ids["crash"])]

    for exc in (KeyboardInterrupt, RunKilled):
        with pytest.raises(exc), tracked_run("killed", exp) as ids["killed"]:
            raise exc()
        assert _status(ids["killed"]) == "KILLED"


def test_child_failure_fails_the_parent(tracking):
    exp = experiment_id_for("nested")
    ids = {}
    with (
        pytest.raises(RuntimeError),
        tracked_run("parent", exp) as ids["parent"],
        tracked_run("child", nested=True) as ids["child"],
    ):
        raise RuntimeError("step broke")
    assert _status(ids["parent"]) == "FAILED" and _status(ids["child"]) == "FAILED"
    child = MlflowClient().get_run(ids["child"])
    assert child.data.tags["mlflow.parentRunId"] == ids["parent"]
    assert child.info.experiment_id == exp  # children live beside their parent


def test_experiment_id_is_stable(tracking):
    assert experiment_id_for("same-name") == experiment_id_for("same-name")


def test_metric_logger_batches_and_keeps_a_local_copy(tracking, tmp_path, monkeypatch):
    calls = []
    with tracked_run("metrics", experiment_id_for("metrics")) as rid:
        logger = MetricLogger(rid, tmp_path / "m.jsonl", flush_every_s=3600)
        original = logger._client.log_batch
        monkeypatch.setattr(logger._client, "log_batch", lambda *a, **k: calls.append(1) or original(*a, **k))
        for step in range(1, 301):
            logger.log({"a": step * 1.0, "b": -step, "c": 0.5, "d": 1, "e": 2}, step)  # 1,500 values
        assert calls == []  # nothing sent until a flush
        assert logger.flush()
    assert len(calls) == 2  # 1,500 values in chunks of 1,000: two requests, not 1,500
    history = MlflowClient().get_metric_history(rid, "a")
    assert [m.step for m in history] == list(range(1, 301))
    rows = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert len(rows) == 300 and rows[-1]["a"] == 300.0


def test_metric_logger_sends_in_the_background(tracking, tmp_path, monkeypatch):
    """A slow server does not stall training: periodic sends run on the sender thread, flush() waits."""
    calls = []
    with tracked_run("metrics-bg", experiment_id_for("metrics")) as rid:
        logger = MetricLogger(rid, tmp_path / "m.jsonl", flush_every_s=0)
        original = logger._client.log_batch

        def slow_log_batch(*a, **k):
            time.sleep(0.5)
            calls.append(threading.current_thread().name)
            return original(*a, **k)

        monkeypatch.setattr(logger._client, "log_batch", slow_log_batch)
        t0 = time.monotonic()
        for step in range(1, 11):
            logger.log({"a": float(step)}, step)
        assert time.monotonic() - t0 < 0.4  # ten log() calls, none waited for a 0.5 s request
        assert logger.flush()
    assert calls[0].startswith("metric-sender")  # the first send went to the background
    assert calls[-1] == threading.current_thread().name  # flush() sends what is left itself
    assert [m.step for m in MlflowClient().get_metric_history(rid, "a")] == list(range(1, 11))


def test_resync_sends_only_what_is_missing(tracking, tmp_path):
    local = tmp_path / "m.jsonl"
    with tracked_run("resync", experiment_id_for("metrics")) as rid:
        offline = MetricLogger(None, local)  # tracking off: local file only, as while the server is down
        for step in range(1, 6):
            offline.log({"loss": 1.0 / step}, step)
    assert resync(rid, local) == 5
    assert resync(rid, local) == 0
    assert len(MlflowClient().get_metric_history(rid, "loss")) == 5
