"""Concurrent runs against one server land in one experiment, all FINISHED, nothing lost.

MLflow's ``set_experiment`` races between processes (an MLflow bug: runs landed in
"Default"); ``experiment_id_for`` creates the experiment once and every run passes its id.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT, assert_one_epoch_runs_landed

N = 8
TINY = ["--dataset", "digits", "--model", "simple_cnn", "--epochs", "1", "--batch-size", "256"]
TINY += ["--device", "cpu", "--precision", "fp32"]


def test_experiment_is_created_once_under_a_race(tracking):
    """N threads ask for the same new experiment at the same instant: one experiment, one id."""
    from tracking import experiment_id_for

    name = f"race-{uuid.uuid4().hex[:8]}"
    barrier = threading.Barrier(N)
    ids, errors = [], []

    def worker():
        barrier.wait()
        try:
            ids.append(experiment_id_for(name))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=worker) for _ in range(N)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(ids) == N and len(set(ids)) == 1, (ids, errors)
    assert [e.experiment_id for e in MlflowClient().search_experiments(filter_string=f"name = '{name}'")] == ids[:1]


@pytest.mark.slow
def test_eight_training_processes_at_once_share_one_experiment(tracking, tmp_path):
    name = f"concurrent-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = []
    for seed in range(N):
        log = tmp_path / f"train-{seed}"
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "pipelines", "train", *TINY, "--seed", str(seed), "--experiment", name],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=open(f"{log}.out", "w"),  # noqa: SIM115 - closed with the process
                stderr=open(f"{log}.err", "w"),  # noqa: SIM115
            )
        )
    codes = [p.wait(900) for p in procs]
    errs = {i: (tmp_path / f"train-{i}.err").read_text()[-1500:] for i, c in enumerate(codes) if c != 0}
    assert codes == [0] * N, errs
    printed = {(tmp_path / f"train-{i}.out").read_text().split("train run ")[1].split(":")[0] for i in range(N)}

    assert_one_epoch_runs_landed(MlflowClient(), name, printed, N)
