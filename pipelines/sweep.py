"""Entry point ``sweep`` and the Ray executor of studies: trials on Ray Tune, each an MLflow child run.

``sweep`` searches lr / batch size / weight decay for one model with Optuna's TPE sampler and
stops weak trials early with ASHA on the per-epoch ``val_acc``:

* ``executor="ray"``: Ray Tune (``OptunaSearch`` + ``ASHAScheduler``), local Ray by default
  (``ray.init()`` on this machine) or an existing cluster (``ray_address``); at most
  ``max_concurrent`` trials at once, bounded by the CPU count.
* ``executor="local"``: the same search in this process, one trial after another, with Optuna's
  ``SuccessiveHalvingPruner`` (the ASHA rule) — what tests use.

Every trial is a child run of the sweep's parent run (``pipelines.trials.run_trial``: train +
evaluate, same metric names as ``main``). Ray workers get the tracking URI, the parent run id and
the experiment id explicitly (no ``set_experiment``, no active-run inheritance). Workers stopped by
ASHA may die before they end their run: after the sweep the driver ends any child still RUNNING
(``early_stopped`` when Ray reported no error, FAILED otherwise), so nothing stays RUNNING.

Validation: sweeps pick hyper-parameters (Optuna's objective, ASHA's stops, the best trial) on
``val_acc``, measured on a stratified holdout of the training set (``val_fraction``, default 0.1,
split by ``pipelines.data.split_validation`` like ``train``'s own ``val_fraction``), never on the
test set; the per-epoch ``test_*`` curves and ``test_accuracy`` are reported for the record.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import click

from pipelines.comparison import (
    TRIALS_ARTIFACT,
    accuracy_curves,
    log_comparison,
    quiet_downloads,
    render,
)
from pipelines.config import DataConfig, TrainConfig, as_params, data_config
from pipelines.params import param, parsed
from pipelines.parsing import AUTO, ConfigError
from pipelines.trained import load_data
from pipelines.trials import (
    VAL_METRIC,
    Pruned,
    TrialSpec,
    make_train_cfg,
    run_trial,
)
from tracking import experiment_id_for, tracked_run
from tracking.artifacts import log_figure, log_json, log_table
from tracking.queries import RunRecord, find_runs, get_run_record
from tracking.runs import log_metrics, log_params, set_tags

METRIC = VAL_METRIC


# ---- the sweep ----


@dataclass
class SweepPlan:
    name: str
    data_cfg: DataConfig
    base_cfg: TrainConfig  # epochs resolved; lr / batch_size / weight_decay come from the search
    epochs: int
    lr: tuple[float, float]  # log-uniform range; equal ends = fixed
    batch_sizes: tuple[int, ...]
    weight_decay: tuple[float, float]  # log-uniform range; (0, 0) = fixed 0
    num_samples: int
    seed: int  # sampler seed and the trials' training seed
    grace_period: int  # ASHA: epochs every trial gets before it can be stopped
    reduction_factor: int  # ASHA: keep 1/rf of the trials at each rung
    val_fraction: float

    def params(self) -> dict[str, str]:
        """Resolved values under ``sweep.*``: ``mlflow run`` logged the raw MLproject ones under the plain names."""
        out = {
            **as_params(self.data_cfg),
            "model": self.base_cfg.model,
            "pooling": self.base_cfg.pooling,
            "epochs": str(self.epochs),
            "lr_range": f"{self.lr[0]:g},{self.lr[1]:g}",
            "batch_sizes": ",".join(map(str, self.batch_sizes)),
            "weight_decay_range": f"{self.weight_decay[0]:g},{self.weight_decay[1]:g}",
            "num_samples": str(self.num_samples),
            "seed": str(self.seed),
            "search": "optuna-tpe",
            "scheduler": f"asha(grace_period={self.grace_period},reduction_factor={self.reduction_factor})",
            "metric": f"{METRIC} (max) on a {self.val_fraction:g} holdout of train",
            "val_fraction": str(self.val_fraction),
            "device": self.base_cfg.device,
        }
        return {f"sweep.{k}": v for k, v in out.items()}


def plan_sweep(
    dataset: str = "digits",
    data_dir: str = "",
    classes: str = "default",
    model: str = "pooling_cnn",
    pooling: str = "max",
    epochs=AUTO,
    optimizer=AUTO,
    lr="1e-4,1e-1",
    batch_sizes="32,64,128",
    weight_decay="1e-6,1e-2",
    num_samples=8,
    seed=0,
    grace_period=1,
    reduction_factor=2,
    val_fraction="0.1",
    device=AUTO,
    precision=AUTO,
    name: str = "",
) -> SweepPlan:
    """Check every sweep parameter before any run exists."""
    data_cfg = data_config(dataset, data_dir, classes)
    if data_cfg.data_dir:
        data_cfg = replace(data_cfg, data_dir=str(Path(data_cfg.data_dir).resolve()))
    v = parsed(
        "sweep",
        seed=seed,
        lr=lr,
        batch_sizes=batch_sizes,
        weight_decay=weight_decay,
        num_samples=num_samples,
        grace_period=grace_period,
        reduction_factor=reduction_factor,
        val_fraction=val_fraction,  # > 0: no holdout = nothing to select on but the test set
    )
    base = make_train_cfg(
        model, pooling=pooling, epochs=epochs, optimizer=optimizer, seed=v["seed"], device=device, precision=precision
    )
    n_epochs = base.recipe()["epochs"]
    if v["grace_period"] > n_epochs:
        raise ConfigError(f"grace_period must be <= epochs ({n_epochs}); got {grace_period!r}")
    # epochs logged as given (auto = the recipe's); the value is fixed here because ASHA's max_t needs it
    base = replace(base.with_recipe(raw={}, epochs=n_epochs), eval_every=1, val_fraction=v["val_fraction"])
    return SweepPlan(
        name=name or f"sweep-{model}",
        data_cfg=data_cfg,
        base_cfg=base,
        epochs=n_epochs,
        lr=v["lr"],
        batch_sizes=tuple(v["batch_sizes"]),
        weight_decay=v["weight_decay"],
        num_samples=v["num_samples"],
        seed=v["seed"],
        grace_period=v["grace_period"],
        reduction_factor=v["reduction_factor"],
        val_fraction=v["val_fraction"],
    )


def point_spec(plan: SweepPlan, point: dict, trial: str) -> TrialSpec:
    """The trial for one sampled point (values rounded to 4 significant digits: tidy, re-runnable)."""
    lr = float(f"{float(point['lr']):.4g}")
    wd = float(f"{float(point['weight_decay']):.4g}")
    bs = int(point["batch_size"])
    logged = {"lr": f"{lr:g}", "batch_size": str(bs), "weight_decay": f"{wd:g}"}
    cfg = plan.base_cfg.with_recipe(lr=lr, batch_size=bs, weight_decay=wd, raw=logged)
    label = f"lr={lr:.3g} bs={bs} wd={wd:.2g}"
    return TrialSpec(
        label, f"trial-{trial}", plan.data_cfg, cfg, {"sweep": plan.name, "trial": trial}, plan.val_fraction
    )


def _optuna_space(plan: SweepPlan) -> dict:
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    space: dict = {"batch_size": CategoricalDistribution(list(plan.batch_sizes))}
    for key, (lo, hi) in (("lr", plan.lr), ("weight_decay", plan.weight_decay)):
        space[key] = FloatDistribution(lo, hi, log=True) if hi > lo else None
    return space


def _fixed(plan: SweepPlan) -> dict:
    return {k: lo for k, (lo, hi) in (("lr", plan.lr), ("weight_decay", plan.weight_decay)) if lo == hi}


def _sweep_local(plan: SweepPlan, parent_id: str, experiment_id: str) -> list[str]:
    """Optuna ask/tell in this process; SuccessiveHalvingPruner is ASHA's rule applied serially."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=plan.seed),
        pruner=optuna.pruners.SuccessiveHalvingPruner(
            min_resource=plan.grace_period, reduction_factor=plan.reduction_factor
        ),
    )
    space = {k: d for k, d in _optuna_space(plan).items() if d is not None}
    ds = load_data(plan.data_cfg)
    run_ids = []
    for i in range(plan.num_samples):
        trial = study.ask(space)
        spec = point_spec(plan, {**_fixed(plan), **trial.params}, f"{i:03d}")

        def on_epoch(_rid, epoch, metrics, trial=trial):
            trial.report(metrics[METRIC], epoch)
            if epoch < plan.epochs and trial.should_prune():
                raise Pruned(epoch)

        r = run_trial(spec, parent_id, experiment_id, dataset=ds, on_epoch=on_epoch, progress=False)
        run_ids.append(r.run_id)
        if r.pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, r.metrics[METRIC])
        click.echo(
            f"  {spec.run_name} {spec.label}: "
            + (
                f"pruned at epoch {r.epochs_done}"
                if r.pruned
                else (
                    f"val_acc {r.metrics.get(METRIC, float('nan')):.4f}, test_accuracy {r.metrics['test_accuracy']:.4f}"
                )
            ),
            err=True,
        )
    return run_ids


