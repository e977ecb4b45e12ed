"""Entry point ``study``: the reference notebooks' comparisons, one command each.

A study is one parent run (experiment ``study-<name>``) with one child run per (configuration,
seed). Each child trains and evaluates one configuration and carries the same metric names as
``main`` (``test_accuracy``, ``test_macro_f1``, ``train_accuracy``, ``overfit_gap``,
``train_seconds``, ``seconds_per_epoch``, ``inference_ms_per_image``, ``num_params`` and the
per-epoch ``test_acc`` curve), with its ``evaluate`` step as a grandchild run. The parent logs the
comparison table and figures (``pipelines.compare``), picks the champion by ``CHAMPION_RULE``,
registers the ONNX models of champion and runner-up with aliases ``champion`` / ``challenger``
and writes the verdict into its description.

Idempotent: each child is tagged with a hash of what determines its result (data fingerprint,
model and options, resolved recipe, seed, device, precision); re-running a study reuses children
that already FINISHED with the same hash and re-opens the parent of the same study spec, so a
crashed study continues where it stopped.

Children run serially in this process (``executor="local"``) or as Ray Tune trials
(``executor="ray"``); both through ``pipelines.trials``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import click

from models import list_models, model_info
from pipelines import registration
from pipelines.comparison import (
    CHAMPION_RULE,
    TRIALS_ARTIFACT,
    display_frame,
    log_comparison,
    quiet_downloads,
    render,
    runs_frame,
)
from pipelines.config import DataConfig, ExportConfig, as_params, data_config
from pipelines.data import Dataset, default_classes
from pipelines.params import param, parsed
from pipelines.parsing import AUTO, ConfigError, parse_choice
from pipelines.trained import load_data
from pipelines.trials import (
    VARIANT_KEYS,
    TrialResult,
    TrialSpec,
    make_train_cfg,
    params_hash,
    run_seeds,
    run_trial,
    seeds_together,
)
from tracking import experiment_id_for, tracked_run
from tracking.artifacts import log_json
from tracking.offline import replay_pending
from tracking.queries import find_experiment_id, find_runs, get_run_record, run_experiment_id
from tracking.registry import (
    CHALLENGER,
    CHAMPION,
    default_model_name,
    find_model_version,
    set_alias,
    set_model_version_tags,
)
from tracking.runs import log_metrics, log_params, set_tags

QUICK_EPOCHS = 2  # --scale quick: a smoke run of the whole study in seconds to minutes


@dataclass(frozen=True)
class Variant:
    """One configuration of a study: a model and its settings as raw strings (parsed by pipelines.config)."""

    label: str
    model: str
    options: dict[str, str] = field(default_factory=dict)  # TrainConfig fields: pooling, lr, weight_decay, ...


@dataclass(frozen=True)
class Study:
    dataset: str  # the reference notebook's data set (any study runs on another with --dataset, e.g. digits)
    variants: tuple[Variant, ...]
    epochs: int | None  # the notebook's epochs; None = each model's recipe
    notebook: str  # which reference notebook the study comes from (file in ../shared/seeds/)
    question: str  # what the notebook compares, written into the parent's description
    reference: str = ""  # the notebook's own numbers (Colab T4), for the description


def _v(label: str, model: str, **options: str) -> Variant:
    return Variant(label, model, dict(options))


# The reference notebooks' comparisons. Recipes (optimizer, lr, batch, epochs) are each model's notebook recipe
# (models/__init__.py); only what a study varies is written here.
STUDIES: dict[str, Study] = {
    "pooling": Study(
        "cifar100",
        (
            _v("stride", "pooling_cnn", pooling="stride"),
            _v("max", "pooling_cnn", pooling="max"),
            _v("avg", "pooling_cnn", pooling="avg"),
        ),
        500,
        "lab2-cifar100-pooling-onnx-landscape.md, lab2.2-cifar100-pooling-report.md",
        "Downsampling x4 by conv stride vs max pooling vs average pooling (33,219 params each): "
        "quality, train time and overfitting.",
        "notebook (T4, 500 epochs, classes 0,33,41): test acc stride ~90%, max 92.67%, avg 92.67%; "
        "train time 38 s / 98 s / 100 s; train acc reaches 100% (val loss rises after ~100-150 epochs).",
    ),
    "mnist_arch": Study(
        "mnist",
        (_v("fcnet", "fcnet"), _v("simple_cnn", "simple_cnn"), _v("resnet_like", "resnet_like")),
        10,
        "cnn-vs-fc-architecture-studies.md (1.1)",
        "Fully connected vs simple CNN vs CNN with residual blocks on MNIST (Adam 1e-3, batch 128).",
        "notebook: test acc .9806 / .9911 / .9905; train 82 / 281 / 591 s; 567,434 / 241,546 / 290,058 params.",
    ),
    "cifar10_arch": Study(
        "cifar10",
        (
            _v("deep_fcnet", "deep_fcnet"),
            _v("resnet_cifar", "resnet_cifar"),
            _v("resnet_cifar_reg", "resnet_cifar_reg"),
        ),
        10,
        "cnn-vs-fc-architecture-studies.md (1.2)",
        "Deep FC vs ResNet vs regularised ResNet (weight decay, dropout, augmentation) on CIFAR-10: "
        "accuracy and overfitting.",
        "notebook: test acc .478 / .827 / .793.",
    ),
    "kernel": Study(
        "cifar10",
        (
            _v("k3", "cnn_k3"),
            _v("k5", "cnn_k5"),
            _v("k7", "cnn_k7"),
            _v("combo_1x1_3x3", "cnn_combo"),
        ),
        10,
        "cnn-vs-fc-architecture-studies.md (2.1)",
        "Kernel size 3x3 vs 5x5 vs 7x7 vs 1x1+3x3 at ~20k parameters each.",
        "notebook: test acc .5329 / .5503 / .5445 / .4378; train ~585 s each.",
    ),
    "depth": Study(
        "cifar10",
        (
            _v("shallow", "shallow_cnn"),
            _v("medium", "medium_cnn"),
            _v("deep", "deep_cnn"),
            _v("residual", "residual_cnn"),
        ),
        10,
        "cnn-vs-fc-architecture-studies.md (2.2)",
        "CNN depth 2 vs 4 vs 6 conv layers vs residual connections: accuracy, time, gradient flow.",
        "notebook: test acc .4608 / .6093 / .6872 / .7883; train 806 / 3334 / 6333 / 11413 s.",
    ),
    "custom": Study(
        "cifar10",
        (_v("custom_layers", "cnn_custom"), _v("standard_layers", "cnn_standard")),
        5,
        "cnn-vs-fc-architecture-studies.md (3.1)",
        "Custom layers (WS-conv, learnable Swish, CBAM attention, mixed pooling) vs their standard twins.",
        "notebook (5 epochs): custom test acc .8876; train 201 s custom vs 131 s standard.",
    ),
    "residual": Study(
        "cifar10",
        (_v("basic", "basic_resnet"), _v("bottleneck", "bottleneck_resnet"), _v("wide", "wide_resnet")),
        10,
        "cnn-vs-fc-architecture-studies.md (3.2)",
        "Residual block variants: basic vs bottleneck vs wide (304,810 / 33,770 / 886,762 params).",
    ),
    "keras": Study(
        "cifar10",
        (_v("lr_decay", "keras_cnn"), _v("no_decay", "keras_cnn", lr_schedule="none")),
        25,
        "keras-cifar10-cnn.md",
        "The Keras notebook's CNN with its lr/epochs decay (the notebook's) vs constant lr (ablation of the decay).",
        "notebook (25 epochs, batch 32, SGD 0.01 momentum 0.9, decay lr/epochs): test acc 76.63%.",
    ),
}

# ---- the plan: everything checked before any run exists ----


@dataclass
class StudyPlan:
    name: str
    data_cfg: DataConfig
    seeds: list[int]
    epochs: int | None
    variants: list[Variant]
    trials: list[TrialSpec]
    known: Study | None  # the table's entry, None for an explicit list

    def params(self) -> dict[str, str]:
        """Resolved values under ``study.*``: ``mlflow run`` logged the raw MLproject ones under the plain names."""
        out = {
            "name": self.name,
            **as_params(self.data_cfg),
            "seeds": ",".join(map(str, self.seeds)),
            "epochs": str(self.epochs or AUTO),
            "configs": ";".join(f"{v.label}={spec_text(v)}" for v in self.variants),
            "device": self.trials[0].train_cfg.device,
            "precision": self.trials[0].train_cfg.precision,
            "champion_rule": CHAMPION_RULE,
        }
        return {f"study.{k}": v for k, v in out.items()}


def spec_text(v: Variant) -> str:
    return v.model + (":" + ",".join(f"{k}={x}" for k, x in v.options.items()) if v.options else "")


def parse_configs(raw: str) -> list[Variant]:
    """``model[:key=value,...]`` separated by ``;``, e.g. ``fcnet;pooling_cnn:pooling=avg,lr=0.01``."""
    variants = []
    for item in (p.strip() for p in str(raw).split(";")):
        if not item:
            continue
        model, _, rest = item.partition(":")
        model = parse_choice("configs model", model.strip(), list_models())
        options: dict[str, str] = {}
        for kv in (p.strip() for p in rest.split(",") if p.strip()):
            key, eq, value = kv.partition("=")
            key = key.strip()
            if not eq or key not in VARIANT_KEYS:
                raise ConfigError(f"configs: {kv!r} must be key=value with key one of {', '.join(VARIANT_KEYS)}")
            options[key] = value.strip()
        make_train_cfg(model, **options)  # checks every value now
        variants.append(Variant(item, model, options))
    if not variants:
        raise ConfigError("configs must name at least one model, e.g. 'fcnet;simple_cnn'")
    if len({v.label for v in variants}) != len(variants):
        raise ConfigError(f"configs must not repeat a configuration; got {raw!r}")
    return variants


def plan_study(
    name: str,
    configs: str = "",
    seeds="0,1,2",
    scale: str = "full",
    epochs=AUTO,
    dataset: str = "",
    data_dir: str = "",
    classes: str = "default",
    device: str = AUTO,
    precision: str = AUTO,
    variants: list[Variant] | None = None,
) -> StudyPlan:
    """Resolve a study name (or an explicit list, or ``variants``) into its trials; every parameter is checked here."""
    name = str(name).strip()
    known = STUDIES.get(name)
    if known is None and not str(configs).strip() and not variants:
        raise ConfigError(
            f"study must be one of {', '.join(STUDIES)} (or any name with --configs model[:key=value,...];...); "
            f"got {name!r}"
        )
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ConfigError(f"study name must be letters, digits, '_', '-' or '.'; got {name!r}")
    v = parsed("study", scale=scale, seeds=seeds, epochs=epochs)
    scale, seed_list, n_epochs = v["scale"], v["seeds"], v["epochs"]
    if variants:
        for v in variants:
            make_train_cfg(v.model, **v.options)  # checks every value now
    else:
        variants = parse_configs(configs) if str(configs).strip() else list(known.variants)
    if n_epochs is None:
        n_epochs = QUICK_EPOCHS if scale == "quick" else (known.epochs if known else None)
    ds_name = dataset or (known.dataset if known else model_info(variants[0].model).dataset)
    data_cfg = data_config(ds_name, data_dir, classes)
    if data_cfg.data_dir:
        data_cfg = replace(data_cfg, data_dir=str(Path(data_cfg.data_dir).resolve()))  # Ray workers start elsewhere
    trials = []
    for v in variants:
        for seed in seed_list:
            raw = {**v.options, "seed": seed, "device": device, "precision": precision}
            if n_epochs is not None:
                raw["epochs"] = n_epochs
            cfg = make_train_cfg(v.model, **raw)
            trials.append(TrialSpec(v.label, f"{v.label}-s{seed}", data_cfg, cfg, {"study": name}))
    return StudyPlan(name, data_cfg, seed_list, n_epochs, variants, trials, known)


# ---- the study ----


def _spec_hash(plan: StudyPlan, ds: Dataset) -> str:
    key = [plan.name, sorted(params_hash(t, ds) for t in plan.trials)]
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:20]


def _old_parent(experiment_id: str, spec_hash: str) -> str | None:
    if os.environ.get("MLFLOW_RUN_ID"):
        return None  # under `mlflow run` the entry point's run is the parent
    runs = find_runs([experiment_id], f"tags.step = 'study' and tags.spec_hash = '{spec_hash}'")
    return runs[0].run_id if runs else None


def select_champion(summary) -> tuple[str, str | None]:
    """(champion, runner-up) configuration by ``CHAMPION_RULE`` (the summary is ranked already)."""
    configs = list(summary["config"])
    return configs[0], (configs[1] if len(configs) > 1 else None)


def _best_run(df, config: str) -> tuple[str, float]:
    """The run standing for a configuration in the registry: its best seed (ties -> faster)."""
    rows = df[df["config"] == config].sort_values(["test_accuracy", "train_seconds"], ascending=[False, True])
    return str(rows.iloc[0]["run_id"]), float(rows.iloc[0]["test_accuracy"])


def register(df, summary, ds: Dataset, name: str, study: str) -> dict[str, str]:
    """The best seed of the first- and second-ranked configuration, registered as ``champion`` / ``challenger``.

    The ranking is the study's (mean over seeds), so exports here never apply the single-run
    champion rule; a run registered already is re-used.
    """
    out: dict[str, str] = {}
    champion, challenger = select_champion(summary)
    for alias, config in ((CHAMPION, champion), (CHALLENGER, challenger)):
        if config is None:
            continue
        run_id, score = _best_run(df, config)
        version = find_model_version(name, "train_run_id", run_id)
        if version is None:
            from pipelines import export_onnx  # the study's models are exported by the `export_onnx` step

            exported = export_onnx.run(
                run_id, ExportConfig(name), dataset=ds, test_accuracy=score, nested=True, promote=False
            )
            version = str(exported.version)
        mean = float(summary.loc[summary["config"] == config, "test_accuracy_mean"].iloc[0])
        set_model_version_tags(name, version, {"study": study, "config": config, "mean_test_accuracy": f"{mean:.6f}"})
        set_alias(name, alias, version)
        out[alias] = version
        out[f"{alias}_config"] = config
    return out


def verdict(summary, plan: StudyPlan) -> str:
    """The parent's description: question, ranking by the rule, cost and overfitting, the notebook's numbers."""
    s = summary.set_index("config")
    champion, challenger = select_champion(summary)

    def acc(c):
        return f"{s.loc[c, 'test_accuracy_mean']:.4f} ± {s.loc[c, 'test_accuracy_std']:.4f}"

    fastest = s["train_seconds_mean"].idxmin()
    slowest = s["train_seconds_mean"].idxmax()
    overfit = s["overfit_gap_mean"].idxmax()
    least = s["overfit_gap_mean"].idxmin()
    lines = [
        f"Study `{plan.name}` on {plan.data_cfg.dataset}, seeds {','.join(map(str, plan.seeds))}, "
        f"epochs {plan.epochs or 'per recipe'}.",
    ]
    if plan.known:
        lines.append(f"Question ({plan.known.notebook}): {plan.known.question}")
    lines.append(f"Rule: {CHAMPION_RULE}.")
    verdict_line = f"Verdict: champion **{champion}** (test accuracy {acc(champion)})"
    if challenger:
        verdict_line += f", runner-up **{challenger}** ({acc(challenger)})"
    lines.append(verdict_line + ".")
    if len(s) > 1:
        ratio = s.loc[slowest, "train_seconds_mean"] / max(s.loc[fastest, "train_seconds_mean"], 1e-9)
        lines.append(
            f"Train time: fastest {fastest} ({s.loc[fastest, 'train_seconds_mean']:.1f} s), slowest {slowest} "
            f"({s.loc[slowest, 'train_seconds_mean']:.1f} s, {ratio:.1f}x). Overfitting (train - test accuracy): "
            f"largest {overfit} ({s.loc[overfit, 'overfit_gap_mean']:.4f}), smallest {least} "
            f"({s.loc[least, 'overfit_gap_mean']:.4f})."
        )
    if plan.known and plan.known.reference:
        lines.append(f"Reference, {plan.known.reference}")
    return "\n\n".join(lines)


@dataclass
class StudyResult:
    run_id: str
    experiment_id: str
    summary: object  # pandas frame: one row per configuration, ranked by the champion rule
    text: str  # the table as printed
    verdict: str  # the parent's description
    champion: str
    challenger: str | None
    registered: dict[str, str]  # alias -> version, <alias>_config -> configuration
    trials: list[TrialResult]
    seconds: float


def _experiments(plan: StudyPlan, experiment: str | None, within_run: str | None) -> tuple[str, tuple[str, ...]]:
    """The study's experiment and the others whose finished trials it reuses."""
    if within_run:
        exp_id = run_experiment_id(within_run)
        own = find_experiment_id(f"study-{plan.name}")
        return exp_id, ((own,) if own and own != exp_id else ())
    return experiment_id_for(experiment or f"study-{plan.name}"), ()


