"""The ``landscape`` analysis run: loss along random directions around a trained model (1-D curve,
2-D grid, 3-D surface), computed by :mod:`pipelines.analysis.landscape` on the test split held as one
tensor, logged with the reference notebook's figures.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipelines.analysis.source import AnalysisResult, analysis_experiment, load_source
from pipelines.parsing import ConfigError
from pipelines.plots import plt
from tracking import tracked_run
from tracking.artifacts import log_figure, log_file
from tracking.runs import log_metrics, log_params, set_tags


def _tensor(a: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(a).to(device)


def _axis(step: float, limit: float, cap: int | None) -> np.ndarray:
    """-limit..limit by ``step`` (0 included); with ``cap``, coarser so that it has at most ``cap`` values."""
    from pipelines.analysis.landscape import reference_grid_axis

    half = max(1, int(round(limit / step)))
    if cap is not None and 2 * half + 1 > cap:
        half = max(1, (cap - 1) // 2)
    return reference_grid_axis(limit / half, limit)


def landscape_figures(alphas: np.ndarray, curve: np.ndarray, grid_axis: np.ndarray, z: np.ndarray) -> dict:
    """The reference notebook's figures: 1-D curve (log CCE), 2-D contour (log10 CCE, 255 levels, jet), 3-D surface."""
    figs = {}
    fig, ax = plt.subplots(figsize=(8, 6))
    ax.plot(alphas, curve)
    ax.set_yscale("log")
    ax.set_xlabel("alpha")
    ax.set_ylabel("CCE, log10")
    figs["landscape/curve_1d.png"] = fig

    aa, bb = np.meshgrid(grid_axis, grid_axis, indexing="ij")  # z[i, j] at (alpha_i, beta_j)
    logz = np.log10(np.maximum(z, 1e-12))
    fig, ax = plt.subplots(figsize=(8, 8))
    cs = ax.contourf(aa, bb, logz, levels=255, cmap=plt.cm.jet)
    fig.colorbar(cs).ax.set_ylabel("CCE, log10", rotation=270, fontsize=15, labelpad=20)
    ax.set_xlabel("α", fontsize=20)
    ax.set_ylabel("β", fontsize=20)
    figs["landscape/contour_2d.png"] = fig

    fig, ax = plt.subplots(figsize=(8, 8), subplot_kw={"projection": "3d"})
    ax.set_xlabel("α", fontsize=20)
    ax.set_ylabel("β", fontsize=20)
    ax.set_zlabel("CCE, log10", fontsize=20)
    for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
        axis.set_pane_color((1.0, 1.0, 1.0, 0.0))
    ax.plot_surface(aa, bb, logz, cmap=plt.cm.coolwarm, linewidth=0.1, edgecolors="k", alpha=0.8, antialiased=True)
    ax.view_init(40, -30)
    figs["landscape/surface_3d.png"] = fig
    return figs


def landscape(
    model_ref: str,
    mode: str = "reference",
    seed1: int = 0,
    seed2: int = 1011,
    step1d: float = 0.005,
    step2d: float = 0.05,
    limit: float = 1.5,
    max_points: int | None = None,
    device: str = "auto",
    experiment: str | None = None,
    progress: bool = True,
) -> AnalysisResult:
    """Loss landscape of a trained model on its test split."""
    from pipelines.analysis.landscape import MODES, loss_curve, loss_grid, random_direction, summarize
    from pipelines.device import pick_device

    if mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    if min(step1d, step2d, limit) <= 0 or step1d > limit or step2d > limit:
        raise ConfigError(f"need 0 < step1d, step2d <= limit; got {step1d}, {step2d}, {limit}")
    dev = pick_device(device)
    src, model, config, ds = load_source(model_ref, dev)
    x, y = _tensor(ds.x_test, dev).float(), _tensor(ds.y_test, dev)
    alphas = _axis(step1d, limit, max_points)
    grid_axis = _axis(step2d, limit, math.isqrt(max_points) if max_points else None)
    params = {
        "model_ref": model_ref,
        "mode": mode,
        "seed1": seed1,
        "seed2": seed2,
        "step1d": step1d,
        "step2d": step2d,
        "limit": limit,
        "max_points": max_points or "none",
        "curve_points": len(alphas),
        "grid_side": len(grid_axis),
        "n_test": len(y),
        "device_used": str(dev),
    }
    with tracked_run(f"landscape-{config['model']}-{mode}", analysis_experiment(experiment, src)) as rid:
        log_params(params)
        set_tags({"step": "landscape", "source_run_id": src, "model": config["model"], "dataset": ds.name})
        d1, d2 = random_direction(model, seed1), random_direction(model, seed2)
        t0 = time.perf_counter()
        curve = loss_curve(model, x, y, alphas, d1, mode, progress=progress)
        curve_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        z = loss_grid(model, x, y, grid_axis, grid_axis, d1, d2, mode, progress=progress)
        grid_s = time.perf_counter() - t0
        metrics = {k: v for k, v in summarize(alphas, curve).items() if not math.isnan(v)}
        centre = len(grid_axis) // 2
        metrics.update(
            {
                "grid_loss_center": float(z[centre, centre]),
                "grid_loss_max": float(z.max()),
                "grid_seconds": grid_s,
                "grid_points": z.size,
                "points_per_second": z.size / max(grid_s, 1e-9),
                "curve_seconds": curve_s,
            }
        )
        log_metrics(metrics)
        aa, bb = np.meshgrid(grid_axis, grid_axis, indexing="ij")
        with tempfile.TemporaryDirectory() as tmp:
            np.save(Path(tmp) / "grid.npy", z)
            np.save(Path(tmp) / "axis.npy", grid_axis)
            pd.DataFrame({"alpha": aa.ravel(), "beta": bb.ravel(), "loss": z.ravel()}).to_csv(
                Path(tmp) / "grid.csv", index=False
            )
            pd.DataFrame({"alpha": alphas, "loss": curve}).to_csv(Path(tmp) / "curve.csv", index=False)
            for name in ("grid.npy", "axis.npy", "grid.csv", "curve.csv"):
                log_file(Path(tmp) / name, "landscape")
        for path, fig in landscape_figures(alphas, curve, grid_axis, z).items():
            log_figure(fig, path)
    return AnalysisResult(rid, metrics)
