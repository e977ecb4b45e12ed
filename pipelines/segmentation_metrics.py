"""Segmentation losses, metrics, training hooks and the prediction figure (``pipelines.segment`` trains with them).

Masks are class ids per pixel [B, H, W]; logits are [B, N, H, W]: binary = one channel (sigmoid,
BCE + soft Dice), multiclass = one channel per class, background included (softmax/argmax,
cross-entropy + soft Dice over the foreground classes).
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from pipelines.trainer import _summary


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

    The Dice term weighs every digit class like the background, which covers most pixels: without
    it a multiclass net can sit on a plateau that separates digits from background but not the
    digits from each other (bench/README.md, "Notes moved from code", has the measurements).
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