def _sweep_trainable(config: dict, plan: SweepPlan, parent_id: str, experiment_id: str, uri: str, threads: int):
    from ray import tune

    from pipelines.ray_trials import worker_setup

    worker_setup(uri, threads)
    trial = tune.get_context().get_trial_id()
    spec = point_spec(plan, config, trial)

    def on_epoch(rid, epoch, metrics):
        if epoch >= plan.epochs:
            return  # the last epoch is reported after evaluation, outside the run (see below)
        try:
            tune.report({METRIC: metrics[METRIC], "epoch": epoch, "trial_run_id": rid})
        except SystemExit:  # Tune stops a trial by exiting its thread inside report(): ASHA pruned it
            raise Pruned(epoch) from None

    r = run_trial(spec, parent_id, experiment_id, on_epoch=on_epoch, progress=False)
    if not r.pruned:
        # Outside the MLflow run: if Tune stops the trial now, nothing is left half-closed.
        tune.report(
            {
                METRIC: r.metrics[METRIC],
                "epoch": plan.epochs,
                "trial_run_id": r.run_id,
                "test_accuracy": r.metrics.get("test_accuracy"),
            }
        )


def _sweep_ray(plan: SweepPlan, parent_id: str, experiment_id: str, ray_address, max_concurrent) -> list[str]:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from pipelines.ray_trials import close_leftovers, tune_on_ray

    space: dict = {"batch_size": tune.choice(list(plan.batch_sizes))}
    for key, (lo, hi) in (("lr", plan.lr), ("weight_decay", plan.weight_decay)):
        space[key] = tune.loguniform(lo, hi) if hi > lo else lo
    search = {
        "metric": METRIC,
        "mode": "max",
        "search_alg": OptunaSearch(seed=plan.seed),
        "scheduler": ASHAScheduler(
            time_attr="training_iteration",  # one report per epoch
            max_t=plan.epochs,
            grace_period=plan.grace_period,
            reduction_factor=plan.reduction_factor,
        ),
        "num_samples": plan.num_samples,
    }
    n = plan.num_samples
    grid = tune_on_ray(
        _sweep_trainable, n, "sweep", parent_id, experiment_id, ray_address, max_concurrent, space, search, plan=plan
    )
    failed = {r.metrics.get("trial_run_id") for r in grid if r.error is not None and r.metrics}
    closed = close_leftovers(parent_id, experiment_id, failed)
    log_metrics({"trials_closed_by_driver": closed})
    ids = [r.metrics["trial_run_id"] for r in grid if r.metrics and r.metrics.get("trial_run_id")]
    errors = [r for r in grid if r.error is not None]
    if errors and len(errors) == len(list(grid)):
        raise RuntimeError(f"all {len(errors)} Ray trials failed; first: {str(errors[0].error).splitlines()[0]}")
    return ids


