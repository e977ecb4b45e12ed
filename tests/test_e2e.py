"""End to end through ``mlflow run`` and the CLI, against the real test tracking server."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT

pytestmark = pytest.mark.e2e


def _run(cmd: list[str], env_extra: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    # `mlflow run` starts the entry point with plain `python`: the one of this venv.
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": path, **(env_extra or {})}
    return subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


MLFLOW_RUN = [sys.executable, "-m", "mlflow", "run", ".", "--env-manager", "local"]  # no conda here


def _children(client: MlflowClient, parent) -> dict[str, object]:
    runs = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    return {r.data.tags["step"]: r for r in runs}


def test_mlflow_run_main_end_to_end(tracking, cifar_dir, tmp_path):
    name = "e2e-cifar"
    proc = _run(
        [
            *MLFLOW_RUN,
            "--experiment-name",
            "e2e",
            "-P",
            f"data_dir={cifar_dir}",
            "-P",
            "pooling=avg",
            "-P",
            "epochs=2",
            "-P",
            f"registered_model_name={name}",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient()
    exp = client.get_experiment_by_name("e2e")
    (parent,) = client.search_runs([exp.experiment_id], "tags.step = 'main'")
    assert parent.info.status == "FINISHED"
    assert parent.data.params["pooling"] == "avg" and parent.data.params["epochs"] == "2"
    assert parent.data.tags["mlflow.runName"] == "main-avg-s0"
    children = _children(client, parent)
    assert set(children) == {"prep", "train", "evaluate", "export_onnx"}
    assert all(r.info.status == "FINISHED" for r in children.values())

    train = children["train"]
    assert train.data.params["recipe.lr"] == "0.005" and train.data.tags["env.torch"].startswith("2.13")
    history = client.get_metric_history(train.info.run_id, "test_acc")
    assert [m.step for m in history] == [1, 2]
    ev = children["evaluate"]
    for key in (
        "test_accuracy",
        "test_macro_f1",
        "train_accuracy",
        "overfit_gap",
        "inference_ms_per_image",
        "train_seconds",
        "seconds_per_epoch",
        "num_params",
    ):
        assert key in ev.data.metrics, key
    assert ev.data.metrics["num_params"] == 33219
    files = {f.path for f in client.list_artifacts(ev.info.run_id, "reports")}
    assert {
        "reports/classification_report_test.json",
        "reports/classification_report_train.json",
        "reports/classification_report_test_table.json",
    } <= files
    assert parent.data.metrics["test_accuracy"] == ev.data.metrics["test_accuracy"]

    # The registered model: champion alias, downloadable, same predictions as the logged PyTorch model.
    mv = client.get_model_version_by_alias(name, "champion")
    out = tmp_path / "out"
    dl = _run(
        [sys.executable, "-m", "mlflow", "artifacts", "download", "-u", f"models:/{name}@champion", "-d", str(out)]
    )
    assert dl.returncode == 0, dl.stderr[-2000:]
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    from pipelines.data import load_dataset
    from pipelines.trained import load_trained

    ds = load_dataset("cifar100", cifar_dir)
    model, _ = load_trained(mv.tags["train_run_id"])
    x = ds.x_test.astype(np.float32)
    onnx_logits = session.run(["output"], {"input": x})[0]
    torch_logits = model(torch.from_numpy(x)).detach().numpy()
    assert np.abs(onnx_logits - torch_logits).max() < 1e-4
    assert (onnx_logits.argmax(1) == torch_logits.argmax(1)).all()


def test_bad_parameter_under_mlflow_run_fails_the_run_with_one_line(tracking):
    proc = _run(
        [
            *MLFLOW_RUN,
            "--experiment-name",
            "e2e-bad",
            "-P",
            "pooling=median",
        ]
    )
    assert proc.returncode != 0
    assert "error: pooling must be one of stride, max, avg; got 'median'" in proc.stderr
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("e2e-bad").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    assert "pooling must be one of" in runs[0].data.tags["error"]


def test_steps_chain_by_run_id_on_digits(tracking):
    """Each step runs alone, taking the previous step's run id (here on sklearn's real digits)."""
    cli = [sys.executable, "-m", "pipelines"]
    train = _run([*cli, "train", "--dataset", "digits", "--epochs", "3", "--experiment", "steps", "--lr", "0.05"])
    assert train.returncode == 0, train.stderr[-2000:]
    train_id = train.stdout.split("train run ")[1].split(":")[0]
    ev = _run([*cli, "evaluate", "--train-run-id", train_id])
    assert ev.returncode == 0, ev.stderr[-2000:]
    client = MlflowClient()
    (ev_run,) = client.search_runs([client.get_experiment_by_name("steps").experiment_id], "tags.step = 'evaluate'")
    assert ev_run.data.metrics["test_accuracy"] > 0.5  # 3 epochs on real digits: far above 0.1 chance
    ex = _run(
        [
            *cli,
            "export_onnx",
            "--train-run-id",
            train_id,
            "--eval-run-id",
            ev_run.info.run_id,
            "--registered-model-name",
            "digits-cnn",
        ]
    )
    assert ex.returncode == 0, ex.stderr[-2000:]
    mv = client.get_model_version_by_alias("digits-cnn", "champion")
    assert float(mv.tags["test_accuracy"]) == pytest.approx(ev_run.data.metrics["test_accuracy"], abs=1e-6)


@pytest.mark.slow
def test_documented_special_values_go_through_mlflow_run(tracking):
    """none, default, auto and an empty data_dir in one `main` run: `mlflow run` logs each param as given
    (shell-quoted: an empty one is '') before our code runs, and MLflow refuses to change a logged param."""
    special = ["registered_model_name=none", "classes=default", "lr_schedule=none"]  # data_dir "", recipe auto
    proc = _run([*MLFLOW_RUN, "--experiment-name", "e2e-special", "-P", "dataset=digits", "-P", "epochs=1"]
                + [a for p in special for a in ("-P", p)])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient()
    (parent,) = client.search_runs([client.get_experiment_by_name("e2e-special").experiment_id], "tags.step = 'main'")
    assert parent.info.status == "FINISHED"
    logged = [parent.data.params[k] for k in ("registered_model_name", "classes", "lr_schedule", "data_dir", "lr")]
    assert logged == ["none", "default", "none", "''", "auto"]
    children = _children(client, parent)
    assert set(children) == {"prep", "train", "evaluate", "export_onnx"}
    assert all(r.info.status == "FINISHED" for r in children.values())
    assert children["train"].data.params["recipe.lr_schedule"] == "none"  # a choice, not "the recipe's"

    # registered_model_name=none: the ONNX model is logged, and no version of any name comes from these runs
    assert "registered_model" not in parent.data.tags and "registered_model" not in children["export_onnx"].data.tags
    for run in (parent, *children.values()):
        assert client.search_model_versions(f"run_id = '{run.info.run_id}'") == []

    # the CLI reads the logged spelling back: evaluate loads the data set from the train run's params
    ev = _run([sys.executable, "-m", "pipelines", "evaluate", "--train-run-id", children["train"].info.run_id])
    assert ev.returncode == 0, ev.stderr[-2000:]
