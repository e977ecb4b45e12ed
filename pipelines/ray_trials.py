"""Study and sweep trials as Ray Tune trials (``executor=ray``).

Ray workers get the tracking URI, the parent run id and the experiment id explicitly (no
``set_experiment``, no active-run inheritance); a worker stopped by Ray may leave its run RUNNING,
which ``close_leftovers`` ends. Imported only when Ray is asked for: Ray is a heavy import.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from pipelines.trials import VAL_METRIC, TrialResult, TrialSpec, run_trial
from tracking.queries import end_run_as, find_runs, get_run_record, metric_history
from tracking.runs import tracking_uri, use_tracking_uri

ROOT = Path(__file__).resolve().parents[1]
# Environment a Ray worker needs from the driver (paths made absolute: workers start elsewhere).
FORWARDED_ENV = (
    "PIPELINE_CHECKPOINT_DIR",
    "PIPELINE_DATA_DIR",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)
PATH_ENV = ("PIPELINE_CHECKPOINT_DIR", "PIPELINE_DATA_DIR")


def cpu_count() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def concurrency(requested: int | None, n_trials: int) -> int:
    """Trials at once: what was asked (default: one per CPU), never more than the CPUs or the trials."""
    return max(1, min(requested or cpu_count(), cpu_count(), n_trials))


def _absolute_uri(uri: str) -> str:
    """``sqlite:///rel.db`` and plain paths made absolute, so a worker in another folder finds the store."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///") :]).resolve())
    if "://" not in uri:
        return str(Path(uri).resolve())
    return uri


def worker_env() -> dict[str, str]:
    env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    env.setdefault("PIPELINE_CHECKPOINT_DIR", "checkpoints")
    for k in PATH_ENV:
        if k in env:
            env[k] = str(Path(env[k]).resolve())
    env["MLFLOW_TRACKING_URI"] = _absolute_uri(tracking_uri())
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return env


@contextlib.contextmanager
def ray_runtime(address: str | None = None, num_cpus: int | None = None):
    """``ray.init`` (local with ``num_cpus`` CPUs, or the cluster at ``address``) and shut down after.

    A Ray already initialised by the caller is used as it is and left running.
    """
    import ray

    if ray.is_initialized():
        yield ray
        return
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    runtime_env: dict = {"env_vars": worker_env()}
    kwargs: dict = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    if address:
        # A cluster's workers need the code: ship this checkout (small; data and stores excluded).
        runtime_env["working_dir"] = str(ROOT)
        runtime_env["excludes"] = [".git", ".venv", "mlruns", "mlartifacts", "checkpoints", "out", "*.db", "data"]
        ray.init(address=address, runtime_env=runtime_env, **kwargs)
    else:
        ray.init(
            num_cpus=num_cpus or cpu_count(),
            object_store_memory=256 * 1024**2,  # trials pass run ids, not tensors
            runtime_env=runtime_env,
            **kwargs,
        )
    try:
        yield ray
    finally:
        ray.shutdown()


def worker_setup(uri: str, threads: int) -> None:
    """In a Ray worker: this process's tracking URI and CPU threads; nothing inherited from a driver run."""
    import torch

    for key in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        os.environ.pop(key, None)
    use_tracking_uri(uri)
    torch.set_num_threads(max(1, threads))


def tune_run_config(name: str, storage: str):
    from ray import tune

    return tune.RunConfig(name=name, storage_path=storage, verbose=0, log_to_file=False)


def close_leftovers(parent_id: str, experiment_id: str, failed: set[str], early_stop: bool = True) -> int:
    """End child runs (and their children) that a stopped Ray worker left RUNNING. Returns how many.

    ``early_stop``: a leftover whose trial Ray reports without error was stopped by the scheduler
    (ASHA) and ends FINISHED tagged ``early_stopped``; without a scheduler (studies) it ends KILLED.
    """
    n = 0
    for child in find_runs(
        [experiment_id], f"tags.mlflow.parentRunId = '{parent_id}' and attributes.status = 'RUNNING'"
    ):
        for grand in find_runs(
            [experiment_id], f"tags.mlflow.parentRunId = '{child.run_id}' and attributes.status = 'RUNNING'"
        ):
            end_run_as(grand.run_id, "KILLED", {"error": "worker stopped by Ray"})
        if child.run_id in failed:
            end_run_as(child.run_id, "FAILED", {"error": "Ray trial failed"})
        elif not early_stop:
            end_run_as(child.run_id, "KILLED", {"error": "worker stopped by Ray"})
        else:
            history = metric_history(child.run_id, VAL_METRIC)
            epoch = history[-1][0] if history else 0
            end_run_as(
                child.run_id, "FINISHED", {"early_stopped": "true", "stopped_by": "ray", "stopped_at_epoch": epoch}
            )
        n += 1
    return n


