"""The seeds of one configuration trained together: one process, one batched computation per step.

``fit_seeds`` is ``pipelines.trainer.fit`` for K models of one architecture that differ in their
initial weights and seed. Their parameters and buffers are stacked ([K, ...] per tensor,
``torch.func.stack_module_state``) and each step runs the K forward and backward passes as one
``vmap`` over ``functional_call``: every layer runs once on K times the work (a convolution becomes
one grouped convolution) instead of K times on small work. That pays only where one model leaves the
device idle (expected on a GPU with these small models, not measured yet); a CPU that one model keeps
busy gets slower (bench/README.md).

What ``fit`` does per seed stays per seed: the shuffle (``randperm`` on a CPU generator seeded
``seed``), the augmentation draws (a generator on the device seeded ``seed + 1``), BatchNorm's batch
statistics and running statistics (the buffers are stacked too), the optimizer state (SGD with
momentum and weight decay and Adam are elementwise, so one optimizer over the stacked tensors steps
each slice as K optimizers would), the learning-rate schedule and the per-epoch metrics, validated
by the same ``validate`` on each seed's own model. On CPU in fp32 the results equal ``fit``'s with
the same seeds up to float rounding (``tests/test_batched.py``): the batched kernels sum in another
order. Training amplifies that rounding exactly as it amplifies any other (another thread count,
another CPU): where Adam divides near-zero gradients by their own running scale, where max pooling's
argmax flips at a near-tie, in deep BatchNorm nets, seeds trained together drift from seeds trained one
by one about as far as one-by-one runs with another thread count drift from each other
(bench/README.md, "Seeds together").

Not batched (``can_batch`` is false and ``fit_seeds`` raises ``ValueError``; callers train the seeds
one by one): models with ``apply_constraints`` (a per-model step after the optimizer), dropout (its
draws come from the global generator in ``fit``'s order, which one vmapped step cannot follow) and
fp16 (one GradScaler over all seeds would skip every seed's step when one of them overflows).
Checkpoints are ``fit``'s, one file per seed (its weights, its slice of the optimizer state, its
generators): a seed stopped or finished here resumes with ``fit`` as if it had trained alone.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from torch.func import functional_call, stack_module_state, vmap
from tqdm import tqdm

from models.layers import Flatten, FlattenLinear
from pipelines.device import autocast_dtype, tune_cpu_allocator
from pipelines.trainer import (
    LossFn,
    PredictFn,
    TrainState,
    ValidateFn,
    _summary,
    argmax,
    augment_batch,
    cross_entropy,
    evaluate_epoch,
    make_optimizer,
    make_scheduler,
    save_checkpoint,
    stop_at_epoch_end,
    validate_classifier,
)

# Layers whose training forward differs from their eval forward only in memory layout (same values), and asks
# a tensor for its layout, which vmap cannot answer: the batched step runs their eval forward.
LAYOUT_ONLY_IN_TRAINING = (Flatten, FlattenLinear)

# (index of the seed in ``seeds``, epoch, metrics): ``fit``'s ``on_epoch`` for each seed in turn
SeedEpochCallback = Callable[[int, int, dict[str, float]], None]


def unbatchable_reason(model: nn.Module, precision: str = "fp32") -> str | None:
    """Why ``fit_seeds`` cannot train copies of ``model`` as ``fit`` would, or None when it can."""
    if callable(getattr(model, "apply_constraints", None)):
        return f"{type(model).__name__} applies constraints after each optimizer step"
    dropout = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]
    if dropout:
        return f"{type(dropout[0]).__name__} draws from the global generator in fit's order"
    if precision == "fp16":
        return "fp16 scales all seeds' losses with one GradScaler"
    return None


def can_batch(model: nn.Module, precision: str = "fp32") -> bool:
    """Whether ``fit_seeds`` trains copies of ``model`` exactly as ``fit`` would, one by one."""
    return unbatchable_reason(model, precision) is None


@dataclass
class _Stacked:
    """K models as one: stacked parameters (what the optimizer steps) and buffers, called through a template."""

    template: nn.Module  # the architecture on the meta device: holds no values of its own
    params: dict[str, nn.Parameter]  # [K, ...] each
    buffers: dict[str, torch.Tensor]  # [K, ...] each, updated in place (BatchNorm running statistics)

    @classmethod
    def of(cls, models: Sequence[nn.Module]) -> _Stacked:
        # the template is the first model: the others must be the same layers (repr) with the same tensor shapes
        kinds = [(repr(m), [(k, v.shape) for k, v in m.state_dict().items()]) for m in models]
        if any(kind != kinds[0] for kind in kinds[1:]):
            raise ValueError("fit_seeds needs models of one architecture (same parameter names and shapes)")
        params, buffers = stack_module_state(list(models))
        template = copy.deepcopy(models[0]).to("meta").train()
        for module in template.modules():
            if isinstance(module, LAYOUT_ONLY_IN_TRAINING):
                module.eval()
        return cls(template, {k: nn.Parameter(v.detach()) for k, v in params.items()}, buffers)

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor, loss_fn: LossFn) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-seed losses [K] and logits [K, B, ...] of per-seed batches ``xb`` [K, B, ...], ``yb`` [K, B, ...]."""

        def one(params, buffers, x, y):
            logits = functional_call(self.template, (params, buffers), (x,))
            return loss_fn(logits, y), logits

        return vmap(one)(self.params, self.buffers, xb, yb)

    @torch.no_grad()
    def copy_to(self, models: Sequence[nn.Module]) -> None:
        """Each seed's slice into its own model (its memory layout kept), for evaluation and at the end."""
        stacked = {**self.params, **self.buffers}
        for k, model in enumerate(models):
            for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
                tensor.copy_(stacked[name][k])