def trials_frame(records: list[RunRecord]):
    import pandas as pd

    rows = []
    for r in records:
        pruned = r.tags.get("early_stopped") == "true"
        rows.append(
            {
                "trial": r.tags.get("trial", ""),
                "config": r.tags.get("config", r.name),
                "lr": float(r.params.get("lr", "nan")),
                "batch_size": int(r.params.get("batch_size", 0)),
                "weight_decay": float(r.params.get("weight_decay", "nan")),
                "epochs_done": int(r.metrics.get("epochs_done", r.tags.get("stopped_at_epoch", 0))),
                "pruned": pruned,
                "val_acc": r.metrics.get("final_val_acc", r.metrics.get(METRIC, float("nan"))),
                "test_accuracy": r.metrics.get("test_accuracy", float("nan")),
                "train_seconds": r.metrics.get("train_seconds", float("nan")),
                "run_id": r.run_id,
            }
        )
    df = pd.DataFrame(rows)
    if len(df):
        df = df.sort_values(["pruned", "val_acc", "train_seconds"], ascending=[True, False, True], kind="stable")
    return df.reset_index(drop=True)


def _display(df):
    out = df.drop(columns=["run_id"]).copy()
    for col, fmt in (("val_acc", "{:.4f}"), ("test_accuracy", "{:.4f}"), ("train_seconds", "{:.1f}"), ("lr", "{:.4g}")):
        out[col] = [("—" if v != v else fmt.format(v)) for v in out[col]]
    out["weight_decay"] = [f"{v:.3g}" for v in out["weight_decay"]]
    out["pruned"] = ["yes" if v else "" for v in out["pruned"]]
    return out


