"""What a ``reproduce`` run will do, before it does it: per experiment its configurations x seeds,
epochs, data, the trials reused from earlier runs and an estimate of the wall time on this machine.

The estimate comes from a short timed probe per model (a few training steps on random data of the
experiment's input shape and batch size, on the chosen device and precision; the fastest step
counts), cached per (model, options, input shape, batch size, device, precision) within the process. Reuse is decided as
``run_trial`` decides it (``params_hash`` + ``_finished``), without creating anything.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import cache

import torch
import torch.nn.functional as F

from models import create_model
from pipelines.data import Dataset
from pipelines.device import autocast_dtype, pick_device, pick_precision
from pipelines.reproduce.report import DataUsed
from pipelines.runner import place
from pipelines.trials import TrialSpec, _finished, params_hash
from tracking.queries import find_experiment_id

WARMUP_STEPS = 2  # the first steps pay for allocation, thread start-up and kernel selection: not timed
TIMED_STEPS = 3
EVAL_FRACTION = 1 / 3  # a forward pass costs about a third of a training step (forward + backward + update)
PROBE_CLASSES = 100  # the head's width hardly matters for the time; fixed so probes are shared


@dataclass
class ExperimentPlan:
    name: str
    configs: list[str]
    seeds: list[int]
    epochs: int
    data: DataUsed
    trials: int
    reused: list[str] = field(default_factory=list)  # run names of trials a finished run stands for
    seconds: float = 0.0  # estimated wall time of the trials still to train
    per_config: dict[str, float] = field(default_factory=dict)  # one trial's estimate per configuration


@cache
def step_seconds(
    model: str, options: tuple, in_shape: tuple[int, int, int], batch_size: int, device: str, precision: str
) -> float:
    """Seconds per training step of ``model`` at ``batch_size``: the mean of a few timed steps on random data."""
    dev = pick_device(device)
    prec = pick_precision(precision, dev)
    channels = in_shape[2]
    torch.manual_seed(0)
    mean, std = (0.5,) * channels, (0.25,) * channels
    net = create_model(model, num_classes=PROBE_CLASSES, in_shape=in_shape, mean=mean, std=std, **dict(options))
    net = place(net, dev).train()
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    x = torch.rand(batch_size, *in_shape, device=dev) * 255  # the trainer feeds NHWC float images in 0..255
    y = torch.randint(0, PROBE_CLASSES, (batch_size,), device=dev)
    dtype = autocast_dtype(prec)

    def step():
        with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = F.cross_entropy(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(WARMUP_STEPS):
        step()
    times = []
    for _ in range(TIMED_STEPS):
        _sync(dev)
        t0 = time.perf_counter()
        step()
        _sync(dev)
        times.append(time.perf_counter() - t0)
    return max(min(times), 1e-6)  # the fastest step: the machine's speed when no other process takes it


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def trial_seconds(spec: TrialSpec, ds: Dataset, epochs: int) -> float:
    """Estimated wall time of one trial: (training steps + an evaluation pass) per epoch x epochs."""
    cfg = spec.train_cfg
    batch = int(cfg.recipe()["batch_size"])
    per_step = step_seconds(
        cfg.model, tuple(sorted(cfg.model_options().items())), ds.in_shape, batch, cfg.device, cfg.precision
    )
    train_steps = math.ceil(len(ds.y_train) / batch)
    eval_steps = math.ceil(len(ds.y_test) / batch) + math.ceil(len(ds.y_train) / batch)  # test + train accuracy
    return epochs * per_step * (train_steps + EVAL_FRACTION * eval_steps)


def reuse_experiments(name: str, experiment: str | None) -> list[str]:
    """The experiments ``run_study`` looks in for finished trials (the parent's and ``study-<name>``), if they exist."""
    found = (find_experiment_id(experiment or "reproduce"), find_experiment_id(f"study-{name}"))
    return [e for e in dict.fromkeys(found) if e]


def plan_experiment(name: str, study_plan, ds: Dataset, data: DataUsed, experiment: str | None) -> ExperimentPlan:
    """One experiment's plan from its study plan: reused trials cost nothing, the others their estimate."""
    epochs = int(study_plan.trials[0].train_cfg.recipe()["epochs"])
    p = ExperimentPlan(
        name, [v.label for v in study_plan.variants], list(study_plan.seeds), epochs, data, len(study_plan.trials)
    )
    where = reuse_experiments(name, experiment)
    for spec in study_plan.trials:
        seconds = trial_seconds(spec, ds, epochs)
        p.per_config.setdefault(spec.label, seconds)
        if where and _finished(where, params_hash(spec, ds)) is not None:
            p.reused.append(spec.run_name)
        else:
            p.seconds += seconds
    return p


def fit_budget(plans: list[ExperimentPlan], max_minutes: float | None) -> tuple[list[str], list[str]]:
    """(experiments to run, experiments left out): cheapest first while the running total fits the budget."""
    if max_minutes is None:
        return [p.name for p in plans], []
    kept, left, total = [], [], 0.0
    for p in sorted(plans, key=lambda p: p.seconds):
        if total + p.seconds <= max_minutes * 60:
            kept.append(p.name)
            total += p.seconds
        else:
            left.append(p.name)
    return kept, left


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def render(plans: list[ExperimentPlan], skipped: dict[str, str], left: list[str], max_minutes: float | None) -> str:
    """The plan as text: one block per experiment, then the total and what the time budget leaves out."""
    lines = ["reproduce plan (estimates from a timed probe per model on this machine):"]
    for p in plans:
        mark = "  [left out: time]" if p.name in left else ""
        lines.append(
            f"{p.name}: {len(p.configs)} configurations x {len(p.seeds)} seed(s) ({','.join(map(str, p.seeds))}), "
            f"{p.epochs} epochs, data {p.data.kind}: {p.data.label or p.data.dataset}; "
            f"{len(p.reused)} of {p.trials} trials reused; estimate {_duration(p.seconds)}{mark}"
        )
        for label, seconds in p.per_config.items():
            lines.append(f"  {label}: {_duration(seconds)} per seed")
    for name, why in skipped.items():
        lines.append(f"{name}: nothing to train ({why})")
    run_total = sum(p.seconds for p in plans if p.name not in left)
    allowed = f" of {max_minutes:g} min allowed" if max_minutes else ""
    lines.append(f"total estimate: {_duration(run_total)}{allowed}")
    if left:
        lines.append(f"left out (time): {', '.join(left)}")
    return "\n".join(lines)
