"""Analysis entry points: each is an MLflow run of its own, tagged ``source_run_id``.

``landscape``   loss along random directions around a trained model (1-D curve, 2-D grid, 3-D surface),
                computed by :mod:`pipelines.analysis.landscape` on the test split held as one tensor.
``gradients``   trains a model and records per-layer mean |grad| and grad norm per epoch (gradient flow).
``features``    first-layer filters, first-layer activations and the feature maps after every conv layer.
``invariance``  accuracy and prediction agreement of an FC model and a CNN under 0..8 px shifts (zero fill).

A model is named by its train run id or by ``models:/name@alias`` (the registered version's
``train_run_id`` tag). Runs land in the source run's experiment unless ``experiment`` is given.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from pipelines.config import ConfigError
from pipelines.plots import plt
from tracking import TrackingError, experiment_id_for, tracked_run
from tracking.artifacts import log_figure, log_file, log_json, log_table
from tracking.queries import run_experiment_id
from tracking.runs import log_metrics, log_params, set_tags

VANISHING = 1e-7  # mean |grad| below this: the layer barely learns
EXPLODING = 1e3  # grad norm above this: the layer's updates blow up
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid)


# ------------------------------------------------------------------------------------- shared


@dataclass
class AnalysisResult:
    run_id: str
    metrics: dict[str, float]


@dataclass
class GradientsResult:
    run_id: str
    flags: dict[str, list[str]]  # vanishing / exploding -> layer names


@dataclass
class InvarianceResult:
    run_id: str
    table: pd.DataFrame  # accuracy and agreement per model, axis and shift


def resolve_train_run(model_ref: str) -> str:
    """A train run id, or ``models:/name@alias`` / ``models:/name/version`` -> its ``train_run_id`` tag."""
    ref = (model_ref or "").strip()
    if not ref:
        raise ConfigError("model: give a train run id or models:/<name>@<alias>")
    if not ref.startswith("models:/"):
        return ref
    from tracking.registry import model_version_info

    info = model_version_info(ref)
    rid = info.tags.get("train_run_id")
    if not rid:
        raise TrackingError(f"{ref} (version {info.version}) has no train_run_id tag: give the train run id instead")
    return rid


def load_source(model_ref: str, device: torch.device | None = None):
    """(train run id, model in eval mode, model_config, data set) of a trained model."""
    from pipelines.trained import configs_from_run, load_data, load_trained

    rid = resolve_train_run(model_ref)
    model, config = load_trained(rid)
    ds = load_data(configs_from_run(rid)[0])
    return rid, model.to(device or "cpu").eval(), config, ds


def _experiment(experiment: str | None, source_run_id: str) -> str | None:
    return experiment_id_for(experiment) if experiment else run_experiment_id(source_run_id)


def _tensor(a: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(a).to(device)


# ---------------------------------------------------------------------------------- landscape


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
    mode: str = "seed",
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
    with tracked_run(f"landscape-{config['model']}-{mode}", _experiment(experiment, src)) as rid:
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


# ---------------------------------------------------------------------------------- gradients


class GradientRecorder:
    """Per-layer mean |grad| and grad norm, averaged over the steps of an epoch, kept on the device.

    Tensor hooks on the weights add into device tensors (no host sync per step); :meth:`epoch_end`
    copies them once per epoch. Biases are left out, as gradient-flow plots usually do.
    Under fp16 the values seen are the loss-scaled gradients.
    """

    def __init__(self, model: nn.Module):
        named = [(n, p) for n, p in model.named_parameters() if n.endswith(".weight") and p.requires_grad]
        self.layers = [n.removesuffix(".weight") for n, _ in named]
        modules = dict(model.named_modules())
        self.kinds = [type(modules[n]).__name__ if n in modules else "" for n in self.layers]
        weights = [p for _, p in named]
        self._sums = torch.zeros(len(weights), 2, device=weights[0].device)
        self._steps = 0
        self._handles = [p.register_hook(self._hook(i)) for i, p in enumerate(weights)]
        self.history: list[dict[str, float]] = []

    def _hook(self, i: int):
        def record(grad: torch.Tensor):
            g = grad.detach().float()
            self._sums[i, 0] += g.abs().mean()
            self._sums[i, 1] += g.norm()
            if i == 0:
                self._steps += 1  # hooks fire once per weight per backward

        return record

    def epoch_end(self) -> dict[str, float]:
        means = (self._sums / max(self._steps, 1)).cpu().numpy()
        self._sums.zero_()
        self._steps = 0
        row = {f"grad_mean_abs/{n}": float(m[0]) for n, m in zip(self.layers, means, strict=True)}
        row.update({f"grad_norm/{n}": float(m[1]) for n, m in zip(self.layers, means, strict=True)})
        self.history.append(row)
        return row

    def remove(self) -> None:
        for h in self._handles:
            h.remove()

    def flags(self) -> dict[str, list[str]]:
        """Layers whose mean |grad| fell below VANISHING or whose norm rose above EXPLODING in any epoch."""
        vanish = [n for n in self.layers if any(r[f"grad_mean_abs/{n}"] < VANISHING for r in self.history)]
        explode = [n for n in self.layers if any(r[f"grad_norm/{n}"] > EXPLODING for r in self.history)]
        return {"vanishing": vanish, "exploding": explode}


def gradient_flow_figure(
    layers: list[str], history: list[dict[str, float]], title: str = "", kinds: list[str] | None = None
):
    """Mean |grad| and grad norm per layer (x: input to output), one line per epoch (light to dark)."""
    fig, axes = plt.subplots(1, 2, figsize=(15, 5))
    colors = plt.cm.viridis(np.linspace(0, 1, len(history)))
    x = np.arange(len(layers))
    for ax, (key, label, limit) in zip(
        axes, (("grad_mean_abs", "mean |grad|", VANISHING), ("grad_norm", "grad norm", EXPLODING)), strict=True
    ):
        for epoch, (row, c) in enumerate(zip(history, colors, strict=True), start=1):
            ax.plot(x, [max(row[f"{key}/{n}"], 1e-30) for n in layers], "o-", color=c, label=f"epoch {epoch}")
        ax.axhline(limit, color="r", ls="--", lw=1)
        ax.set_yscale("log")
        ax.set_xticks(x, [f"{n} {k}" for n, k in zip(layers, kinds or [""] * len(layers), strict=True)], rotation=45)
        ax.set_xlabel("layer")
        ax.set_title(label)
        ax.grid(axis="y")
    if len(history) <= 10:
        axes[0].legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def gradients(
    data_cfg, cfg, source_run_id: str | None = None, experiment: str | None = None, progress: bool = True
) -> GradientsResult:
    """Train ``cfg`` on ``data_cfg`` recording gradient flow; returns (run id, flagged layers).

    The run also holds the model (``model/state_dict.pt`` + ``model/model_config.json``, like a train
    run), so the other analyses accept its id. ``source_run_id``: the train run whose configuration
    was repeated (tagged); without one the run is its own source.
    """
    from pipelines.config import as_params
    from pipelines.device import pick_device, pick_precision
    from pipelines.runner import place, training_run
    from pipelines.trained import build_model, fit_tensors, load_data

    ds = load_data(data_cfg)
    device = pick_device(cfg.device)
    precision = pick_precision(cfg.precision, device)
    model, model_config = build_model(cfg, ds)
    model = place(model, device)
    data = fit_tensors(ds, cfg.val_fraction, cfg.seed, device)  # the validation holdout is never trained on
    exp = _experiment(experiment, source_run_id) if source_run_id else experiment_id_for(experiment)
    with training_run(f"gradients-{cfg.tag()}", exp, system_metrics=cfg.system_metrics) as session:
        rid = session.run_id
        log_params({**as_params(data_cfg, cfg), "device_used": str(device), "precision_used": precision})
        set_tags({"step": "gradients", "source_run_id": source_run_id or rid, "model": cfg.model, "dataset": ds.name})
        recorder = GradientRecorder(model)
        try:
            grads = lambda _epoch: recorder.epoch_end()  # noqa: E731 - per-epoch gradient statistics
            state = session.fit(
                model, data, cfg, precision=precision, checkpoints=False, progress=progress, extra_metrics=grads
            )
        finally:
            recorder.remove()
        flags = recorder.flags()
        log_metrics(
            {
                "train_seconds": state.train_seconds,
                "vanishing_layers": len(flags["vanishing"]),
                "exploding_layers": len(flags["exploding"]),
            }
        )
        set_tags(
            {
                "vanishing_layers": ",".join(flags["vanishing"]) or "none",
                "exploding_layers": ",".join(flags["exploding"]) or "none",
                "gradient_flags": "; ".join(f"{k}: {','.join(v) or 'none'}" for k, v in flags.items()),
            }
        )
        log_figure(
            gradient_flow_figure(recorder.layers, recorder.history, cfg.tag(), recorder.kinds),
            "gradients/gradient_flow.png",
        )
        log_json(recorder.history, "gradients/history.json")
        session.log_trained(model, model_config, state, metrics=False)
    return GradientsResult(rid, flags)


# ----------------------------------------------------------------------------------- features


def _normalise(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def _image_grid(images: list[np.ndarray], cols: int, titles: list[str] | None = None, cmap="viridis", size=1.6):
    rows = max(1, math.ceil(len(images) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * size, rows * size), squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i < len(images):
            ax.imshow(images[i], cmap=None if images[i].ndim == 3 else cmap)
            if titles:
                ax.set_title(titles[i], fontsize=7)
    fig.tight_layout()
    return fig


def conv_outputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Output of every Conv2d (after the activation that directly follows it, if any) for input ``x``."""
    outs: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    names = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
    follow = {}  # in a Sequential, the activation right after a conv: its output is the feature map
    for parent in (m for m in modules.values() if isinstance(m, nn.Sequential)):
        items = list(parent.named_children())
        for (_, a), (_, b) in zip(items, items[1:]):
            if isinstance(a, nn.Conv2d) and isinstance(b, _ACTIVATIONS):
                follow[id(a)] = b
    handles = []
    for n in names:
        target = follow.get(id(modules[n]), modules[n])
        handles.append(target.register_forward_hook(lambda _m, _i, out, n=n: outs.__setitem__(n, out.detach())))
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return outs


