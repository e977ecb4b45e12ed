"""The comparison of finished runs that ``compare``, ``study`` and ``sweep`` log: one table, three figures.

Runs are grouped by configuration (tag ``config``; else the run name without its ``-s<seed>``)
and each metric is shown as mean ± std over the group's runs (seeds). Every run carries the same
metric names (``pipelines.trained.SUMMARY``), so a study's children, ``main`` runs and sweep trials
line up. The table is sorted by the champion rule studies use (``CHAMPION_RULE``).

Figures: per-epoch test accuracy curves (``test_acc``) of all configurations on one plot (mean line,
±std band over seeds), test accuracy and train time side by side as bars, and the test confusion matrices of
the configurations side by side (summed over seeds) when they share their labels.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from tracking.artifacts import download, log_figure, log_table, log_text  # noqa: E402
from tracking.queries import RunRecord, find_runs, get_run_record, metric_history

# (metric, column header, format of mean/std)
METRICS = (
    ("test_accuracy", "test acc", "{:.4f}"),
    ("test_macro_f1", "macro F1", "{:.4f}"),
    ("train_accuracy", "train acc", "{:.4f}"),
    ("overfit_gap", "overfit gap", "{:.4f}"),
    ("train_seconds", "train s", "{:.1f}"),
    ("seconds_per_epoch", "s/epoch", "{:.2f}"),
    ("inference_ms_per_image", "infer ms/img", "{:.4f}"),
    ("num_params", "params", "{:,.0f}"),
)
METRIC_KEYS = tuple(m for m, _, _ in METRICS)
CURVE_METRIC = "test_acc"  # per-epoch accuracy on the test set (the reference notebooks' learning curves)
LEGACY_CURVE_METRIC = "val_acc"  # what runs logged before the rename, on the test set unless they held out val data
CHAMPION_RULE = "highest mean test_accuracy; ties (equal to 6 decimals) -> lower mean train_seconds"
TRIALS_ARTIFACT = "study/trials.json"  # run ids of a study's/sweep's trials (some may live under an older parent)
PARENT_STEPS = ("study", "sweep")
TEXT_COLUMNS = ("config", "name", "run_id", "label")
NOT_RESULTS = ("prep", "train", "evaluate", "export_onnx", "compare", *PARENT_STEPS)


def is_result(rec: RunRecord) -> bool:
    """A finished run that holds a whole result (``main`` parents, study/sweep trials, ad-hoc runs)."""
    return rec.status == "FINISHED" and "test_accuracy" in rec.metrics and rec.tags.get("step") not in NOT_RESULTS


def children_of(parent: RunRecord) -> list[RunRecord]:
    """The finished trials of a study/sweep parent: its ``trials.json`` list, else its child runs."""
    ids: list[str] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            ids = json.loads(download(parent.run_id, TRIALS_ARTIFACT, tmp).read_text())["run_ids"]
    except Exception:  # noqa: BLE001 - an older or crashed parent has no list: fall back to its children
        ids = []
    if ids:
        recs = [r for r in (get_run_record(i) for i in ids) if r is not None]
    else:
        recs = find_runs([parent.experiment_id], f"tags.mlflow.parentRunId = '{parent.run_id}'")
    return [r for r in recs if is_result(r)]


def config_of(rec: RunRecord) -> str:
    return rec.tags.get("config") or re.sub(r"-s\d+$", "", rec.name or rec.run_id[:8])


def runs_frame(records: list[RunRecord]) -> pd.DataFrame:
    """One row per run: run_id, config, seed, name and the compared metrics."""
    rows = [
        {
            "config": config_of(r),
            "seed": r.params.get("seed", ""),
            "run_id": r.run_id,
            "name": r.name,
            **{k: r.metrics.get(k, np.nan) for k in METRIC_KEYS},
        }
        for r in records
    ]
    return pd.DataFrame(rows, columns=["config", "seed", "run_id", "name", *METRIC_KEYS])


def rank(summary: pd.DataFrame) -> pd.DataFrame:
    """Sort by ``CHAMPION_RULE``: mean test accuracy (rounded to 6 decimals) down, then train time up."""
    key = summary.assign(_acc=summary["test_accuracy_mean"].round(6), _time=summary["train_seconds_mean"])
    key = key.sort_values(["_acc", "_time"], ascending=[False, True], na_position="last", kind="stable")
    return key.drop(columns=["_acc", "_time"]).reset_index(drop=True)


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Per configuration: n runs, then ``<metric>_mean`` and ``<metric>_std`` (std 0 for one run), ranked."""
    rows = []
    for config, g in df.groupby("config", sort=False):
        row: dict = {"config": config, "n": len(g)}
        for k in METRIC_KEYS:
            values = g[k].astype(float).dropna() if k in g else pd.Series(dtype=float)
            row[f"{k}_mean"] = float(values.mean()) if len(values) else np.nan
            row[f"{k}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        rows.append(row)
    return rank(pd.DataFrame(rows))


def display_frame(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary as text cells ``mean ± std``, in rank order."""
    out = pd.DataFrame({"rank": range(1, len(summary) + 1), "config": summary["config"], "n": summary["n"]})
    for key, header, fmt in METRICS:
        cells = []
        for mean, std in zip(summary[f"{key}_mean"], summary[f"{key}_std"]):
            cells.append("—" if pd.isna(mean) else fmt.format(mean) + (f" ± {fmt.format(std)}" if std else ""))
        out[header] = cells
    return out


def render(df: pd.DataFrame, title: str = "") -> str:
    """A data frame as a rich text table (what is printed and logged as ``table.txt``)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title or None, show_lines=False)
    for col in df.columns:
        table.add_column(str(col), justify="left" if col in TEXT_COLUMNS else "right")
    for row in df.itertuples(index=False):
        table.add_row(*(str(v) for v in row))
    console = Console(record=True, width=220, file=io.StringIO())  # rendered to text, not shown
    console.print(table)
    return console.export_text()


# ---- figures ----


def _curve_source(rec: RunRecord) -> str:
    return rec.tags.get("train_run_id") or rec.run_id  # `main` keeps its curves in the train child


def _held_out_val(rec: RunRecord) -> bool:
    try:
        return float(rec.params.get("val_fraction") or 0) > 0
    except ValueError:
        return True  # unreadable: do not take its val_acc for a test curve


def histories(records: list[RunRecord], key: str = CURVE_METRIC) -> dict[str, dict[int, float]]:
    """Per-epoch ``key`` of each run; test curves of runs from before the rename (their ``val_acc`` was
    measured on the test set when they held nothing out) are read under the old name."""
    out = {}
    for r in records:
        curve = dict(metric_history(_curve_source(r), key))
        if not curve and key == CURVE_METRIC and not _held_out_val(r):
            curve = dict(metric_history(_curve_source(r), LEGACY_CURVE_METRIC))
        out[r.run_id] = curve
    return out


def accuracy_curves(
    records: list[RunRecord], configs: list[str] | None = None, title: str = "", key: str = CURVE_METRIC
):
    """Per-epoch accuracy (``key``: test_acc, or val_acc on the validation split) of every configuration:
    mean over its runs, ±std band, one plot."""
    hist = histories(records, key)
    groups: dict[str, list[dict[int, float]]] = {}
    for r in records:
        groups.setdefault(config_of(r), []).append(hist[r.run_id])
    fig, ax = plt.subplots(figsize=(10, 6))
    for config in configs or list(groups):
        curves = [h for h in groups.get(config, []) if h]
        if not curves:
            continue
        epochs = sorted(set().union(*curves))
        values = [[h[e] for h in curves if e in h] for e in epochs]
        mean = np.array([np.mean(v) for v in values]) * 100
        std = np.array([np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in values]) * 100
        (line,) = ax.plot(epochs, mean, marker="o" if len(epochs) < 20 else None, label=f"{config} (n={len(curves)})")
        ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{'validation' if key.startswith('val_') else 'test'} accuracy ({key}), %")
    ax.set_title(title or "Accuracy per epoch: mean ± std over seeds")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def accuracy_vs_time(summary: pd.DataFrame, title: str = ""):
    """Bars: mean test accuracy and mean train time per configuration, std as error bars."""
    fig, axes = plt.subplots(1, 2, figsize=(max(10, 2.2 * len(summary) + 4), 5))
    x = np.arange(len(summary))
    panels = (("test_accuracy", "test accuracy, %", 100.0), ("train_seconds", "train time, s", 1.0))
    for ax, (key, label, scale) in zip(axes, panels):
        ax.bar(x, summary[f"{key}_mean"] * scale, yerr=summary[f"{key}_std"] * scale, capsize=4, color="C0")
        for xi, v in zip(x, summary[f"{key}_mean"] * scale):
            ax.annotate(f"{v:.1f}" if scale == 1 else f"{v:.2f}", (xi, v), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x, summary["config"], rotation=20, ha="right")
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title or "Quality vs training cost (mean ± std over seeds)")
    fig.tight_layout()
    return fig


