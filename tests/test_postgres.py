"""The tracking server on a real PostgreSQL backend with proxied artifacts.

A throw-away cluster (``tracking.postgres.TempCluster``: Debian's initdb/pg_ctl in a temp dir, as the ``postgres``
user, on a free 127.0.0.1 port) backs an ``mlflow server``; the end-to-end pipeline runs against it; the server
(and PostgreSQL itself) restart and everything is still there; eight training processes at once succeed against
it, timed beside the same eight against the sqlite session server. Installs nothing: ``.ci/run`` installs
Debian's ``postgresql`` package; without it (or without psycopg) the module is skipped with the reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import onnxruntime as ort
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT, assert_one_epoch_runs_landed
from tracking.postgres import TempCluster, missing_requirements, split_password
from tracking.server import start_server, stop_server

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(missing_requirements() is not None, reason=f"PostgreSQL test: {missing_requirements()}"),
]

MODEL = "pg-model"
CONCURRENT = 8


class PgServer:
    """An mlflow server on the cluster; ``restart()`` stops it (and PostgreSQL) and starts it on the same port."""

    def __init__(self, cluster: TempCluster, root: Path):
        self.cluster, self.root = cluster, root
        self.artifacts = root / "artifacts"
        self.uri, password = split_password(cluster.uri)  # the password goes in PGPASSWORD, as the CLI does
        # No GenAI job runner (3 more mlflow processes to start, unused here): starts and restarts faster.
        self.env = {"PGPASSWORD": password, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.proc, self.url = self._start(None)

    def _start(self, port):
        return start_server(
            self.uri, self.artifacts, port=port, env=self.env, log_path=self.root / "server.log", timeout_s=180
        )

    def restart(self, with_postgres: bool = True) -> None:
        port = int(self.url.rsplit(":", 1)[1])
        stop_server(self.proc)
        if with_postgres:
            self.cluster.restart()
        self.proc, url = self._start(port)
        assert url == self.url

    def stop(self) -> None:
        stop_server(self.proc)


@pytest.fixture(scope="module")
def pg(tmp_path_factory):
    cluster = TempCluster().start()
    root = cluster.root
    server = None
    try:
        server = PgServer(cluster, tmp_path_factory.mktemp("pg-server"))
        yield server
    finally:
        if server is not None:
            server.stop()
        cluster.stop()
    assert not root.exists(), f"cluster folder {root} left behind"


@pytest.fixture
def pg_tracking(pg, monkeypatch):
    from mlflow.tracking._tracking_service import utils

    before = utils._tracking_uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", pg.url)
    mlflow.set_tracking_uri(pg.url)
    yield pg
    while mlflow.active_run():
        mlflow.end_run("FAILED")
    mlflow.set_tracking_uri(before)  # monkeypatch then restores the environment variable


def _snapshot(client: MlflowClient, experiment: str) -> dict:
    """Everything the e2e test asserts, as plain data (compared before and after the restart)."""
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    by_step = {r.data.tags.get("step"): r for r in runs}
    train, ev = by_step["train"], by_step["evaluate"]
    mv = client.get_model_version_by_alias(MODEL, "champion")
    return {
        "runs": sorted((r.info.run_id, r.data.tags.get("step"), r.info.status) for r in runs),
        "metrics": {step: r.data.metrics for step, r in by_step.items()},
        "params": {step: r.data.params for step, r in by_step.items()},
        "test_acc": [(m.step, m.value) for m in client.get_metric_history(train.info.run_id, "test_acc")],
        "reports": sorted(f.path for f in client.list_artifacts(ev.info.run_id, "reports")),
        "train_files": sorted(f.path for f in client.list_artifacts(train.info.run_id)),
        "champion": (mv.name, mv.version, mv.run_id, mv.source, mv.tags.get("train_run_id")),
    }


def _champion_logits(tmp: Path, x: np.ndarray) -> np.ndarray:
    out = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL}@champion", dst_path=str(tmp)))
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(["output"], {"input": x})[0]


def test_pipeline_on_postgres_survives_a_restart(pg_tracking, cifar_dir, tmp_path):
    from pipelines import main
    from pipelines.config import data_config, export_config, train_config
    from pipelines.data import load_dataset

    cfg = train_config(model="pooling_cnn", pooling="stride", epochs="2", device="cpu", precision="fp32")
    result = main.run(data_config("cifar100", str(cifar_dir), "default"), cfg, export_config(MODEL, "1e-4"), "pg-e2e")
    client = MlflowClient()
    exp = client.get_experiment_by_name("pg-e2e")
    (parent,) = client.search_runs([exp.experiment_id], "tags.step = 'main'")
    assert parent.info.run_id == result.run_id and parent.info.status == "FINISHED"
    children = {
        r.data.tags["step"]: r
        for r in client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    }
    assert set(children) == {"prep", "train", "evaluate", "export_onnx"}
    assert all(r.info.status == "FINISHED" for r in children.values())
    assert [m.step for m in client.get_metric_history(children["train"].info.run_id, "test_acc")] == [1, 2]
    for key in ("test_accuracy", "train_accuracy", "test_macro_f1", "num_params", "inference_ms_per_image"):
        assert key in children["evaluate"].data.metrics, key
    assert parent.data.metrics["test_accuracy"] == children["evaluate"].data.metrics["test_accuracy"]
    assert "reports/classification_report_test.json" in {
        f.path for f in client.list_artifacts(children["evaluate"].info.run_id, "reports")
    }
    mv = client.get_model_version_by_alias(MODEL, "champion")
    assert mv.tags["train_run_id"] == children["train"].info.run_id and result.export.champion is True
    # Proxied artifacts: the files sit in the server's --artifacts-destination, the client never saw that folder.
    assert any(pg_tracking.artifacts.rglob("classification_report_test.json"))
    assert any(pg_tracking.artifacts.rglob("model.onnx"))
    x = load_dataset("cifar100", cifar_dir).x_test.astype(np.float32)
    logits = _champion_logits(tmp_path / "before", x)
    assert logits.shape == (len(x), 3)

    before = _snapshot(client, "pg-e2e")
    t0 = time.perf_counter()
    pg_tracking.restart(with_postgres=True)  # mlflow server down, PostgreSQL down, both up on the same data
    print(f"\nserver + PostgreSQL restart: {time.perf_counter() - t0:.1f} s")
    client = MlflowClient()
    assert _snapshot(client, "pg-e2e") == before
    np.testing.assert_array_equal(_champion_logits(tmp_path / "after", x), logits)


# ---------------------------------------------------------------- 8 runs at once

# The case of tests/test_concurrency.py, as a function of the server URL so both backends run it.
TRAIN = ["train", "--dataset", "digits", "--model", "simple_cnn", "--epochs", "1", "--batch-size", "256"]
TRAIN += ["--device", "cpu", "--precision", "fp32"]


def run_concurrently(url: str, experiment: str, n: int, log_dir: Path, timeout_s: float = 400) -> float:
    """``n`` training processes against ``url`` at once, all in one experiment; asserts every one FINISHED with
    its metrics, params and files. Returns the wall time from the first start to the last exit."""
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": url, "OMP_NUM_THREADS": "1"}
    env["MKL_NUM_THREADS"] = "1"
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "pipelines", *TRAIN, "--seed", str(i), "--experiment", experiment],
            cwd=ROOT,
            env=env,
            stdout=open(log_dir / f"{i}.out", "w"),  # noqa: SIM115 - closed with the process
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        for i in range(n)
    ]
    try:
        codes = [p.wait(timeout=max(1, timeout_s - (time.perf_counter() - t0))) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stdout and p.stdout.close()
    seconds = time.perf_counter() - t0
    failed = {i: (log_dir / f"{i}.out").read_text()[-1500:] for i, c in enumerate(codes) if c != 0}
    assert not failed, failed

    printed = {(log_dir / f"{i}.out").read_text().split("train run ")[1].split(":")[0] for i in range(n)}

    assert_one_epoch_runs_landed(MlflowClient(url), experiment, printed, n)
    return seconds


@pytest.mark.slow  # 16 training processes: ~1 min on 2 idle cores, several on a loaded machine
def test_eight_concurrent_runs_on_postgres_and_sqlite(pg, mlflow_server, tmp_path):
    pg_s = run_concurrently(pg.url, "pg-concurrent", CONCURRENT, tmp_path / "pg")
    sqlite_s = run_concurrently(mlflow_server, "sqlite-concurrent", CONCURRENT, tmp_path / "sqlite")
    print(
        f"\n{CONCURRENT} concurrent train runs (1 epoch, digits, simple_cnn; wall time from first start to last exit): "
        f"PostgreSQL {pg_s:.1f} s, sqlite {sqlite_s:.1f} s ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})"
    )
