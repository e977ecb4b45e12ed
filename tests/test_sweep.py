"""Sweeps: Optuna + ASHA in-process, and one 2-trial sweep on Ray Tune against the test server."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from pipelines.parsing import ConfigError


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lr": "0.1,0.01"}, "lr must be 'low,high' with low <= high"),
        ({"lr": "x"}, "lr must be a number"),
        ({"weight_decay": "0,1e-3"}, "log-uniform range cannot start at 0"),
        ({"batch_sizes": ","}, "batch_sizes must be comma-separated integers"),
        ({"num_samples": "0"}, "num_samples must be an integer >= 1"),
        ({"epochs": "2", "grace_period": "3"}, "grace_period must be <= epochs"),
        ({"val_fraction": "0.95"}, r"val_fraction must be a number in \(0, 0\.5\], got '0\.95'"),
        ({"val_fraction": "0"}, r"val_fraction must be a number in \(0, 0\.5\]"),  # selection needs a holdout
        ({"model": "nope"}, "model must be one of"),
    ],
)
def test_bad_sweep_parameters_are_one_line_errors(kwargs, message):
    from pipelines.sweep import plan_sweep

    with pytest.raises(ConfigError, match=message):
        plan_sweep(**kwargs)


def test_plan_and_trial_points():
    from pipelines.ray_trials import concurrency, cpu_count
    from pipelines.sweep import plan_sweep, point_spec

    plan = plan_sweep(epochs="3", lr="0.01", weight_decay="0", num_samples="2")
    assert plan.epochs == 3 and plan.base_cfg.eval_every == 1 and plan.lr == (0.01, 0.01)
    spec = point_spec(plan, {"lr": 0.0123456, "batch_size": 64, "weight_decay": 0.0}, "007")
    assert spec.train_cfg.recipe()["lr"] == 0.01235 and spec.train_cfg.recipe()["batch_size"] == 64
    assert spec.val_fraction == 0.1
    assert spec.run_name == "trial-007" and spec.tags == {"sweep": "sweep-pooling_cnn", "trial": "007"}
    assert concurrency(None, 100) == cpu_count() and concurrency(64, 3) <= 3 and concurrency(1, 5) == 1


def test_pruned_trial_ends_finished_and_tagged(tracking):
    """A scheduler's stop (``Pruned`` from the epoch hook) ends the child FINISHED, tagged, nothing RUNNING."""
    from pipelines.sweep import plan_sweep, point_spec
    from pipelines.trials import Pruned, run_trial
    from tracking import experiment_id_for, tracked_run

    plan = plan_sweep(epochs="3", num_samples="1")
    spec = point_spec(plan, {"lr": 0.05, "batch_size": 128, "weight_decay": 1e-4}, "p")
    exp = experiment_id_for("sweep-pruned")

    def stop_after_first(_rid, epoch, _metrics):
        raise Pruned(epoch)

    with tracked_run("sweep-parent", exp) as parent:
        r = run_trial(spec, parent, exp, on_epoch=stop_after_first, progress=False)
    assert r.pruned and r.epochs_done == 1 and not r.reused
    run = MlflowClient().get_run(r.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["early_stopped"] == "true"
    assert run.data.tags["mlflow.parentRunId"] == parent and "test_accuracy" not in run.data.metrics
    assert [m.step for m in MlflowClient().get_metric_history(r.run_id, "val_acc")] == [1]


def _check_sweep(result, n_trials: int):
    client = MlflowClient()
    parent = client.get_run(result.run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["step"] == "sweep"
    assert parent.data.params["sweep.search"] == "optuna-tpe" and parent.data.params["sweep.scheduler"].startswith(
        "asha"
    )
    trials = client.search_runs([result.experiment_id], f"tags.mlflow.parentRunId = '{result.run_id}'")
    assert len(trials) == n_trials and all(t.info.status == "FINISHED" for t in trials)
    assert not client.search_runs([result.experiment_id], "attributes.status = 'RUNNING'")
    done = [t for t in trials if t.data.tags.get("early_stopped") != "true"]
    assert done, "ASHA never stops every trial: the first to reach a rung goes on"
    for t in done:
        assert {"test_accuracy", "final_val_acc", "train_seconds", "num_params"} <= set(t.data.metrics)
        assert t.data.params["val_fraction"] == "0.1"
    df = result.trials
    assert len(df) == n_trials and set(df["run_id"]) == {t.info.run_id for t in trials}
    assert result.best["run_id"] == parent.data.tags["best_run_id"]
    assert result.best["val_acc"] == max(df.loc[~df["pruned"], "val_acc"])
    files = {f.path for f in client.list_artifacts(result.run_id, "sweep")}
    assert "sweep/trials.csv" in files
    return trials


def test_local_sweep_optuna_asha(tracking):
    from pipelines.sweep import plan_sweep, run_sweep

    plan = plan_sweep(dataset="digits", epochs="2", num_samples="3", lr="1e-3,3e-1", batch_sizes="64,128")
    result = run_sweep(plan, experiment="sweep-local", executor="local")
    _check_sweep(result, 3)


@pytest.mark.slow
def test_ray_sweep_end_to_end(tracking):
    """Two trials as Ray Tune trials (local Ray, 2 CPUs), each an MLflow child run on the test server."""
    import ray

    from pipelines.sweep import plan_sweep, run_sweep

    plan = plan_sweep(dataset="digits", epochs="2", num_samples="2", lr="1e-2,2e-1", batch_sizes="64")
    try:
        result = run_sweep(plan, experiment="sweep-ray", executor="ray", max_concurrent=2)
    finally:
        assert not ray.is_initialized()  # shut down by run_sweep
    trials = _check_sweep(result, 2)
    assert {t.data.tags["sweep"] for t in trials} == {"sweep-pooling_cnn"}
    assert MlflowClient().get_run(result.run_id).data.tags["executor"] == "ray"
