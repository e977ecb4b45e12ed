"""Shared fixtures: a real ``mlflow server`` (sqlite + temp artifact root) for the whole session."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"  # real files in official formats, when present (never copied)

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> str:
    """URL of a tracking server started for this test session and stopped after it."""
    from tracking.server import start_server, stop_server

    root = tmp_path_factory.mktemp("mlflow-server")
    proc, url = start_server(
        f"sqlite:///{root}/mlflow.db", root / "artifacts", log_path=root / "server.log", timeout_s=180
    )
    yield url
    stop_server(proc)


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path, monkeypatch):
    """Checkpoints, downloads and the default sqlite store never land in the repo during tests."""
    monkeypatch.setenv("PIPELINE_CHECKPOINT_DIR", str(tmp_path / "checkpoints"))
    monkeypatch.setenv("PIPELINE_DATA_DIR", str(tmp_path / "data-cache"))
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)


@pytest.fixture
def tracking(mlflow_server, monkeypatch) -> str:
    """Point MLflow (in this process and in subprocesses) at the test server."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    yield mlflow_server
    while mlflow.active_run():  # a failing test must not leak an active run into the next
        mlflow.end_run("FAILED")


@contextmanager
def module_tracking(mlflow_server: str, checkpoint_dir: Path) -> Iterator[pytest.MonkeyPatch]:
    """For module-scoped fixtures: MLflow at the test server, checkpoints in ``checkpoint_dir``, no inherited run.

    What ``tracking`` and ``_isolated_dirs`` set for each test, which a module-scoped fixture cannot
    use (they are function-scoped); undone on exit. Yields the MonkeyPatch for further patches.
    """
    import mlflow

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        mp.setenv("PIPELINE_CHECKPOINT_DIR", str(checkpoint_dir))
        mp.delenv("MLFLOW_RUN_ID", raising=False)
        mp.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
        mlflow.set_tracking_uri(mlflow_server)
        yield mp


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory) -> Path:
    """A small synthetic CIFAR-100 written in the real pickle format (classes 0, 33, 41)."""
    from pipelines.data.cifar100 import write_synthetic

    root = tmp_path_factory.mktemp("cifar100")
    write_synthetic(root, per_class_train=40, per_class_test=12)
    return root


def real_data(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real data {path} not present (only in the team's workspace)")
    return SHARED_DATA


def crash_after_epoch(fit, epoch: int, message: str):
    """``fit`` wrapped so that its ``on_epoch`` hook raises ``RuntimeError(message)`` after epoch ``epoch``.

    The epoch's metrics are logged first, then the crash comes before that epoch's checkpoint:
    what a power cut mid-run leaves behind.
    """

    def crashing_fit(*args, on_epoch=None, **kw):
        def hook(done, metrics):
            on_epoch(done, metrics)
            if done == epoch:
                raise RuntimeError(message)

        return fit(*args, on_epoch=hook, **kw)

    return crashing_fit


def assert_one_epoch_runs_landed(client, experiment: str, printed: set[str], n: int) -> None:
    """Concurrent 1-epoch train runs (seeds 0..n-1): each landed once in one experiment, complete."""
    (exp,) = client.search_experiments(filter_string=f"name = '{experiment}'")  # created once
    runs = client.search_runs([exp.experiment_id], max_results=100)
    assert {r.info.run_id for r in runs} == printed and len(runs) == n  # every run landed there
    assert sorted(int(r.data.params["seed"]) for r in runs) == list(range(n))
    for run in runs:
        rid = run.info.run_id
        assert run.info.status == "FINISHED", rid
        for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "epoch_seconds"):
            assert [m.step for m in client.get_metric_history(rid, key)] == [1], (rid, key)
        for key in ("train_seconds", "seconds_per_epoch", "num_params", "epochs_done"):
            assert key in run.data.metrics, (rid, key)
        files = {f.path for f in client.list_artifacts(rid, "model")}
        assert {"model/state_dict.pt", "model/model_config.json"} <= files, rid
