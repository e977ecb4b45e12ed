"""Study and sweep trials: one child run per trial, in this process or as Ray Tune trials.

A trial trains one configuration through ``pipelines.runner`` (a child of the study's or sweep's
parent run), is evaluated in a grandchild run with the same metric names as ``main``, and is
identified by a hash of what determines its result: a finished trial with the same hash is
reused, an interrupted one with its checkpoint on this machine is resumed.

Ray workers get the tracking URI, the parent run id and the experiment id explicitly (no
``set_experiment``, no active-run inheritance); a worker stopped by Ray may leave its run RUNNING,
which ``close_leftovers`` ends.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.data import Dataset
from pipelines.device import pick_device, pick_precision
from pipelines.runner import place, training_run
from pipelines.trained import (
    CHECKPOINT,
    SUMMARY,
    build_model,
    checkpoint_dir,
    fit_tensors,
    load_data,
    training_params,
)
from tracking.artifacts import log_file
from tracking.metrics import MetricLogger
from tracking.offline import load_pending
from tracking.queries import RunRecord, end_run_as, find_runs, get_run_record, metric_history
from tracking.runs import active_run_id, log_metrics, log_params, set_tags, tracking_uri, use_tracking_uri

if TYPE_CHECKING:
    import torch
    from torch import nn

    from pipelines.config import DataConfig, TrainConfig

VAL_METRIC = "val_acc"  # what schedulers stop trials on: measured on the holdout, never the test set


VARIANT_KEYS = ("pooling", "batch_size", "lr", "momentum", "weight_decay", "optimizer", "lr_schedule", "augment")


def make_train_cfg(model: str, **raw) -> TrainConfig:
    """A TrainConfig from raw strings, checked by pipelines.config (ConfigError names the bad value); what is
    not given takes the parameter table's defaults."""
    from pipelines.config import train_config_from  # parsing is config's; this module only runs trials

    return train_config_from({"model": model, **{k: str(v) for k, v in raw.items()}})


@dataclass
class TrialSpec:
    """What one child run trains: picklable, so a Ray worker gets it as is."""

    label: str  # the configuration (rows of the comparison table)
    run_name: str
    data_cfg: DataConfig
    train_cfg: TrainConfig
    tags: dict[str, str] = field(default_factory=dict)  # study / sweep name, trial number ...
    val_fraction: float = 0.0  # > 0: hold this share of train out as the validation split (val_* per epoch)


class Pruned(Exception):  # noqa: N818 - the trial was pruned, not an error
    """Raised by an ``on_epoch`` hook when a scheduler (ASHA) stops the trial early."""

    def __init__(self, epoch: int):
        super().__init__(f"pruned after epoch {epoch}")
        self.epoch = epoch


@dataclass
class TrialResult:
    run_id: str
    label: str
    seed: int
    reused: bool
    pruned: bool
    epochs_done: int
    metrics: dict[str, float]
    seconds: float


