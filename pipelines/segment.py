"""Entry point ``segment`` (issue 9): U-Net segmentation, trained, evaluated and exported in one run.

    python -m pipelines segment --task binary|multiclass [--epochs 25] [--data-dir DIR]
    mlflow run . -e segment -P task=multiclass

Data: the generated ``segdigits`` task (``pipelines/data/segmentation.py``) or a user's folder of
``images/*.png`` + ``masks/*.png``. Model: any zoo model registered for ``segdigits``
(``unet_small``), logits [B, N, H, W]; binary = 1 channel, sigmoid, BCE + soft Dice loss;
multiclass = one channel per class (background included), softmax/argmax, cross-entropy + soft
Dice over the digit (foreground) classes.

One MLflow run, not parent + children: ``main`` splits prep/train/evaluate/export because each
is also its own entry point working from a previous run's id. Here the data are generated (or
read) deterministically in-process and identified by their fingerprint param, and the
segmentation evaluation and export only make sense for the model this run just trained, so a
single run holds the whole story — params, per-epoch curves, checkpoint, per-class IoU/Dice
table, prediction figure, ONNX model (and registry version) — and one id is all a user needs.
A killed run resumes into the same run with ``--resume RUN_ID`` (params are re-read from it).

Logged: params (the raw values as given, ``recipe.*``, ``data.*``; ``env.*`` as tags); per epoch
``train_loss``/``train_acc`` (pixel accuracy; mean and batch p25/p75), ``test_loss``/``test_acc``
likewise on the test split plus ``test_epoch_miou``/``test_epoch_mdice``; after training, in eval
mode, ``{train,test}_{pixel_acc, miou, mdice, miou_fg, mdice_fg, eval_loss}`` and
``{split}_{iou,dice}_class_<id>`` (a class absent from both
truth and prediction has no IoU and is not logged), inference latency, ``onnx_max_abs_diff``.
Artifacts: ``reports/segmentation_report_*`` (table + CSV), ``reports/confusion_*.json``,
``figures/predictions_test.png`` (image / true / predicted mask), ``figures/learning_curves.png``,
``model/state_dict.pt`` + ``model/model_config.json`` (``pipelines.train.load_trained`` rebuilds
the model from them), ``checkpoints/last.pt``, ``history.json`` and the ONNX model.
The registry's champion rule compares the version tag ``test_accuracy``; for segmentation the
value given to it is the test mIoU (tag ``score_metric`` says so).
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from models import count_params, create_model, list_models, model_info
from pipelines.config import (
    AUTO,
    LR_SCHEDULES,
    OPTIMIZERS,
    PRECISIONS,
    ConfigError,
    parse_choice,
    parse_device,
    parse_float,
    parse_int,
)
from pipelines.data.segmentation import NAME as SEGDIGITS
from pipelines.data.segmentation import TASKS, SegDataset, load_folder, load_generated
from pipelines.device import autocast_dtype, pick_device, pick_precision
from pipelines.trainer import _summary, fit

# (parameter, default as the CLI/MLproject spell it, help). Names are MLproject parameter names.
OPTIONS: tuple[tuple[str, str, str], ...] = (
    ("task", "binary", "binary | multiclass."),
    ("data_dir", "", "Folder of images/*.png + masks/*.png (see pipelines/data/segmentation.py); empty = generated."),
    ("n_train", "1000", "Generated training canvases (ignored with --data-dir)."),
    ("n_test", "200", "Generated test canvases (ignored with --data-dir)."),
    ("size", "48", "Generated canvas size, N or HxW, e.g. 48 or 45x47 (ignored with --data-dir)."),
    ("max_digits", "3", "Most digits per generated canvas."),
    ("data_seed", "0", "Seed of the generated data (and of the 80/20 split of an unsplit folder)."),
    ("model", "unet_small", "Registered segmentation model."),
    ("base", "16", "U-Net width of the first level (doubles per level)."),
    ("depth", "3", "U-Net levels (max-pools)."),
    ("epochs", AUTO, "Epochs; auto = the model's recipe (unet_small: 25)."),
    ("batch_size", AUTO, "Batch size; auto = recipe (8)."),
    ("lr", AUTO, "Learning rate; auto = recipe (1e-3)."),
    ("momentum", AUTO, "SGD momentum; auto = recipe."),
    ("weight_decay", AUTO, "Weight decay; auto = recipe (0)."),
    ("optimizer", AUTO, "sgd | adam; auto = recipe (adam)."),
    ("lr_schedule", AUTO, "none | step | linear; auto = recipe (none)."),
    ("seed", "0", "Seed for init and shuffling."),
    ("device", AUTO, "auto | cpu | cuda | cuda:N."),
    ("precision", AUTO, "auto | fp32 | bf16 | fp16 (auto: bf16 only where native)."),
    ("eval_every", "1", "Epochs between test evaluations (last epoch always)."),
    ("checkpoint_every", "10", "Epochs between checkpoints."),
    ("registered_model_name", AUTO, "auto = <dataset>-<model>-<task>; none = log the ONNX model without registering."),
    ("parity_tol", "1e-4", "Max |onnxruntime - torch| over the test logits, else the run fails."),
)
OPTION_NAMES = tuple(name for name, _, _ in OPTIONS)
PARITY_IMAGES = 64  # test images compared between onnxruntime and torch (a batch the export never saw)
FIGURE_IMAGES = 4


@dataclass
class SegmentConfig:
    task: str = "binary"  # binary | multiclass
    data_dir: str | None = None  # None = generated segdigits
    n_train: int = 1000  # generated canvases
    n_test: int = 200
    size: tuple[int, int] = (48, 48)  # generated canvas H, W in pixels
    max_digits: int = 3
    data_seed: int = 0
    model: str = "unet_small"
    base: int = 16  # channels of the first U-Net level
    depth: int = 3  # U-Net levels
    seed: int = 0  # init + shuffling
    device: str = AUTO
    precision: str = AUTO
    eval_every: int = 1
    checkpoint_every: int = 10
    registered_model_name: str = AUTO  # "" = do not register
    parity_tol: float = 1e-4
    overrides: dict = field(default_factory=dict)  # recipe keys the user set (others: the model's recipe)
    raw: dict = field(default_factory=dict)  # every parameter as given (strings): what the run logs

    def recipe(self) -> dict:
        recipe = {**model_info(self.model).recipe, **self.overrides}
        recipe["augment"] = False  # flips/shifts would have to move the masks too: not done here
        return recipe

    def model_options(self) -> dict:
        return {"base": self.base, "depth": self.depth}

    def registered_name(self, ds: SegDataset) -> str | None:
        if self.registered_model_name == AUTO:
            return f"{ds.name}-{self.model}-{self.task}"
        return self.registered_model_name or None


def _parse_size(raw) -> tuple[int, int]:
    text = str(raw).strip().lower().replace(" ", "")
    parts = text.split("x") if "x" in text else [text, text]
    try:
        h, w = (parse_int("size", p, minimum=16) for p in parts)
    except ConfigError:
        raise ConfigError(f"size must be N or HxW with N, H, W >= 16 (e.g. 48 or 45x47), got {raw!r}") from None
    return h, w


def segment_config(**raw) -> SegmentConfig:
    """Parse the parameters (strings or values; missing ones take the defaults of ``OPTIONS``)."""
    unknown = sorted(set(raw) - set(OPTION_NAMES))
    if unknown:
        raise ConfigError(f"unknown segment parameter(s) {unknown}; known: {', '.join(OPTION_NAMES)}")
    given = {name: default for name, default, _ in OPTIONS}
    given.update({k: "" if v is None else str(v) for k, v in raw.items()})
    seg_models = [m for m in list_models() if model_info(m).dataset == SEGDIGITS]
    # strip stray quotes: `mlflow run` shell-quotes values itself, so an empty one can arrive as ''
    data_dir = given["data_dir"].strip().strip("'\"")
    name = given["registered_model_name"].strip().strip("'\"")
    cfg = SegmentConfig(
        task=parse_choice("task", given["task"], TASKS),
        data_dir=data_dir if data_dir.lower() not in ("", "none") else None,
        n_train=parse_int("n_train", given["n_train"]),
        n_test=parse_int("n_test", given["n_test"]),
        size=_parse_size(given["size"]),
        max_digits=parse_int("max_digits", given["max_digits"]),
        data_seed=parse_int("data_seed", given["data_seed"], minimum=0),
        model=parse_choice("model", given["model"], seg_models),
        base=parse_int("base", given["base"]),
        depth=parse_int("depth", given["depth"]),
        seed=parse_int("seed", given["seed"], minimum=0),
        device=parse_device(given["device"]),
        precision=parse_choice("precision", given["precision"], PRECISIONS),
        eval_every=parse_int("eval_every", given["eval_every"]),
        checkpoint_every=parse_int("checkpoint_every", given["checkpoint_every"]),
        registered_model_name="" if name.lower() in ("", "none") else name,
        parity_tol=parse_float("parity_tol", given["parity_tol"]),
        raw=given,
    )
    recipe_parsers = {
        "epochs": lambda v: parse_int("epochs", v, allow_auto=True),
        "batch_size": lambda v: parse_int("batch_size", v, allow_auto=True),
        "lr": lambda v: parse_float("lr", v, allow_auto=True),
        "momentum": lambda v: parse_float("momentum", v, positive=False, allow_auto=True),
        "weight_decay": lambda v: parse_float("weight_decay", v, positive=False, allow_auto=True),
        "optimizer": lambda v: parse_choice("optimizer", v, OPTIMIZERS, allow_auto=True),
        "lr_schedule": lambda v: parse_choice("lr_schedule", v, LR_SCHEDULES, allow_auto=True),
    }
    cfg.overrides = {k: v for k, parse in recipe_parsers.items() if (v := parse(given[k])) is not None}
    if cfg.data_dir is None and min(cfg.size) < 2**cfg.depth:
        raise ConfigError(f"depth {cfg.depth} needs a size of at least {2**cfg.depth} px, got {cfg.size}")
    try:  # a device or precision this machine does not have: fail now, before any run exists
        pick_precision(cfg.precision, pick_device(cfg.device))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return cfg


def config_from_run(run_id: str) -> SegmentConfig:
    """The config a segment run was started with (its raw params), for ``--resume``."""
    from tracking.runs import run_data

    params = run_data(run_id)[0]
    if "task" not in params or "model" not in params:
        raise ConfigError(f"run {run_id} is not a segment run (no task/model params)")
    return segment_config(**{k: params[k] for k in OPTION_NAMES if k in params})


def load_data(cfg: SegmentConfig) -> SegDataset:
    if cfg.data_dir:
        return load_folder(cfg.data_dir, cfg.task, cfg.data_seed)
    return load_generated(cfg.task, cfg.n_train, cfg.n_test, cfg.size, cfg.max_digits, cfg.data_seed)


# ---------------------------------------------------------------- losses and metrics


def dice_loss(prob: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per image ([B, H, W] probabilities vs 0/1 targets), averaged over the batch."""
    inter = (prob * target).sum((1, 2))
    denom = prob.sum((1, 2)) + target.sum((1, 2))
    return (1 - (2 * inter + eps) / (denom + eps)).mean()