@dataclass
class SweepResult:
    run_id: str
    experiment_id: str
    trials: object  # pandas frame, one row per finished trial, best first
    best: dict | None  # the best unpruned trial's row
    text: str  # the table as printed
    seconds: float


def run_sweep(
    plan: SweepPlan,
    experiment: str | None = None,
    executor: str = "local",
    ray_address: str | None = None,
    max_concurrent: int | None = None,
) -> SweepResult:
    """Run a sweep as one parent run with a child per trial; returns the trials table and the best trial."""
    executor = param("executor", "sweep").parse(executor)
    quiet_downloads()
    ds = load_data(plan.data_cfg)  # bad data fails before any run
    exp_id = experiment_id_for(experiment or plan.name)
    t0 = time.perf_counter()
    with tracked_run(plan.name, exp_id) as parent_id:
        log_params(plan.params())
        set_tags({"step": "sweep", "sweep": plan.name, "executor": executor, "dataset": ds.name})
        if executor == "ray":
            ids = _sweep_ray(plan, parent_id, exp_id, ray_address, max_concurrent)
        else:
            ids = _sweep_local(plan, parent_id, exp_id)
        # Trials reported to Ray plus any child under this parent (a trial pruned before its first report).
        children = find_runs([exp_id], f"tags.mlflow.parentRunId = '{parent_id}' and tags.step = 'trial'")
        ids = list(dict.fromkeys([*ids, *(c.run_id for c in children)]))
        records = [r for r in (get_run_record(i) for i in ids) if r is not None and r.status == "FINISHED"]
        df = trials_frame(records)
        text = render(_display(df), f"{plan.name}: {len(df)} trials ({executor})")
        log_table(df, "sweep/trials")
        log_json({"run_ids": [r.run_id for r in records if "test_accuracy" in r.metrics]}, TRIALS_ARTIFACT)
        if records:
            log_figure(
                accuracy_curves(records, title=f"{plan.name}: {METRIC} per epoch", key=METRIC),
                "figures/trial_curves.png",
            )
        complete = [r for r in records if "test_accuracy" in r.metrics and r.tags.get("early_stopped") != "true"]
        if complete:
            log_comparison(complete, plan.name)
        best = df[~df["pruned"]].iloc[0] if len(df) and (~df["pruned"]).any() else None
        n_pruned = int(df["pruned"].sum()) if len(df) else 0
        log_metrics({"trials": len(df), "trials_pruned": n_pruned, "sweep_seconds": time.perf_counter() - t0})
        note = [
            f"Sweep of {plan.base_cfg.model} on {ds.name}: {len(df)} trials, {n_pruned} stopped early by ASHA "
            f"({executor}). Search: Optuna TPE over lr {plan.lr}, batch size {list(plan.batch_sizes)}, weight decay "
            f"{plan.weight_decay}; objective {METRIC} on a {plan.val_fraction:g} holdout of train."
        ]
        if best is not None:
            log_metrics({"best_val_acc": best["val_acc"], "best_test_accuracy": best["test_accuracy"]})
            set_tags(
                {
                    "best_run_id": best["run_id"],
                    "best_lr": f"{best['lr']:g}",
                    "best_batch_size": str(best["batch_size"]),
                    "best_weight_decay": f"{best['weight_decay']:g}",
                }
            )
            note.append(
                f"Best (highest {METRIC}; ties -> faster): {best['config']} -> {METRIC} {best['val_acc']:.4f}, "
                f"test accuracy {best['test_accuracy']:.4f} (run {best['run_id']})."
            )
        note.append(f"```\n{text}\n```")
        set_tags({"mlflow.note.content": "\n\n".join(note)})
    best_row = None if best is None else best.to_dict()
    return SweepResult(parent_id, exp_id, df, best_row, text, time.perf_counter() - t0)