def params_hash(spec: TrialSpec, ds: Dataset) -> str:
    """What determines a child's result; equal hash = same result to expect (on the same hardware kind)."""
    cfg = spec.train_cfg
    key = {
        "dataset": ds.name,
        "data_fingerprint": ds.fingerprint(),
        "model": cfg.model,
        "options": cfg.model_options(),
        "recipe": cfg.recipe(),
        "seed": cfg.seed,
        "device": cfg.device,
        "precision": cfg.precision,
        "eval_every": cfg.eval_every,
        "val_fraction": _val_fraction(spec),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _val_fraction(spec: TrialSpec) -> float:
    """The trial's validation holdout (split by ``pipelines.data.split_validation``, never trained on)."""
    return spec.val_fraction or spec.train_cfg.val_fraction


def _finished(experiment_ids: list[str], h: str) -> RunRecord | None:
    done = find_runs(experiment_ids, f"tags.params_hash = '{h}' and attributes.status = 'FINISHED'")
    done = [r for r in done if "test_accuracy" in r.metrics]
    return done[0] if done else None


def _resumable(experiment_id: str, h: str) -> str | None:
    """An interrupted child with the same hash whose checkpoint is on this machine: ended FAILED or
    KILLED, or ended while its server was down (its end is still only in the local pending records)."""
    for r in find_runs([experiment_id], f"tags.params_hash = '{h}'"):
        if not (checkpoint_dir(r.run_id) / "last.pt").exists():
            continue
        if r.status in ("FAILED", "KILLED") or (r.status == "RUNNING" and load_pending(r.run_id) is not None):
            return r.run_id
    return None


def _reused(done: RunRecord, spec: TrialSpec, on_epoch) -> TrialResult:
    """A finished identical child stands for this trial; ``on_epoch`` sees its ``val_acc`` curve again."""
    seed = spec.train_cfg.seed
    if on_epoch:
        try:
            for epoch, value in metric_history(done.run_id, VAL_METRIC):
                on_epoch(done.run_id, epoch, {VAL_METRIC: value})
        except Pruned as p:
            return TrialResult(done.run_id, spec.label, seed, True, True, p.epoch, done.metrics, 0.0)
    return TrialResult(
        done.run_id, spec.label, seed, True, False, int(done.metrics.get("epochs_done", 0)), done.metrics, 0.0
    )


def _trial_tags(spec: TrialSpec, ds: Dataset, h: str, parent_id: str) -> dict[str, str]:
    cfg = spec.train_cfg
    return {
        "step": "trial",
        "config": spec.label,
        "seed": str(cfg.seed),
        "model": cfg.model,
        "dataset": ds.name,
        "params_hash": h,
        "mlflow.parentRunId": parent_id,
        **spec.tags,
    }


def _in_parent(parent_id: str) -> bool:
    """In-process under the parent run (nested), or a Ray worker with no active run (parent set by tag)."""
    try:
        return active_run_id() == parent_id
    except RuntimeError:
        return False


def run_trial(
    spec: TrialSpec,
    parent_id: str,
    experiment_id: str,
    dataset: Dataset | None = None,
    on_epoch=None,
    progress: bool = True,
    reuse_from: tuple[str, ...] = (),
) -> TrialResult:
    """Train + evaluate ``spec`` as a child of ``parent_id`` (or reuse a finished identical child).

    ``on_epoch(run_id, epoch, metrics)`` sees every epoch (a reused child replays its ``val_acc``
    curve); it raises ``Pruned`` to stop the trial, which then ends FINISHED tagged ``early_stopped``.
    Finished children are looked for in ``experiment_id`` and the experiments ids in ``reuse_from``.
    Works in-process under the active parent run and in a Ray worker (no active run: the parent
    is set by tag, the experiment by id).
    """
    t0 = time.perf_counter()
    ds = dataset or load_data(spec.data_cfg)
    cfg = spec.train_cfg
    h = params_hash(spec, ds)
    done = _finished([experiment_id, *reuse_from], h)
    if done is not None:
        return _reused(done, spec, on_epoch)
    resume_id = _resumable(experiment_id, h)
    fraction = _val_fraction(spec)
    device = pick_device(cfg.device)
    precision = pick_precision(cfg.precision, device)
    model, model_config = build_model(cfg, ds)
    model = place(model, device)
    data = fit_tensors(ds, fraction, cfg.seed, device)  # test_* per epoch on the test set, val_* on the holdout
    with training_run(
        spec.run_name,
        experiment_id,
        resume_run_id=resume_id,
        nested=_in_parent(parent_id),
        tags=_trial_tags(spec, ds, h, parent_id),
        system_metrics=cfg.system_metrics,
    ) as session:
        rid = session.run_id
        if session.is_new:  # library versions, CPU/GPU and git commit: tracked_run logs them on every new run
            _log_trial_params(spec, ds, device, precision, model, len(data["x_train"]))
        try:
            state = session.fit(
                model,
                data,
                cfg,
                precision=precision,
                progress=progress,
                on_epoch=(lambda epoch, metrics: on_epoch(rid, epoch, metrics)) if on_epoch else None,
            )
        except Pruned as p:
            set_tags({"early_stopped": "true", "stopped_at_epoch": p.epoch})
            log_metrics({"epochs_done": p.epoch})
            return TrialResult(rid, spec.label, cfg.seed, False, True, p.epoch, {}, time.perf_counter() - t0)
        return _finish_trial(session, spec, ds, model, model_config, state, t0)


def _log_trial_params(spec: TrialSpec, ds: Dataset, device, precision: str, model, n_train: int) -> None:
    """Into the trial's new run (the active one): what it trains, as ``train`` logs it, plus config and holdout."""
    params = training_params(spec.data_cfg, spec.train_cfg, ds, device, precision, model, n_train)
    log_params({**params, "config": spec.label, "val_fraction": _val_fraction(spec)})


def _finish_trial(session, spec: TrialSpec, ds: Dataset, model, model_config: dict, state, t0: float) -> TrialResult:
    """In the trial's run (the active one), after training: weights and history, the ``evaluate`` step as a
    grandchild run, the summary metrics; ``t0``: when the trial started (``perf_counter``)."""
    from pipelines import evaluate  # the trial's evaluation is the `evaluate` step, as a grandchild run

    session.log_trained(model, model_config, state)
    metrics = evaluate.run(session.run_id, dataset=ds, model=model, history=state.history, nested=True).metrics
    summary = {k: v for k, v in metrics.items() if k in SUMMARY}
    log_metrics(summary)
    if _val_fraction(spec):
        summary[VAL_METRIC] = state.history[-1].get(VAL_METRIC, float("nan"))
        log_metrics({f"final_{VAL_METRIC}": summary[VAL_METRIC]})
    seed = spec.train_cfg.seed
    return TrialResult(session.run_id, spec.label, seed, False, False, state.epoch, summary, time.perf_counter() - t0)


# A configuration's seeds trained together (local executor).

# Device types where a configuration's seeds trained together measured faster than one by one
# (bench/README.md, "Seeds together"): there ``batch_seeds=auto`` trains them together. None so far:
# on the CPU the batched step was slower, and no GPU has been measured.
SEEDS_TOGETHER_FASTER: frozenset[str] = frozenset()


def seeds_together(batch_seeds: bool | None, device: str) -> bool:
    """Whether a study's seeds train together: as set, or (``None`` = auto) on a device type where that is faster."""
    return pick_device(device).type in SEEDS_TOGETHER_FASTER if batch_seeds is None else batch_seeds


def run_seeds(
    specs: list[TrialSpec],
    parent_id: str,
    experiment_id: str,
    dataset: Dataset,
    progress: bool = True,
    reuse_from: tuple[str, ...] = (),
) -> list[TrialResult]:
    """One configuration's trials (its seeds), in the order of ``specs``: finished identical children are
    reused, the others train together (one ``fit_seeds``) where they can, else one by one (``run_trial``)."""
    finished = [_finished([experiment_id, *reuse_from], params_hash(s, dataset)) for s in specs]
    todo = [s for s, done in zip(specs, finished) if done is None]
    batch = _prepare_seed_batch(todo, dataset, experiment_id)
    if batch is None:
        return [
            run_trial(s, parent_id, experiment_id, dataset, progress=progress, reuse_from=reuse_from) for s in specs
        ]
    trained = iter(_run_seed_batch(batch, dataset, parent_id, experiment_id, progress))
    return [next(trained) if done is None else _reused(done, s, None) for s, done in zip(specs, finished)]


@dataclass
class _SeedBatch:
    """The seeds of one configuration, built and placed for ``pipelines.batched.fit_seeds``; nothing tracked yet."""

    specs: list[TrialSpec]
    models: list[nn.Module]  # one per seed, its initial weights from its seed
    model_configs: list[dict]
    device: torch.device
    precision: str


def _prepare_seed_batch(specs: list[TrialSpec], ds: Dataset, experiment_id: str) -> _SeedBatch | None:
    """``specs`` ready to train together, or None when they train one by one: fewer than two, a validation
    holdout (it is split by each seed), settings that differ in more than the seed, an interrupted run to
    resume (``fit`` continues its checkpoint), or a model ``fit_seeds`` refuses."""
    from pipelines.batched import can_batch

    if len(specs) < 2 or any(_val_fraction(s) for s in specs):
        return None
    if len({repr(replace(s.train_cfg, seed=0)) for s in specs}) > 1:
        return None
    if any(_resumable(experiment_id, params_hash(s, ds)) for s in specs):
        return None
    cfg = specs[0].train_cfg
    device = pick_device(cfg.device)
    precision = pick_precision(cfg.precision, device)
    built = [build_model(s.train_cfg, ds) for s in specs]
    if not can_batch(built[0][0], precision):
        return None
    return _SeedBatch(specs, [place(m, device) for m, _ in built], [c for _, c in built], device, precision)


def _run_seed_batch(
    batch: _SeedBatch, ds: Dataset, parent_id: str, experiment_id: str, progress: bool = True
) -> list[TrialResult]:
    """``run_trial`` for every seed of ``batch``, trained by one ``fit_seeds``; results in the order of its specs.

    The child runs open first, each with ``run_trial``'s tags and params; each seed's epochs go to its own
    run (and its local metric file), its checkpoint to its own run; then each run gets its weights, the
    ``evaluate`` grandchild and the summary as ``run_trial`` logs them. A crash in training ends every child
    FAILED. MLflow keeps one active run per thread, nesting each new run under the one active: the runs are
    opened one inside the other (each then told its real parent by tag) and finished from the innermost out.
    """
    from pipelines.batched import fit_seeds

    t0 = time.perf_counter()
    cfg = batch.specs[0].train_cfg
    data = fit_tensors(ds, 0.0, cfg.seed, batch.device)  # no holdout: the same tensors for every seed
    nested = _in_parent(parent_id)
    with contextlib.ExitStack() as all_runs:
        runs = [all_runs.enter_context(contextlib.ExitStack()) for _ in batch.specs]
        sessions = []
        for k, (spec, run, model) in enumerate(zip(batch.specs, runs, batch.models)):
            tags = _trial_tags(spec, ds, params_hash(spec, ds), parent_id)
            system = spec.train_cfg.system_metrics
            sessions.append(
                run.enter_context(
                    training_run(spec.run_name, experiment_id, nested=nested or k > 0, tags=tags, system_metrics=system)
                )
            )
            set_tags({"mlflow.parentRunId": parent_id})  # MLflow made it a child of the run active before it
            _log_trial_params(spec, ds, batch.device, batch.precision, model, len(data["x_train"]))
        loggers = [MetricLogger(s.run_id, local_path=s.local_metrics) for s in sessions]
        try:
            states = fit_seeds(
                batch.models,
                **data,
                recipe=cfg.recipe(),
                seeds=[s.train_cfg.seed for s in batch.specs],
                precision=batch.precision,
                eval_every=cfg.eval_every,
                checkpoint_every=cfg.checkpoint_every,
                checkpoint_paths=[s.checkpoint for s in sessions],
                on_epoch=lambda k, epoch, metrics: loggers[k].log(metrics, epoch),
                progress=progress,
            )
        finally:
            for session, logger in zip(sessions, loggers):
                logger.flush(force=True)
                if session.checkpoint.exists():
                    log_file(session.checkpoint, Path(CHECKPOINT).parent.as_posix(), run_id=session.run_id)
        results = []
        for k in reversed(range(len(sessions))):  # the innermost run is the active one
            spec, model, config = batch.specs[k], batch.models[k], batch.model_configs[k]
            results.append(_finish_trial(sessions[k], spec, ds, model, config, states[k], t0))
            runs[k].close()  # ends it FINISHED: the run opened before it is active again
    return results[::-1]


# ---- Ray: studies' and sweeps' trials as Ray Tune trials ----

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
