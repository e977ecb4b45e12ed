"""Figures: learning curves with IQR bands (the reference notebooks' two panels) and the confusion matrix."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def learning_curves(history: list[dict[str, float]], title: str = ""):
    """CCE and accuracy per epoch for train, val (a validation split, when held out) and test: mean line,
    25-75 percentile band over batches."""
    fig, axes = plt.subplots(1, 2, figsize=(15, 5))
    for ax, (metric, label) in zip(axes, (("loss", "CCE"), ("acc", "Accuracy, %"))):
        scale = 100.0 if metric == "acc" else 1.0
        for split in ("train", "val", "test"):
            rows = [h for h in history if f"{split}_{metric}" in h]
            if not rows:
                continue
            x = np.array([h["epoch"] for h in rows])
            ax.plot(x, [h[f"{split}_{metric}"] * scale for h in rows], label=split)
            ax.fill_between(
                x,
                [h[f"{split}_{metric}_p25"] * scale for h in rows],
                [h[f"{split}_{metric}_p75"] * scale for h in rows],
                alpha=0.4,
            )
        ax.set_title(label)
        ax.set_xlabel("epoch")
        ax.grid(axis="y")
        ax.legend()
    if title:
        fig.suptitle(title)
    return fig


def confusion_matrix(cm: np.ndarray, labels: list[str], title: str = ""):
    from sklearn.metrics import ConfusionMatrixDisplay

    size = max(5, 0.6 * len(labels) + 3)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay(cm, display_labels=labels).plot(ax=ax, cmap="Blues", colorbar=False, xticks_rotation=45)
    ax.set_title(title)
    fig.tight_layout()
    return fig