def _run_trials(
    plan, ds, parent_id, exp_id, executor, ray_address, max_concurrent, reuse_from, together
) -> list[TrialResult]:
    if executor == "ray":
        from pipelines.ray_trials import run_trials_on_ray  # Ray only when asked for: a heavy import

        return run_trials_on_ray(plan.trials, parent_id, exp_id, ray_address, max_concurrent)
    results = []
    for spec, r in _local_trials(plan, ds, parent_id, exp_id, reuse_from, together):
        results.append(r)
        click.echo(
            f"  {spec.run_name}: test_accuracy {r.metrics.get('test_accuracy', float('nan')):.4f}"
            + (" (reused)" if r.reused else f" ({r.seconds:.1f} s)"),
            err=True,
        )
    return results


def _local_trials(plan, ds, parent_id, exp_id, reuse_from, together) -> Iterator[tuple[TrialSpec, TrialResult]]:
    """The trials in plan order, each as it ends; with ``together``, each configuration's seeds as one batch."""
    progress = sys.stderr.isatty()
    for label in dict.fromkeys(spec.label for spec in plan.trials):
        specs = [spec for spec in plan.trials if spec.label == label]
        if together:
            yield from zip(specs, run_seeds(specs, parent_id, exp_id, ds, progress, reuse_from))
            continue
        for spec in specs:
            yield spec, run_trial(spec, parent_id, exp_id, dataset=ds, progress=progress, reuse_from=reuse_from)


