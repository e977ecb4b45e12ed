"""The ``gradients`` analysis run: trains a model and records per-layer mean |grad| and grad norm per
epoch (gradient flow), flagging vanishing and exploding layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from pipelines.analysis.source import analysis_experiment
from pipelines.plots import plt
from tracking import experiment_id_for
from tracking.artifacts import log_figure, log_json
from tracking.runs import log_metrics, log_params, set_tags

VANISHING = 1e-7  # mean |grad| below this: the layer barely learns
EXPLODING = 1e3  # grad norm above this: the layer's updates blow up


@dataclass
class GradientsResult:
    run_id: str
    flags: dict[str, list[str]]  # vanishing / exploding -> layer names


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
    exp = analysis_experiment(experiment, source_run_id) if source_run_id else experiment_id_for(experiment)
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
