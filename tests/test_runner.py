"""One tracked-training path (``pipelines.runner``): every run that trains resumes, resyncs and uploads alike.

``train``'s own dead-server test is in tests/test_reliability.py; here a segmentation run and a
study trial lose their server mid-run, and a resume after the server is back sends what was kept
locally (pending records and the local metric file) with no step logged twice.
"""

from __future__ import annotations

import signal

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.test_reliability import _checkpoints, _logs, _popen, _steps, _unique, _wait_for_epoch

EPOCHS = 6
CPU = ["--device", "cpu", "--precision", "fp32"]
SEGMENT = [
    "segment",
    "--task",
    "binary",
    "--n-train",
    "32",
    "--n-test",
    "8",
    "--size",
    "16",
    "--base",
    "4",
    "--depth",
    "2",
    "--batch-size",
    "8",
    "--checkpoint-every",
    "1",
    "--registered-model-name",
    "none",
    *CPU,
]
STUDY = [
    "study",
    "dead-server",
    "--configs",
    "simple_cnn:lr=0.05,batch_size=128",
    "--seeds",
    "0",
    "--dataset",
    "digits",
    "--registered-model-name",
    "none",
    *CPU,
]


def _server_dies_after_epoch_2(tmp_path, args: list[str]):
    """Run ``args`` against a throw-away server that is killed after epoch 2 (training paused meanwhile)
    and started again on the same port and store; returns (url, run id, stop) with the new server up."""
    from tracking.server import start_server, stop_server

    store = tmp_path / "store"
    store.mkdir()
    backend, artifacts = f"sqlite:///{store}/mlflow.db", store / "artifacts"
    server, url = start_server(backend, artifacts, log_path=store / "server.log", timeout_s=300)
    port = int(url.rsplit(":", 1)[1])
    try:
        proc = _popen(args, tmp_path / "first", MLFLOW_TRACKING_URI=url)
        rid = _wait_for_epoch(_checkpoints(), 2, proc, tmp_path / "first")
        proc.send_signal(signal.SIGSTOP)
        stop_server(server)
        proc.send_signal(signal.SIGCONT)
        rc = proc.wait(300)
    finally:
        stop_server(server)
    err = _logs(tmp_path / "first")[1]
    assert rc == 2 and "Traceback" not in err, err[-3000:]
    assert f"tracking server {url} unreachable" in err
    assert len((_checkpoints() / rid / "metrics.jsonl").read_text().splitlines()) >= 2  # kept locally
    server, url2 = start_server(backend, artifacts, port=port, log_path=store / "server2.log", timeout_s=300)
    assert url2 == url
    return url, rid, lambda: stop_server(server)


def _resume(tmp_path, args: list[str], url: str, monkeypatch) -> MlflowClient:
    proc = _popen(args, tmp_path / "resumed", MLFLOW_TRACKING_URI=url)
    rc = proc.wait(600)
    assert rc == 0, _logs(tmp_path / "resumed")[1][-3000:]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    mlflow.set_tracking_uri(url)
    return MlflowClient()


@pytest.mark.slow
def test_segment_whose_server_died_resumes_with_every_epoch_once(tmp_path, monkeypatch):
    args = [*SEGMENT, "--epochs", str(EPOCHS), "--experiment", _unique("dead-server-segment")]
    url, rid, stop = _server_dies_after_epoch_2(tmp_path, args)
    try:
        client = _resume(tmp_path, ["segment", "--resume", rid], url, monkeypatch)
        run = client.get_run(rid)
        assert run.info.status == "FINISHED"
        for key in ("train_loss", "test_epoch_miou", "epoch_seconds"):
            assert _steps(client, rid, key) == list(range(1, EPOCHS + 1)), key  # every epoch, none twice
        assert "test_miou" in run.data.metrics
        files = {f.path for f in client.list_artifacts(rid, "checkpoints")}
        assert "checkpoints/last.pt" in files
    finally:
        stop()


@pytest.mark.slow
def test_study_trial_whose_server_died_resumes_with_every_epoch_once(tmp_path, monkeypatch):
    args = [*STUDY, "--epochs", str(EPOCHS), "--experiment", _unique("dead-server-study")]
    url, rid, stop = _server_dies_after_epoch_2(tmp_path, args)
    try:
        client = _resume(tmp_path, args, url, monkeypatch)  # the same study again: its trial resumes
        run = client.get_run(rid)
        assert run.info.status == "FINISHED" and run.data.tags["step"] == "trial"
        for key in ("train_loss", "test_acc", "epoch_seconds"):
            assert _steps(client, rid, key) == list(range(1, EPOCHS + 1)), key
        assert "test_accuracy" in run.data.metrics
        assert "checkpoints/last.pt" in {f.path for f in client.list_artifacts(rid, "checkpoints")}
    finally:
        stop()


def test_study_trial_uploads_its_checkpoint_and_weights(tracking):
    from pipelines.study import plan_study
    from pipelines.trained import load_trained
    from pipelines.trials import run_trial
    from tracking import experiment_id_for, tracked_run

    plan = plan_study("ckpt", configs="simple_cnn:lr=0.05,batch_size=128", seeds="0", epochs="1", dataset="digits")
    (spec,) = plan.trials
    exp = experiment_id_for(_unique("trial-checkpoint"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tracked_run("study-parent", exp) as parent:
            r = run_trial(spec, parent, exp, progress=False)
    finally:
        torch.set_num_threads(threads)
    client = MlflowClient()
    assert client.get_run(r.run_id).info.status == "FINISHED" and not r.reused
    assert "checkpoints/last.pt" in {f.path for f in client.list_artifacts(r.run_id, "checkpoints")}
    assert torch.load(_checkpoints() / r.run_id / "last.pt", weights_only=True)["epoch"] == 1
    load_trained(r.run_id)  # the weights were uploaded too


def test_fit_takes_keywords_only():
    import inspect

    from pipelines.trainer import fit

    params = list(inspect.signature(fit).parameters.values())
    assert params[0].name == "model"
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[1:])


def test_no_entry_point_trains_outside_the_runner():
    """Only ``pipelines.runner`` opens a training loop with tracking: no other module calls ``trainer.fit``."""
    import ast

    from tests.conftest import ROOT

    callers = set()
    for path in (ROOT / "pipelines").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            imported = isinstance(node, ast.ImportFrom) and node.module == "pipelines.trainer"
            if imported and any(a.name == "fit" for a in node.names):
                callers.add(path.relative_to(ROOT).as_posix())
    assert callers == {"pipelines/runner.py"}
