"""Params are logged exactly as `mlflow run` logged them, so any spelling of a value goes through."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from tests.test_e2e import MLFLOW_RUN, _run

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_mlflow_run_accepts_any_spelling_of_a_number(tracking):
    name = "e2e-raw-spelling"
    proc = _run(
        [
            *MLFLOW_RUN,
            "-e",
            "train",
            "--experiment-name",
            name,
            *("-P", "dataset=digits", "-P", "epochs=1", "-P", "lr=5e-3", "-P", "val_fraction=0.10"),
            *("-P", "device=cpu", "-P", "system_metrics=false"),
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["lr"] == "5e-3" and params["val_fraction"] == "0.10"  # as given, not 0.005 / 0.1
    assert float(params["recipe.lr"]) == 0.005  # the value used, under its own key
    assert "val_acc" in run.data.metrics  # 0.10 was parsed: a holdout exists
