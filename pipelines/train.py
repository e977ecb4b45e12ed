"""Entry point ``train``: build the model, train it (CUDA when present), log everything, checkpoint."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from pipelines.config import DataConfig, TrainConfig
from pipelines.data import Dataset
from pipelines.device import pick_device, pick_precision
from pipelines.runner import place, training_run
from pipelines.trained import build_model, fit_tensors, load_data, training_params
from pipelines.trained import configs_from_run as configs_from_run  # the CLI's --resume reads it here
from pipelines.trainer import TrainState
from tracking import experiment_id_for
from tracking.artifacts import log_data_inputs
from tracking.runs import log_params, set_tags


@dataclass
class TrainResult:
    run_id: str
    model: nn.Module
    state: TrainState
    model_config: dict


def run(
    data_cfg: DataConfig,
    cfg: TrainConfig,
    dataset: Dataset | None = None,
    experiment: str | None = None,
    nested: bool = False,
    resume_run_id: str | None = None,
    tracking: bool = True,
) -> TrainResult:
    ds = dataset or load_data(data_cfg)
    device = pick_device(cfg.device)
    precision = pick_precision(cfg.precision, device)
    model, model_config = build_model(cfg, ds)
    model = place(model, device)
    data = fit_tensors(ds, cfg.val_fraction, cfg.seed, device)  # the validation holdout is never trained on
    params = training_params(data_cfg, cfg, ds, device, precision, model, len(data["x_train"]))
    with training_run(
        f"train-{cfg.tag()}",
        experiment_id_for(experiment),
        resume_run_id=resume_run_id,
        nested=nested,
        system_metrics=cfg.system_metrics,
        tracking=tracking,
    ) as session:
        if session.is_new:
            log_params(params)
            log_data_inputs(ds)
        set_tags({"step": "train", "model": cfg.model, "dataset": ds.name})
        state = session.fit(model, data, cfg, precision=precision)
        session.log_trained(model, model_config, state)
    return TrainResult(session.run_id, model.eval(), state, model_config)