def multiclass_dice_loss(prob: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per foreground class (classes 1.., summed over the whole batch), averaged over classes.

    ``prob`` [B, K, H, W] softmax probabilities, ``target`` [B, H, W] class ids. Background (class 0)
    is left out: it is most of the pixels and cross-entropy already fits it. A class absent from
    the batch scores 1 - eps / (sum of its probabilities + eps): near 0 when it is not predicted.
    """
    onehot = F.one_hot(target, prob.shape[1]).permute(0, 3, 1, 2).to(prob.dtype)
    inter = (prob * onehot).sum((0, 2, 3))
    denom = prob.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    return (1 - (2 * inter + eps) / (denom + eps))[1:].mean()


def seg_loss(logits: torch.Tensor, target: torch.Tensor, task: str) -> torch.Tensor:
    """Binary: BCE + soft Dice on the one logit channel; multiclass: cross-entropy + foreground soft Dice.

    Background is ~85 % of the generated pixels. With PyTorch's default init (``unet_small`` now
    uses He init) cross-entropy alone kept the multiclass net for 15+ epochs on a plateau where it
    separates digits from background but gives each digit pixel about even odds over the ten
    digits (train loss ~0.37; the foreground share 0.15 times ln 10 is 0.35). The Dice term, which
    weighs every digit class like the background, doubled the test foreground mIoU reached in a
    fixed budget there (0.59 vs 0.27 after 12 epochs at batch 8). With He init both end level
    (0.80 vs 0.80 after 25 epochs, seed 0); the Dice term stays for masks whose background
    dominates even more (a user's folder).
    """
    if task == "binary":
        z, t = logits[:, 0].float(), target.float()
        return F.binary_cross_entropy_with_logits(z, t) + dice_loss(torch.sigmoid(z), t)
    z = logits.float()
    return F.cross_entropy(z, target) + multiclass_dice_loss(z.softmax(1), target)


def predict_mask(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Class id per pixel [B, H, W]: sigmoid > 0.5 (logit > 0) for binary, argmax over classes otherwise."""
    return (logits[:, 0] > 0).long() if task == "binary" else logits.argmax(1)


def confusion(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[k, k] pixel counts, rows = true class, columns = predicted class (on the tensors' device)."""
    idx = target.reshape(-1).long() * num_classes + pred.reshape(-1).long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _nanmean(a: np.ndarray) -> float:
    """Mean over the defined (non-NaN) entries; NaN when there are none (no warning)."""
    return float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")


def segmentation_scores(cm: np.ndarray) -> dict:
    """Per-class IoU, Dice, precision, recall (NaN where undefined) and the pixel accuracy/means.

    IoU = TP / (TP + FP + FN), Dice = 2 TP / (2 TP + FP + FN); a class absent from both truth and
    prediction has no IoU/Dice (NaN) and is left out of the means. ``*_fg`` means skip class 0
    (background), which dominates the pixels; for binary they are the foreground's IoU/Dice.
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    fp, fn = cm.sum(0) - tp, cm.sum(1) - tp

    def ratio(num, den):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)

    iou, dice = ratio(tp, tp + fp + fn), ratio(2 * tp, 2 * tp + fp + fn)
    return {
        "iou": iou,
        "dice": dice,
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "true_pixels": cm.sum(1).astype(np.int64),
        "pred_pixels": cm.sum(0).astype(np.int64),
        "pixel_acc": float(tp.sum() / cm.sum()) if cm.sum() else float("nan"),
        "miou": _nanmean(iou),
        "mdice": _nanmean(dice),
        "miou_fg": _nanmean(iou[1:]),
        "mdice_fg": _nanmean(dice[1:]),
    }


def report_table(scores: dict, class_names: list[str]) -> pd.DataFrame:
    rows = [
        {
            "class_id": i,
            "class": name,
            **{k: float(scores[k][i]) for k in ("iou", "dice", "precision", "recall")},
            "true_pixels": int(scores["true_pixels"][i]),
            "pred_pixels": int(scores["pred_pixels"][i]),
        }
        for i, name in enumerate(class_names)
    ]
    rows.append(
        {
            "class_id": -1,
            "class": "mean (present classes)",
            "iou": scores["miou"],
            "dice": scores["mdice"],
            "precision": _nanmean(scores["precision"]),
            "recall": _nanmean(scores["recall"]),
            "true_pixels": int(scores["true_pixels"].sum()),
            "pred_pixels": int(scores["pred_pixels"].sum()),
        }
    )
    return pd.DataFrame(rows)


@torch.inference_mode()
def evaluate_tensors(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    task: str,
    num_classes: int,
    batch_size: int,
    dtype=None,
    keep: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-batch (loss, pixel accuracy) [batches, 2], the confusion matrix, and the first ``keep`` masks."""
    steps = math.ceil(len(x) / batch_size)
    stats = torch.empty(steps, 2, device=x.device)
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=x.device)
    kept = []
    model.eval()
    with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        for i in range(steps):
            xb, yb = x[i * batch_size : (i + 1) * batch_size], y[i * batch_size : (i + 1) * batch_size]
            logits = model(xb).float()
            pred = predict_mask(logits, task)
            stats[i, 0] = seg_loss(logits, yb, task)
            stats[i, 1] = (pred == yb).float().mean()
            cm += confusion(pred, yb, num_classes)
            if sum(len(k) for k in kept) < keep:
                kept.append(pred[:keep])
    masks = torch.cat(kept)[:keep] if kept else None
    return stats, cm, masks


# ---------------------------------------------------------------- training hooks


def validate_masks(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    dtype,
    prefix: str = "test",
    *,
    task: str,
    num_classes: int,
) -> dict[str, float]:
    """Per-epoch evaluation for ``pipelines.trainer.fit`` on the test split: ``test_loss``/``test_acc``
    (pixel accuracy) with batch p25/p75, and ``test_epoch_miou``/``test_epoch_mdice`` over all classes
    (``test_miou``/``test_mdice`` are the final, eval-mode numbers logged once after training)."""
    stats, cm, _ = evaluate_tensors(model, x, y, task, num_classes, batch_size, dtype)
    scores = segmentation_scores(cm.cpu().numpy())
    summary = _summary(prefix, stats.cpu().numpy())
    return {**summary, f"{prefix}_epoch_miou": scores["miou"], f"{prefix}_epoch_mdice": scores["mdice"]}


def mask_hooks(task: str, num_classes: int) -> dict:
    """``pipelines.trainer.fit``'s loss, prediction and validation for masks (its defaults classify images)."""
    return {
        "loss_fn": partial(seg_loss, task=task),
        "predict_fn": partial(predict_mask, task=task),
        "validate": partial(validate_masks, task=task, num_classes=num_classes),
    }


# ---------------------------------------------------------------- figure


def predictions_figure(images: np.ndarray, true: np.ndarray, pred: np.ndarray, class_names: list[str], title: str = ""):
    """One row per image: the image, the true mask, the predicted mask (same colours per class id)."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from pipelines import plots  # noqa: F401 - selects the Agg backend

    n, k = len(images), len(class_names)
    palette = plt.get_cmap("tab20").colors
    cmap = ListedColormap(["black", *(palette[i % len(palette)] for i in range(max(k, 2) - 1))])
    if k <= 2:
        cmap = ListedColormap(["black", "white"])
    fig, axes = plt.subplots(n, 3, figsize=(8, 2.6 * n + 0.6), squeeze=False)
    for r in range(n):
        img = images[r]
        axes[r, 0].imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255)
        for c, mask in ((1, true[r]), (2, pred[r])):
            axes[r, c].imshow(mask, cmap=cmap, vmin=-0.5, vmax=max(k, 2) - 0.5, interpolation="nearest")
        for c, name in enumerate(("image", "true mask", "predicted mask")):
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(name)
    if k > 2:
        from matplotlib.patches import Patch

        handles = [Patch(color=cmap(i), label=f"{i}: {name}") for i, name in enumerate(class_names)]
        fig.legend(handles=handles, loc="lower center", ncol=min(k, 6), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06 if k > 2 else 0, 1, 1))
    return fig


# ---------------------------------------------------------------- the entry point


def build_model(cfg: SegmentConfig, ds: SegDataset) -> tuple[nn.Module, dict]:
    """Model + the config ``pipelines.train.instantiate``/``load_trained`` rebuild it from."""
    model_config = {
        "model": cfg.model,
        "options": cfg.model_options(),
        "num_classes": ds.out_channels,
        "in_shape": list(ds.in_shape),
        "mean": list(ds.mean),
        "std": list(ds.std),
        "task": ds.task,
        "class_names": ds.class_names,
        "dataset": ds.name,
        "output": "logits [batch, num_classes, H, W]; binary: sigmoid > 0.5, multiclass: argmax over classes",
    }
    torch.manual_seed(cfg.seed)  # the initial weights depend on the seed only
    try:
        model = create_model(
            cfg.model,
            num_classes=ds.out_channels,
            in_shape=ds.in_shape,
            mean=ds.mean,
            std=ds.std,
            **cfg.model_options(),
        )
    except ValueError as e:  # e.g. images too small for the depth
        raise ConfigError(str(e)) from None
    return model, model_config


def _log_new_params(run_id: str, params: dict) -> None:
    """Log what the run does not have yet: ``mlflow run`` logged the entry point's params first, in
    its own spelling, and MLflow refuses to change a param; a resumed run has them all already."""
    from tracking.runs import log_params, run_data

    have = run_data(run_id)[0]
    new = {k: v for k, v in params.items() if k not in have}
    if new:
        log_params(new)


def run(
    cfg: SegmentConfig,
    dataset: SegDataset | None = None,
    experiment: str | None = None,
    resume_run_id: str | None = None,
    progress: bool = True,
) -> dict:
    """Train + evaluate + export one segmentation model in one run; returns the summary metrics."""
    from pipelines import plots
    from pipelines.evaluate import inference_latency, predict
    from pipelines.export_onnx import ParityError, parity, to_onnx
    from pipelines.registration import test_fingerprint
    from pipelines.train import CHECKPOINT, MODEL_CONFIG, STATE_DICT, checkpoint_dir
    from tracking import experiment_id_for, tracked_run
    from tracking.artifacts import download, log_dataset_input, log_figure, log_file, log_json, log_table
    from tracking.metrics import MetricLogger
    from tracking.registry import ModelKind, VersionSpec, check_compatible, log_onnx
    from tracking.runs import log_metrics, set_tags

    ds = dataset or load_data(cfg)  # bad data fails here, before any run exists
    kind = ModelKind(ds.name, tuple(range(ds.num_classes)), tuple(ds.class_names), tuple(ds.in_shape), cfg.task)
    if cfg.registered_name(ds):  # a name holding another kind of model is refused before training
        check_compatible(cfg.registered_name(ds), kind)
    device = pick_device(cfg.device)
    precision = pick_precision(cfg.precision, device)
    recipe = cfg.recipe()
    model, model_config = build_model(cfg, ds)
    model = model.to(device, memory_format=torch.channels_last)  # NHWC input permuted = channels_last already
    x_train = torch.from_numpy(ds.x_train).to(device).float()
    y_train = torch.from_numpy(ds.y_train).to(device).long()
    x_test = torch.from_numpy(ds.x_test).to(device).float()
    y_test = torch.from_numpy(ds.y_test).to(device).long()
    k = ds.num_classes
    fingerprint = ds.fingerprint()
    params = {
        **{name: cfg.raw.get(name, default) for name, default, _ in OPTIONS},
        **{f"recipe.{key}": v for key, v in recipe.items()},
        "data.name": ds.name,
        "data.source": ds.source,
        "data.fingerprint_sha256": fingerprint,
        "data.n_train": len(ds.x_train),
        "data.n_test": len(ds.x_test),
        "data.in_shape": "x".join(map(str, ds.in_shape)),
        "data.class_names": ",".join(ds.class_names),
        "data.foreground_fraction": f"{float((ds.y_train > 0).mean()):.4f}",
        "num_classes": k,
        "out_channels": ds.out_channels,
        "device_used": str(device),
        "precision_used": precision,
        "channels_last": True,
        "num_params": count_params(model),
    }
    name = f"segment-{cfg.task}-{cfg.model}-s{cfg.seed}"
    with tracked_run(name, experiment_id_for(experiment), run_id=resume_run_id) as rid:
        _log_new_params(rid, params)
        set_tags({"step": "segment", "task": cfg.task, "model": cfg.model, "dataset": ds.name})
        if not resume_run_id:
            log_dataset_input(f"{ds.name}-{ds.task}-train", ds.x_train, ds.y_train, ds.source, fingerprint, "training")
            log_dataset_input(f"{ds.name}-{ds.task}-test", ds.x_test, ds.y_test, ds.source, fingerprint, "evaluation")
        ckpt = checkpoint_dir(rid) / "last.pt"
        if resume_run_id and not ckpt.exists():  # resume on another machine: the logged checkpoint
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory() as tmp, contextlib.suppress(Exception):
                shutil.move(download(rid, CHECKPOINT, tmp), ckpt)
        skip = None
        if resume_run_id:  # the steps the interrupted attempt logged are not logged twice
            from tracking.metrics import logged_steps

            skip = logged_steps(rid)
        logger = MetricLogger(rid, local_path=checkpoint_dir(rid) / "metrics.jsonl", skip=skip)
        try:
            state = fit(
                model,
                x_train,
                y_train,
                x_test,
                y_test,
                recipe,
                cfg.seed,
                precision,
                cfg.eval_every,
                cfg.checkpoint_every,
                ckpt,
                resume=resume_run_id is not None,
                on_epoch=lambda epoch, m: logger.log(m, epoch),
                progress=progress,
                **mask_hooks(cfg.task, k),
            )
        finally:
            logger.flush()
            if ckpt.exists():
                log_file(ckpt, "checkpoints")

        # evaluation: per-class IoU/Dice tables, figure, curves, latency
        metrics: dict[str, float] = {
            "train_seconds": state.train_seconds,
            "seconds_per_epoch": state.train_seconds / max(state.epoch, 1),
            "epochs_done": state.epoch,
            "num_params": count_params(model),
        }
        dtype = autocast_dtype(precision)
        for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
            keep = FIGURE_IMAGES if split == "test" else 0
            stats, cm, masks = evaluate_tensors(model, x, y, cfg.task, k, recipe["batch_size"], dtype, keep)
            scores = segmentation_scores(cm.cpu().numpy())
            metrics[f"{split}_eval_loss"] = float(stats[:, 0].mean())  # not train_loss: that is per epoch
            for key in ("pixel_acc", "miou", "mdice", "miou_fg", "mdice_fg"):
                metrics[f"{split}_{key}"] = scores[key]
            for i in range(k):
                for key in ("iou", "dice"):
                    metrics[f"{split}_{key}_class_{i}"] = float(scores[key][i])
            table = report_table(scores, ds.class_names)
            log_table(table, f"reports/segmentation_report_{split}")
            log_json(
                {"class_names": ds.class_names, "confusion": cm.cpu().tolist(), "rows_true_cols_pred": True},
                f"reports/confusion_{split}.json",
            )
            if split == "test":
                fig = predictions_figure(
                    ds.x_test[:FIGURE_IMAGES], ds.y_test[:FIGURE_IMAGES], masks.cpu().numpy(), ds.class_names, name
                )
                log_figure(fig, "figures/predictions_test.png")
        log_figure(plots.learning_curves(state.history, name), "figures/learning_curves.png")
        metrics.update(inference_latency(model, ds.x_test, batch_size=min(len(ds.x_test), 32)))
        log_metrics({key: v for key, v in metrics.items() if math.isfinite(v)})  # NaN: class absent everywhere
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(model.state_dict(), Path(tmp) / "state_dict.pt")
            log_file(Path(tmp) / "state_dict.pt", Path(STATE_DICT).parent.as_posix())
        log_json(model_config, MODEL_CONFIG)
        log_json(state.history, "history.json")

        # ONNX: dynamic batch, checked against onnxruntime on a batch size the export never saw
        t0 = time.perf_counter()
        proto = to_onnx(model, ds.in_shape)  # moves the model to the CPU
        export_seconds = time.perf_counter() - t0
        x_parity = ds.x_test[:PARITY_IMAGES]
        diff = parity(proto, model, x_parity)
        onnx_metrics = {
            "onnx_export_seconds": export_seconds,
            "onnx_max_abs_diff": diff,
            "onnx_parity_batch": len(x_parity),
        }
        log_metrics(onnx_metrics)
        metrics.update(onnx_metrics)
        if not diff < cfg.parity_tol:
            raise ParityError(f"onnxruntime differs from PyTorch by {diff:.3g} > parity_tol {cfg.parity_tol:g}")
        fp_test = test_fingerprint(ds.x_test, ds.y_test, ds.class_names)
        split = f"{ds.name} {cfg.task} test split ({len(ds.y_test)} images, sha256 {fp_test[:12]})"
        spec = VersionSpec(
            kind,
            metrics["test_miou"],
            "test_miou",
            fp_test,
            f"{cfg.model} segmentation on {kind.describe()} ({', '.join(ds.class_names)}): test mIoU "
            f"{metrics['test_miou']:.4f} on the {split}; trained in run {rid}.",
            {"segment_run_id": rid},
        )
        metadata = {
            "model": cfg.model,
            "task": cfg.task,
            "dataset": ds.name,
            "class_names": json.dumps(list(ds.class_names)),
            "input_name": "input",
            "input_shape": json.dumps(list(ds.in_shape)),
            "input_layout": "NHWC",
            "input_range": "float32 0..255 (raw pixels; the model normalises inside)",
            "output_layout": "logits NCHW [batch, out_channels, H, W]",
            "dataset_fingerprint": fingerprint,
            "test_fingerprint": fp_test,
            "test_split": split,
            "train_run_id": rid,
        }
        for key, value in metadata.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        example = ds.x_test[:2].astype(np.float32)
        logged = log_onnx(
            proto,
            example,
            predict(model, ds.x_test[:2]),
            cfg.registered_name(ds),
            spec,
            metadata,
            metrics={key: metrics[key] for key in ("test_miou", "test_mdice", "test_pixel_acc")},
        )
        result = {"run_id": rid, **metrics, "model_id": logged.model_id}
        reg = logged.registered
        if reg:
            set_tags({"registered_model": reg.name, "registered_version": reg.version, "champion": reg.is_champion})
            result.update(registered_model=reg.name, version=reg.version, champion=reg.is_champion)
    return result