def _study_trainable(config: dict, specs: list[TrialSpec], parent_id: str, experiment_id: str, uri: str, threads: int):
    from ray import tune

    worker_setup(uri, threads)
    r = run_trial(specs[config["index"]], parent_id, experiment_id, progress=False)
    tune.report(
        {"trial_run_id": r.run_id, "reused": r.reused, "test_accuracy": r.metrics.get("test_accuracy", float("nan"))}
    )


def with_run_context(fn, parent_id: str, experiment_id: str, threads: int, **params):
    """A Ray Tune trainable: ``fn`` with the parent run, experiment, tracking URI and its CPU share."""
    from ray import tune

    context = {"parent_id": parent_id, "experiment_id": experiment_id, "uri": _absolute_uri(tracking_uri())}
    bound = tune.with_parameters(fn, **context, threads=threads, **params)
    return tune.with_resources(bound, {"cpu": threads})


def tune_on_ray(
    fn,
    trials: int,
    name: str,
    parent_id: str,
    experiment_id: str,
    ray_address: str | None,
    max_concurrent: int | None,
    param_space: dict,
    tune_config: dict | None = None,
    **params,
):
    """Ray Tune runs ``fn`` (a trainable: ``with_run_context`` gives it the run context) over ``param_space``,
    at most ``max_concurrent`` trials at once with the CPUs shared between them; returns the result grid."""
    from ray import tune

    workers = concurrency(max_concurrent, trials)
    threads = max(1, cpu_count() // workers)
    storage = tempfile.mkdtemp(prefix="ray-tune-")
    try:
        with ray_runtime(ray_address):
            tuner = tune.Tuner(
                with_run_context(fn, parent_id, experiment_id, threads, **params),
                param_space=param_space,
                tune_config=tune.TuneConfig(max_concurrent_trials=workers, **(tune_config or {})),
                run_config=tune_run_config(name, storage),
            )
            return tuner.fit()
    finally:
        shutil.rmtree(storage, ignore_errors=True)


def run_trials_on_ray(
    specs: list[TrialSpec],
    parent_id: str,
    experiment_id: str,
    ray_address: str | None = None,
    max_concurrent: int | None = None,
) -> list[TrialResult]:
    """A study's (configuration, seed) trials as a Ray Tune grid; results in the order of ``specs``."""
    from ray import tune

    space = {"index": tune.grid_search(list(range(len(specs))))}
    grid = tune_on_ray(
        _study_trainable, len(specs), "study", parent_id, experiment_id, ray_address, max_concurrent, space, specs=specs
    )
    errors = [r for r in grid if r.error is not None]
    by_index: dict[int, tuple[str, bool]] = {}
    for r in grid:
        if r.error is None and r.metrics and "trial_run_id" in r.metrics:
            by_index[r.config["index"]] = (r.metrics["trial_run_id"], bool(r.metrics.get("reused")))
    close_leftovers(parent_id, experiment_id, failed=set(), early_stop=False)
    if errors or len(by_index) != len(specs):
        first = str(errors[0].error).splitlines()[0] if errors else "no result"
        raise RuntimeError(f"{len(specs) - len(by_index)} of {len(specs)} Ray trials failed; first: {first}")
    out = []
    for i, spec in enumerate(specs):
        run_id, reused = by_index[i]
        rec = get_run_record(run_id)
        out.append(
            TrialResult(
                rec.run_id,
                spec.label,
                spec.train_cfg.seed,
                reused,
                False,
                int(rec.metrics.get("epochs_done", 0)),
                rec.metrics,
                0.0,
            )
        )
    return out