def _note(summary, plan: StudyPlan, text: str, registered: dict, registered_model_name: str | None) -> str:
    note = verdict(summary, plan)
    if registered:
        note += (
            f"\n\nRegistered `{registered_model_name}`: champion v{registered['champion']}"
            + (f", challenger v{registered['challenger']}" if "challenger" in registered else "")
            + f" (`models:/{registered_model_name}@champion`)."
        )
    return note + f"\n\n```\n{text}\n```"


def run_study(
    plan: StudyPlan,
    experiment: str | None = None,
    registered_model_name: str | None = None,  # auto = <dataset>-<study>[-c<ids>]; None/none = do not register
    executor: str = "local",
    ray_address: str | None = None,
    max_concurrent: int | None = None,
    within_run: str | None = None,
    dataset: Dataset | None = None,
    batch_seeds: str = AUTO,
) -> StudyResult:
    """Run (or continue) a study; returns its run id, the summary frame, champion info and the table text.

    ``batch_seeds``: with the local executor, train each configuration's seeds together as one batched
    computation (``pipelines.batched``; each seed still its own child run): ``true``, ``false``, or ``auto``
    (where that measured faster: ``trials.SEEDS_TOGETHER_FASTER``). Models it cannot batch train one by one.

    With ``within_run`` (the active run, e.g. ``reproduce``) the study is a new child of it in the
    parent's experiment, and finished trials are also reused from the study's own experiment.
    ``dataset``: ``plan.data_cfg`` already loaded by the caller (else loaded here).
    """
    executor = param("executor", "study").parse(executor)
    together = seeds_together(param("batch_seeds", "study").parse(batch_seeds), plan.trials[0].train_cfg.device)
    quiet_downloads()
    ds = dataset or load_data(plan.data_cfg)  # bad data fails here, before any run exists
    default_name = default_model_name(ds.name, plan.name, ds.class_ids, default_classes(ds.name))
    registered_model_name = registration.resolve_name(registered_model_name, default_name)
    registration.check(registered_model_name, ds)  # a name holding another kind of model: refused before training
    exp_id, reuse_from = _experiments(plan, experiment, within_run)
    spec_hash = _spec_hash(plan, ds)
    resume_id = None if within_run else _old_parent(exp_id, spec_hash)
    t0 = time.perf_counter()
    with tracked_run(f"study-{plan.name}", exp_id, nested=bool(within_run), run_id=resume_id) as parent_id:
        if resume_id is None:
            log_params(plan.params())
        else:  # what the interrupted attempt kept locally while its server was down goes up first
            replay_pending(parent_id, end=False)
        set_tags(
            {
                "step": "study",
                "study": plan.name,
                "spec_hash": spec_hash,
                "dataset": ds.name,
                "executor": executor,
                "seeds_together": str(together and executor == "local").lower(),
                "data_fingerprint": ds.fingerprint()[:16],
            }
        )
        results = _run_trials(plan, ds, parent_id, exp_id, executor, ray_address, max_concurrent, reuse_from, together)
        run_ids = [r.run_id for r in results]
        log_json({"run_ids": run_ids, "reused": [r.run_id for r in results if r.reused]}, TRIALS_ARTIFACT)
        records = [get_run_record(i) for i in run_ids]
        summary = log_comparison(records, f"study {plan.name}")
        text = render(display_frame(summary), f"study {plan.name} ({ds.name}, seeds {plan.seeds})")
        champion, challenger = select_champion(summary)
        registered = (
            register(runs_frame(records), summary, ds, registered_model_name, plan.name)
            if registered_model_name
            else {}
        )
        best = summary.iloc[0]
        log_metrics(
            {
                "champion_test_accuracy_mean": best["test_accuracy_mean"],
                "champion_test_accuracy_std": best["test_accuracy_std"],
                "trials": len(results),
                "trials_reused": sum(r.reused for r in results),
                "study_seconds": time.perf_counter() - t0,
            }
        )
        note = _note(summary, plan, text, registered, registered_model_name)
        set_tags(
            {
                "champion": champion,
                "challenger": challenger or "",
                "mlflow.note.content": note,
                **({"registered_model": registered_model_name} if registered else {}),
            }
        )
    seconds = time.perf_counter() - t0
    return StudyResult(parent_id, exp_id, summary, text, note, champion, challenger, registered, results, seconds)