def features(model_ref: str, n_images: int = 4, max_maps: int = 32, experiment: str | None = None) -> AnalysisResult:
    """First-layer filters and activations, and the feature maps of every conv layer, as image grids."""
    src, model, config, ds = load_source(model_ref)
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ConfigError(f"model {config['model']} has no Conv2d layer: features needs a CNN")
    x = torch.from_numpy(ds.x_test[:n_images]).float()
    outs = conv_outputs(model, x)
    metrics: dict[str, float] = {"conv_layers": len(convs), "n_images": len(x)}
    with tracked_run(f"features-{config['model']}", _experiment(experiment, src)) as rid:
        log_params({"model_ref": model_ref, "n_images": n_images, "max_maps": max_maps})
        set_tags({"step": "features", "source_run_id": src, "model": config["model"], "dataset": ds.name})
        name0, conv0 = convs[0]
        w = conv0.weight.detach().float().numpy()  # [O, C, k, k]
        filters = [_normalise(f.transpose(1, 2, 0)) if f.shape[0] == 3 else _normalise(f.mean(0)) for f in w]
        fig = _image_grid(filters, cols=min(8, len(filters)), titles=[str(i) for i in range(len(filters))])
        fig.suptitle(f"first-layer filters ({name0}: {tuple(w.shape)})")
        log_figure(fig, "features/filters_first_layer.png")
        act = outs[name0].float().numpy()  # [N, O, H, W]
        k = min(act.shape[1], 15)
        images, titles = [], []
        for i in range(len(x)):
            images += [ds.x_test[i] if ds.x_test.shape[-1] == 3 else ds.x_test[i, ..., 0]]
            images += [act[i, c] for c in range(k)]
            titles += [f"image {i}"] + [f"ch {c}" for c in range(k)]
        fig = _image_grid(images, cols=k + 1, titles=titles, cmap="gray")
        fig.suptitle(f"first-layer activations ({name0})")
        log_figure(fig, "features/activations_first_layer.png")
        for name, out in outs.items():
            maps = out.float().numpy()
            c = min(maps.shape[1], max_maps)
            fig = _image_grid([maps[0, j] for j in range(c)], cols=min(8, c), titles=[f"ch {j}" for j in range(c)])
            fig.suptitle(f"feature maps after {name} {tuple(maps.shape[1:])}, image 0")
            log_figure(fig, f"features/maps_{name.replace('.', '_')}.png")
            metrics[f"act_mean/{name}"] = float(maps.mean())
            metrics[f"dead_fraction/{name}"] = float((maps.reshape(len(maps), maps.shape[1], -1).max(2)[0] <= 0).mean())
        log_metrics(metrics)
    return AnalysisResult(rid, metrics)


# --------------------------------------------------------------------------------- invariance


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
    with tracked_run(f"invariance-{fc_cfg['model']}-vs-{cnn_cfg['model']}", _experiment(experiment, cnn_id)) as rid:
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
