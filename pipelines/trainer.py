"""The training loop: data resident on the device, randperm slicing, one host sync per epoch.

What the reference notebooks' loop does per step and this loop avoids: a DataLoader over an
in-memory TensorDataset, one-hot float targets, and a ``loss.item()`` sync per batch. Statistics
are kept as device tensors and copied once per epoch (mean and 25/75 percentiles over batches, as
the reference notebooks draw them).
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from pipelines.device import autocast_dtype, tune_cpu_allocator

EpochCallback = Callable[[int, dict[str, float]], None]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, targets) -> scalar loss
PredictFn = Callable[[torch.Tensor], torch.Tensor]  # logits -> predicted labels, compared with the targets
# (model, x, y, batch_size, autocast dtype) -> the epoch's metrics on that split (test_* for the test set);
# with a validation split it is also called with prefix="val" and must then name its metrics val_*.
ValidateFn = Callable[..., dict[str, float]]


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), y)


def argmax(logits: torch.Tensor) -> torch.Tensor:
    return logits.argmax(1)


@dataclass
class TrainState:
    """Everything needed to resume: saved as a checkpoint, loaded with ``weights_only=True``."""

    epoch: int = 0  # epochs completed
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0


def make_optimizer(model: nn.Module, recipe: dict) -> torch.optim.Optimizer:
    params = model.parameters()
    # foreach: one fused kernel launch per parameter group instead of one per tensor
    if recipe["optimizer"] == "adam":
        return torch.optim.Adam(params, lr=recipe["lr"], weight_decay=recipe["weight_decay"], foreach=True)
    return torch.optim.SGD(
        params, lr=recipe["lr"], momentum=recipe["momentum"], weight_decay=recipe["weight_decay"], foreach=True
    )


def make_scheduler(opt: torch.optim.Optimizer, recipe: dict) -> torch.optim.lr_scheduler.LRScheduler:
    epochs = recipe["epochs"]
    if recipe["lr_schedule"] == "step":  # x0.1 at 50 % and 75 % of training
        return torch.optim.lr_scheduler.MultiStepLR(opt, [epochs // 2, epochs * 3 // 4], 0.1)
    if recipe["lr_schedule"] == "linear":  # Keras SGD(decay=lr/epochs): lr_t = lr / (1 + decay * t)
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0 / (1.0 + e / epochs))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0)


def augment_batch(x: torch.Tensor, gen: torch.Generator, max_shift: int = 4) -> torch.Tensor:
    """Random shifts (zero fill) and horizontal flips of an NHWC batch, on its device."""
    n, h, w, _ = x.shape
    flip = torch.rand(n, generator=gen, device=gen.device) < 0.5
    x = torch.where(flip[:, None, None, None].to(x.device), x.flip(2), x)
    pad = F.pad(x, (0, 0, max_shift, max_shift, max_shift, max_shift))
    dy, dx = (int(v) for v in torch.randint(0, 2 * max_shift + 1, (2,), generator=gen, device=gen.device))
    return pad[:, dy : dy + h, dx : dx + w, :]


def batch_stats(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, dtype) -> torch.Tensor:
    """Per-batch (loss, accuracy) over a data set in eval mode, as a [batches, 2] device tensor."""
    steps = math.ceil(len(x) / batch_size)
    out = torch.empty(steps, 2, device=x.device)
    model.eval()
    with torch.inference_mode(), torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        for i in range(steps):
            xb, yb = x[i * batch_size : (i + 1) * batch_size], y[i * batch_size : (i + 1) * batch_size]
            logits = model(xb).float()
            out[i, 0] = F.cross_entropy(logits, yb)
            out[i, 1] = (logits.argmax(1) == yb).float().mean()
    return out


def validate_classifier(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, dtype, prefix: str = "test"
) -> dict[str, float]:
    """``fit``'s default per-epoch evaluation: ``<prefix>_loss``/``<prefix>_acc`` (cross-entropy, top-1) with
    batch p25/p75; ``test_*`` on the test set, ``val_*`` on the validation split."""
    return _summary(prefix, batch_stats(model, x, y, batch_size, dtype).cpu().numpy())


def evaluate_epoch(
    model: nn.Module,
    validate: ValidateFn,
    held_out: dict[str, torch.Tensor | None],
    batch_size: int,
    dtype,
) -> dict[str, float]:
    """An evaluation epoch: ``test_*`` on ``held_out``'s test set, then ``val_*`` on its validation split if any."""
    metrics = validate(model, held_out["x_test"], held_out["y_test"], batch_size, dtype)
    if held_out["x_val"] is not None:
        metrics.update(validate(model, held_out["x_val"], held_out["y_val"], batch_size, dtype, prefix="val"))
    return metrics