def _batches(
    x: torch.Tensor,
    y: torch.Tensor,
    perms: torch.Tensor,
    batch_size: int,
    aug_gens: Sequence[torch.Generator] | None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Per-seed batches [K, B, ...]: seed k's batch i is what ``fit`` draws from its permutation ``perms[k]``."""
    k, n = perms.shape
    for i in range(math.ceil(n / batch_size)):
        idx = perms[:, i * batch_size : (i + 1) * batch_size].reshape(-1)
        # index_select, not x[idx]: as in fit, the same values and a much faster gather on CPU
        xb = x.index_select(0, idx).view(k, -1, *x.shape[1:])
        yb = y.index_select(0, idx).view(k, -1, *y.shape[1:])
        if aug_gens is not None:
            xb = torch.stack([augment_batch(xb[s], gen) for s, gen in enumerate(aug_gens)])
        yield xb, yb


def _optimizer_slice(opt: torch.optim.Optimizer, k: int) -> dict:
    """The state dict of seed k's own optimizer: every per-parameter tensor of the stacked state sliced at k
    (copied, not a view of all seeds'), scalars such as Adam's step count as they are."""
    full = opt.state_dict()
    state = {
        i: {key: v[k].clone() if torch.is_tensor(v) and v.dim() > 0 else v for key, v in per_param.items()}
        for i, per_param in full["state"].items()
    }
    return {"state": state, "param_groups": full["param_groups"]}


def _save_each(paths, stacked: _Stacked, models, opt, sched, gens, aug_gens, states, recipe: dict) -> None:
    """``fit``'s checkpoint of every seed that has a path: its weights, optimizer slice, scheduler and generators."""
    stacked.copy_to(models)
    for k, (path, model) in enumerate(zip(paths, models)):
        if path is not None:
            own = make_optimizer(model, recipe)
            own.load_state_dict(_optimizer_slice(opt, k))
            save_checkpoint(path, model, own, sched, gens[k], states[k], aug_gens[k])


def fit_seeds(
    models: Sequence[nn.Module],
    *,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    recipe: dict,
    seeds: Sequence[int],
    precision: str = "fp32",
    eval_every: int = 1,
    checkpoint_every: int = 50,
    checkpoint_paths: Sequence[Path | None] | None = None,
    on_epoch: SeedEpochCallback | None = None,
    progress: bool = False,
    loss_fn: LossFn = cross_entropy,
    predict_fn: PredictFn = argmax,
    validate: ValidateFn = validate_classifier,
    x_val: torch.Tensor | None = None,
    y_val: torch.Tensor | None = None,
) -> list[TrainState]:
    """``trainer.fit`` of ``models[k]`` with ``seeds[k]`` for every k, as one batched computation.

    Returns one ``TrainState`` per seed, and the models end up holding their trained weights (and
    running statistics), as after ``fit``. Every seed's history has ``fit``'s metric names and
    evaluation cadence; ``epoch_seconds`` is the batched epoch's wall time divided evenly among the
    seeds (training and evaluation of all of them), so ``train_seconds`` adds up to the wall time.
    ``on_epoch(k, epoch, metrics)`` is ``fit``'s hook for the seed ``seeds[k]``. ``checkpoint_paths[k]``: where
    seed k's checkpoint goes, every ``checkpoint_every`` epochs and at the end (``fit``'s file: resume with ``fit``).
    Ctrl-C / SIGTERM stop at the end of the running epoch: checkpoints, then KeyboardInterrupt.
    Raises ValueError for models ``can_batch`` refuses, models of different architectures, or
    ``len(models) != len(seeds)``.
    """
    if len(models) != len(seeds) or not models:
        raise ValueError(f"fit_seeds needs one model per seed; got {len(models)} models and {len(seeds)} seeds")
    reason = unbatchable_reason(models[0], precision)
    if reason:
        raise ValueError(f"these seeds cannot train as one batched computation: {reason}; train them one by one")
    device = x_train.device
    if device.type == "cpu":
        tune_cpu_allocator()  # freed activations stay in the process: no page faults every step
    dtype = autocast_dtype(precision)
    gens = [torch.Generator().manual_seed(s) for s in seeds]  # CPU generators: same shuffles on every device
    aug_gens = [torch.Generator(device=device).manual_seed(s + 1) for s in seeds]  # in every checkpoint, as fit's
    drawing = aug_gens if recipe["augment"] else None
    stacked = _Stacked.of(models)
    opt = make_optimizer(nn.ParameterList(stacked.params.values()), recipe)
    sched = make_scheduler(opt, recipe)
    held_out = {"x_test": x_test, "y_test": y_test, "x_val": x_val, "y_val": y_val}
    states = [TrainState() for _ in seeds]
    n, bs, epochs, k = len(x_train), recipe["batch_size"], recipe["epochs"], len(seeds)
    steps = math.ceil(n / bs)
    bar = tqdm(range(epochs), unit="epoch", disable=not progress, dynamic_ncols=True, leave=False)
    with stop_at_epoch_end() as stop_signals:
        for epoch in bar:
            t0 = time.perf_counter()
            perms = torch.stack([torch.randperm(n, generator=g) for g in gens]).to(device, non_blocking=True)
            stats = torch.empty(k, steps, 2, device=device)
            for i, (xb, yb) in enumerate(_batches(x_train, y_train, perms, bs, drawing)):
                with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                    losses, logits = stacked(xb, yb, loss_fn)
                opt.zero_grad(set_to_none=True)
                losses.sum().backward()  # the seeds share no parameter: each slice gets its own loss's gradient
                opt.step()
                stats[:, i, 0] = losses.detach()
                stats[:, i, 1] = (vmap(predict_fn)(logits.detach()) == yb).flatten(1).float().mean(1)
            sched.step()
            per_seed = [_summary("train", s) for s in stats.cpu().numpy()]  # the one host sync of the epoch
            if (epoch + 1) % eval_every == 0 or epoch + 1 == epochs:
                stacked.copy_to(models)
                for metrics, model in zip(per_seed, models):
                    metrics.update(evaluate_epoch(model, validate, held_out, bs, dtype))
            seconds = (time.perf_counter() - t0) / k
            for s, (state, metrics) in enumerate(zip(states, per_seed)):
                metrics["epoch_seconds"] = seconds
                metrics["lr"] = opt.param_groups[0]["lr"]
                state.train_seconds += seconds
                state.epoch = epoch + 1
                state.history.append({"epoch": epoch + 1, **metrics})
                if on_epoch:
                    on_epoch(s, epoch + 1, metrics)
            bar.set_postfix(loss=f"{sum(m['train_loss'] for m in per_seed) / k:.3f}")
            last = epoch + 1 == epochs
            if checkpoint_paths and ((epoch + 1) % checkpoint_every == 0 or last or stop_signals):
                _save_each(checkpoint_paths, stacked, models, opt, sched, gens, aug_gens, states, recipe)
            if stop_signals and not last:
                bar.close()
                raise KeyboardInterrupt(f"{stop_signals[0]} after epoch {epoch + 1}; checkpoints saved")
    bar.close()
    stacked.copy_to(models)
    return states
