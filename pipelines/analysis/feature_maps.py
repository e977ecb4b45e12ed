"""The ``features`` analysis run: first-layer filters, first-layer activations and the feature maps
after every conv layer of a trained CNN, as image grids.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from pipelines.analysis.source import AnalysisResult, analysis_experiment, load_source
from pipelines.parsing import ConfigError
from pipelines.plots import plt
from tracking import tracked_run
from tracking.artifacts import log_figure
from tracking.runs import log_metrics, log_params, set_tags

_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid)


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
    with tracked_run(f"features-{config['model']}", analysis_experiment(experiment, src)) as rid:
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