def _evaluate_run(rec: RunRecord) -> str | None:
    train_id = _curve_source(rec)
    hits = find_runs(
        [rec.experiment_id],
        f"tags.step = 'evaluate' and tags.train_run_id = '{train_id}' and attributes.status = 'FINISHED'",
    )
    return hits[0].run_id if hits else None


def confusion_matrices(records: list[RunRecord], configs: list[str]):
    """Test confusion matrices per configuration (summed over seeds), side by side; None if not comparable."""
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    labels: list[str] | None = None
    with tempfile.TemporaryDirectory() as tmp:
        for i, r in enumerate(records):
            eval_id = _evaluate_run(r)
            if eval_id is None:
                continue
            try:
                cm = json.loads(download(eval_id, "reports/confusion_matrix_test.json", Path(tmp) / str(i)).read_text())
            except Exception:  # noqa: BLE001 - an old run without the artifact is skipped
                continue
            if labels is None:
                labels = cm["labels"]
            if cm["labels"] != labels:
                return None  # different class sets: side by side would mislead
            c = config_of(r)
            sums[c] = sums.get(c, 0) + np.asarray(cm["matrix"])
            counts[c] = counts.get(c, 0) + 1
    shown = [c for c in configs if c in sums]
    if not shown or labels is None:
        return None
    from sklearn.metrics import ConfusionMatrixDisplay

    size = max(4.0, 0.45 * len(labels) + 2)
    fig, axes = plt.subplots(1, len(shown), figsize=(size * len(shown), size + 0.5), squeeze=False)
    for ax, c in zip(axes[0], shown):
        ConfusionMatrixDisplay(sums[c], display_labels=labels).plot(
            ax=ax, cmap="Blues", colorbar=False, xticks_rotation=45, values_format="d"
        )
        ax.set_title(f"{c} (sum of {counts[c]} run{'s' if counts[c] > 1 else ''})")
    fig.suptitle("Test confusion matrices")
    fig.tight_layout()
    return fig


# ---- logging ----


def log_comparison(records: list[RunRecord], title: str = "", prefix: str = "comparison") -> pd.DataFrame:
    """Into the active run: the summary (MLflow table + CSV + text), the per-run table, the figures."""
    df = runs_frame(records)
    summary = summarize(df)
    configs = list(summary["config"])
    text = render(display_frame(summary), title)
    log_table(summary, f"{prefix}/summary")
    log_table(df, f"{prefix}/runs")
    log_text(text + f"\nchampion rule: {CHAMPION_RULE}\n", f"{prefix}/summary.txt")
    log_figure(
        accuracy_curves(records, configs, title and f"{title}: accuracy per epoch"), "figures/accuracy_curves.png"
    )
    log_figure(accuracy_vs_time(summary, title and f"{title}: accuracy vs train time"), "figures/accuracy_vs_time.png")
    cm = confusion_matrices(records, configs)
    if cm is not None:
        log_figure(cm, "figures/confusion_matrices.png")
    return summary


def quiet_downloads() -> None:
    """No tqdm bar per downloaded artifact (compare downloads one small JSON per run)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