def _summary(prefix: str, stats: np.ndarray) -> dict[str, float]:
    """Mean and 25/75 percentiles over batches, the reference notebooks' learning-curve statistics."""
    p25, p75 = np.percentile(stats, [25, 75], axis=0)
    mean = stats.mean(axis=0)
    return {
        f"{prefix}_loss": float(mean[0]),
        f"{prefix}_loss_p25": float(p25[0]),
        f"{prefix}_loss_p75": float(p75[0]),
        f"{prefix}_acc": float(mean[1]),
        f"{prefix}_acc_p25": float(p25[1]),
        f"{prefix}_acc_p75": float(p75[1]),
    }


def save_checkpoint(
    path: Path,
    model: nn.Module,
    opt,
    sched,
    gen: torch.Generator,
    state: TrainState,
    aug_gen: torch.Generator | None = None,
) -> None:
    """Atomic write (tmp + rename): a crash mid-write never leaves a half file named like a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "generator": gen.get_state(),
        "epoch": state.epoch,
        "history": state.history,
        "train_seconds": state.train_seconds,
    }
    if aug_gen is not None:  # augmentation draws continue exactly on resume
        blob["aug_generator"] = aug_gen.get_state()
        blob["aug_device"] = aug_gen.device.type
    tmp = path.with_name(path.name + ".tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)


def load_checkpoint(
    path: Path, model: nn.Module, opt, sched, gen: torch.Generator, aug_gen: torch.Generator | None = None
) -> TrainState:
    blob = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle arbitrary objects
    try:
        model.load_state_dict(blob["model"])
    except RuntimeError as e:  # missing/unexpected keys or shapes: torch's message spans many lines
        from pipelines.parsing import ConfigError  # a user error (exit 2), raised only here

        raise ConfigError(
            f"checkpoint {path} does not fit this model (written by another model or an older version of it: "
            f"{' '.join(str(e).split())[:300]}); start a new run instead of resuming this one"
        ) from None
    opt.load_state_dict(blob["optimizer"])
    sched.load_state_dict(blob["scheduler"])
    gen.set_state(blob["generator"])
    if aug_gen is not None and blob.get("aug_device") == aug_gen.device.type:
        aug_gen.set_state(blob["aug_generator"])
    return TrainState(blob["epoch"], blob["history"], blob["train_seconds"])


@contextmanager
def stop_at_epoch_end():
    """SIGINT/SIGTERM set a flag that the loop checks after each epoch; a second signal stops at once.

    Stopping on an epoch boundary makes the checkpoint exact, so a resumed run ends with the
    same weights as one that was never interrupted.
    """
    received: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum, _frame):
        received.append(signal.Signals(signum).name)
        if len(received) > 1:
            raise KeyboardInterrupt(f"second {received[-1]}: stopping now")
        tqdm.write(f"{received[-1]}: stopping after this epoch (again to stop now)")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def fit(
    model: nn.Module,
    *,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    recipe: dict,
    seed: int,
    precision: str = "fp32",
    eval_every: int = 1,
    checkpoint_every: int = 50,
    checkpoint_path: Path | None = None,
    resume: bool = False,
    on_epoch: EpochCallback | None = None,
    progress: bool = True,
    loss_fn: LossFn = cross_entropy,
    predict_fn: PredictFn = argmax,
    validate: ValidateFn = validate_classifier,
    x_val: torch.Tensor | None = None,
    y_val: torch.Tensor | None = None,
) -> TrainState:
    """Train ``model`` (already on the data's device) by ``recipe``; returns the final state. Keywords only:
    ``pipelines.runner`` passes the tensors of ``pipelines.trained.fit_tensors`` by name.

    Every ``eval_every`` epochs (and the last) the model is evaluated on the test set (``test_*``
    metrics, reported only: nothing here selects on them) and, when given, on the validation split
    ``x_val``/``y_val`` held out of the training data (``val_*``, what model selection may use).
    ``on_epoch(epoch, metrics)`` receives every epoch's numbers (the tracking hook).
    ``loss_fn``, ``predict_fn`` (for ``train_acc``) and ``validate`` default to classification;
    segmentation passes its mask loss, mask decoding and IoU/Dice validation.
    Ctrl-C / SIGTERM stop at the end of the running epoch: checkpoint, then KeyboardInterrupt.
    A crash keeps the last periodic checkpoint (the weights of a broken epoch are not saved).
    """
    device = x_train.device
    if device.type == "cpu":
        tune_cpu_allocator()  # freed activations stay in the process: no page faults every step
    dtype = autocast_dtype(precision)
    gen = torch.Generator().manual_seed(seed)  # CPU generator: same shuffles on every device
    aug_gen = torch.Generator(device=device).manual_seed(seed + 1)
    opt = make_optimizer(model, recipe)
    sched = make_scheduler(opt, recipe)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    state = TrainState()
    if resume and checkpoint_path and checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path, model, opt, sched, gen, aug_gen)
    constrain = getattr(model, "apply_constraints", None)  # e.g. Keras-style max-norm
    held_out = {"x_test": x_test, "y_test": y_test, "x_val": x_val, "y_val": y_val}
    n, bs, epochs = len(x_train), recipe["batch_size"], recipe["epochs"]
    steps = math.ceil(n / bs)
    bar = tqdm(
        range(state.epoch, epochs),
        initial=state.epoch,
        total=epochs,
        unit="epoch",
        disable=not progress,
        dynamic_ncols=True,
        leave=False,
    )
    with stop_at_epoch_end() as stop_signals:
        for epoch in bar:
            t0 = time.perf_counter()
            model.train()
            perm = torch.randperm(n, generator=gen).to(device, non_blocking=True)
            stats = torch.empty(steps, 2, device=device)
            for i in range(steps):
                idx = perm[i * bs : (i + 1) * bs]
                # index_select, not x[idx]: the same values, and a much faster gather on CPU
                xb, yb = x_train.index_select(0, idx), y_train.index_select(0, idx)
                if recipe["augment"]:
                    xb = augment_batch(xb, aug_gen)
                with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                    logits = model(xb)
                    loss = loss_fn(logits, yb)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                if constrain:
                    constrain()
                stats[i, 0] = loss.detach()
                stats[i, 1] = (predict_fn(logits.detach()) == yb).float().mean()
            sched.step()
            metrics = _summary("train", stats.cpu().numpy())  # the one host sync of the epoch
            last = epoch + 1 == epochs
            if (epoch + 1) % eval_every == 0 or last:
                metrics.update(evaluate_epoch(model, validate, held_out, bs, dtype))
            metrics["epoch_seconds"] = time.perf_counter() - t0
            metrics["lr"] = opt.param_groups[0]["lr"]
            state.train_seconds += metrics["epoch_seconds"]
            state.epoch = epoch + 1
            state.history.append({"epoch": epoch + 1, **metrics})
            shown = {key: f"{metrics[key]:.3f}" for key in ("test_acc", "val_acc", "val_miou") if key in metrics}
            bar.set_postfix(loss=f"{metrics['train_loss']:.3f}", **shown)
            if on_epoch:
                on_epoch(epoch + 1, metrics)
            if checkpoint_path and (state.epoch % checkpoint_every == 0 or last or stop_signals):
                save_checkpoint(checkpoint_path, model, opt, sched, gen, state, aug_gen)
            if stop_signals and not last:
                bar.close()
                raise KeyboardInterrupt(f"{stop_signals[0]} after epoch {state.epoch}; checkpoint saved")
    bar.close()
    return state
