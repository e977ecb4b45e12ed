"""Study and sweep trials: one child run per trial (``pipelines.ray_trials`` runs them as Ray Tune trials).

A trial trains one configuration through ``pipelines.runner`` (a child of the study's or sweep's
parent run), is evaluated in a grandchild run with the same metric names as ``main``, and is
identified by a hash of what determines its result: a finished trial with the same hash is
reused, an interrupted one with its checkpoint on this machine is resumed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
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
from tracking.queries import RunRecord, find_runs, metric_history
from tracking.runs import active_run_id, log_metrics, log_params, set_tags

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
    first = build_model(specs[0].train_cfg, ds)
    if not can_batch(first[0], precision):
        return None
    built = [first] + [build_model(s.train_cfg, ds) for s in specs[1:]]
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
