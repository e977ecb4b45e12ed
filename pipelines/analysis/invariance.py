"""The ``invariance`` analysis run: accuracy and prediction agreement of an FC model and a CNN under
0..8 px shifts (zero fill) on the CNN's test split.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn as nn

from pipelines.analysis.source import analysis_experiment, load_source
from pipelines.parsing import ConfigError
from pipelines.plots import plt
from tracking import tracked_run
from tracking.artifacts import log_figure, log_table
from tracking.runs import log_metrics, log_params, set_tags


@dataclass
class InvarianceResult:
    run_id: str
    table: pd.DataFrame  # accuracy and agreement per model, axis and shift


def shift_images(x: torch.Tensor, dx: int = 0, dy: int = 0) -> torch.Tensor:
    """NHWC images moved ``dx`` px right and ``dy`` px down (negative: left/up), vacated pixels zero."""
    n, h, w, c = x.shape
    out = torch.zeros_like(x)
    if abs(dx) >= w or abs(dy) >= h:
        return out
    out[:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = x[
        :, max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def _predict(model: nn.Module, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([model(x[i : i + batch]).argmax(1) for i in range(0, len(x), batch)])


def shift_table(models: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor, max_shift: int) -> pd.DataFrame:
    """One row per (model, axis, shift): test accuracy and agreement with the unshifted prediction."""
    rows = []
    for label, model in models.items():
        base = _predict(model, x)
        for axis in ("horizontal", "vertical"):
            for s in range(max_shift + 1):
                pred = _predict(
                    model, shift_images(x, s if axis == "horizontal" else 0, s if axis == "vertical" else 0)
                )
                acc, agree = (pred == y).float().mean().item(), (pred == base).float().mean().item()
                rows.append({"model": label, "axis": axis, "shift": s, "accuracy": acc, "agreement": agree})
    return pd.DataFrame(rows)


def invariance_figure(df: pd.DataFrame):
    fig, axes = plt.subplots(1, 2, figsize=(15, 5))
    for ax, col in zip(axes, ("accuracy", "agreement"), strict=True):
        for (label, axis), g in df.groupby(["model", "axis"], sort=False):
            ax.plot(g["shift"], g[col] * 100, "o-" if axis == "horizontal" else "s--", label=f"{label} {axis}")
        ax.set_xlabel("shift, px (zero fill)")
        ax.set_ylabel(f"{col}, %")
        ax.set_title("test accuracy" if col == "accuracy" else "agreement with the unshifted prediction")
        ax.grid(axis="y")
        ax.legend()
    fig.tight_layout()
    return fig


def invariance(fc_ref: str, cnn_ref: str, max_shift: int = 8, experiment: str | None = None) -> InvarianceResult:
    """FC model vs CNN under horizontal/vertical shifts of 0..max_shift px on the CNN's test split."""
    fc_id, fc, fc_cfg, _ = load_source(fc_ref)
    cnn_id, cnn, cnn_cfg, ds = load_source(cnn_ref)
    if fc_cfg["class_ids"] != cnn_cfg["class_ids"] or fc_cfg["in_shape"] != cnn_cfg["in_shape"]:
        raise ConfigError(
            f"the FC and CNN models must be trained on the same data: classes {fc_cfg['class_ids']} vs "
            f"{cnn_cfg['class_ids']}, input {fc_cfg['in_shape']} vs {cnn_cfg['in_shape']}"
        )
    x, y = torch.from_numpy(ds.x_test).float(), torch.from_numpy(ds.y_test)
    df = shift_table({"fc": fc, "cnn": cnn}, x, y, max_shift)
    with tracked_run(
        f"invariance-{fc_cfg['model']}-vs-{cnn_cfg['model']}", analysis_experiment(experiment, cnn_id)
    ) as rid:
        log_params({"fc_ref": fc_ref, "cnn_ref": cnn_ref, "max_shift": max_shift, "n_test": len(y)})
        set_tags(
            {
                "step": "invariance",
                "source_run_id": cnn_id,  # the CNN's run; both are tagged below
                "cnn_run_id": cnn_id,
                "fc_run_id": fc_id,
                "source_run_ids": f"{fc_id},{cnn_id}",
                "dataset": ds.name,
            }
        )
        for shift, g in df.groupby("shift"):  # one request per shift
            values = {}
            for r in g.itertuples():
                prefix = f"{r.model}_{'h' if r.axis == 'horizontal' else 'v'}"
                values.update({f"{prefix}_accuracy": r.accuracy, f"{prefix}_agreement": r.agreement})
            log_metrics(values, step=int(shift))
        last = df[df["shift"] == max_shift]
        log_metrics({f"{r.model}_{r.axis}_accuracy_at_max": r.accuracy for r in last.itertuples()})
        log_table(df, "invariance/shift_table.json")
        log_figure(invariance_figure(df), "invariance/shift_invariance.png")
    return InvarianceResult(rid, df)
