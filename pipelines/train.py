"""Entry point ``train``: build the model, train it (CUDA when present), log everything, checkpoint."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from models import count_params, create_model
from pipelines.config import DataConfig, TrainConfig, as_params, data_config, train_config_from
from pipelines.data import Dataset, split_validation
from pipelines.device import host_allocator, pick_device, pick_precision
from pipelines.prep import load
from pipelines.trainer import TrainState, fit
from tracking import experiment_id_for, tracked_run
from tracking.artifacts import download, log_data_inputs, log_file, log_json
from tracking.metrics import MetricLogger
from tracking.runs import log_metrics, log_params, run_data, set_tags

MODEL_CONFIG = "model/model_config.json"  # how to rebuild the module
STATE_DICT = "model/state_dict.pt"  # weights only: load with torch.load(weights_only=True)
CHECKPOINT = "checkpoints/last.pt"


@dataclass
class TrainResult:
    run_id: str
    model: nn.Module
    state: TrainState
    model_config: dict


def checkpoint_dir(run_id: str) -> Path:
    """Local checkpoint folder of a run (``$PIPELINE_CHECKPOINT_DIR`` or ./checkpoints)."""
    from tracking.runs import local_run_dir

    return local_run_dir(run_id)


def build_model(cfg: TrainConfig, ds: Dataset) -> tuple[nn.Module, dict]:
    model_config = {
        "model": cfg.model,
        "options": cfg.model_options(),
        "num_classes": ds.num_classes,
        "in_shape": list(ds.in_shape),
        "mean": list(ds.mean),
        "std": list(ds.std),
        "class_ids": ds.class_ids,
        "class_names": ds.class_names,
        "dataset": ds.name,
    }
    torch.manual_seed(cfg.seed)  # the initial weights depend on the seed only
    return instantiate(model_config), model_config


def instantiate(model_config: dict) -> nn.Module:
    return create_model(
        model_config["model"],
        num_classes=model_config["num_classes"],
        in_shape=tuple(model_config["in_shape"]),
        mean=tuple(model_config["mean"]),
        std=tuple(model_config["std"]),
        **model_config["options"],
    )


def load_trained(run_id: str) -> tuple[nn.Module, dict]:
    """Rebuild a trained model from its run: config JSON + state_dict loaded with weights_only."""
    from mlflow.exceptions import MlflowException

    from tracking import TrackingError

    with tempfile.TemporaryDirectory() as tmp:
        try:
            config = json.loads(download(run_id, MODEL_CONFIG, tmp).read_text())
        except (MlflowException, OSError):  # an interrupted run: one line that says what to do (issue 8)
            raise TrackingError(
                f"run {run_id} has no trained model ({MODEL_CONFIG} missing): finish it first with "
                f"`python -m pipelines train --resume {run_id}`"
            ) from None
        state = torch.load(download(run_id, STATE_DICT, tmp), map_location="cpu", weights_only=True)
    model = instantiate(config)
    model.load_state_dict(state)
    return model.eval(), config


def fit_tensors(ds: Dataset, fraction: float, seed: int, device) -> dict[str, torch.Tensor]:
    """``fit``'s data on ``device`` (images as float32, moved once): ``x_train``/``y_train`` (the training set
    minus the validation holdout), ``x_test``/``y_test``, and ``x_val``/``y_val`` when ``fraction`` > 0."""
    rest, val = split_validation(ds, fraction, seed)
    arrays = {"x_train": rest.x_train, "y_train": rest.y_train, "x_test": ds.x_test, "y_test": ds.y_test}
    if val is not None:
        arrays["x_val"], arrays["y_val"] = val
    out = {k: torch.from_numpy(a).to(device) for k, a in arrays.items()}
    return {k: t.float() if k.startswith("x_") else t for k, t in out.items()}


def configs_from_run(run_id: str) -> tuple[DataConfig, TrainConfig]:
    """The data and train configs a finished or interrupted train run was started with (a run logged
    before ``val_fraction`` existed resumes with none)."""
    p, _, _ = run_data(run_id)
    if "dataset" not in p or "model" not in p:
        from tracking import TrackingError

        raise TrackingError(f"run {run_id} has no train parameters (dataset, model, ...): it cannot be resumed")
    data = data_config(p["dataset"], p.get("data_dir"), p.get("classes"))
    train = train_config_from(p)
    return data, train


def run(
    data_cfg: DataConfig,
    cfg: TrainConfig,
    dataset: Dataset | None = None,
    experiment: str | None = None,
    nested: bool = False,
    resume_run_id: str | None = None,
    tracking: bool = True,
) -> TrainResult:
    ds = dataset or load(data_cfg)
    device = pick_device(cfg.device)
    precision = pick_precision(cfg.precision, device)
    recipe = cfg.recipe()
    model, model_config = build_model(cfg, ds)
    model = model.to(device, memory_format=torch.channels_last)  # NHWC input permuted = channels_last already
    # Data resident on the device as float32, moved once; the validation holdout is never trained on.
    data = fit_tensors(ds, cfg.val_fraction, cfg.seed, device)
    params = training_params(data_cfg, cfg, ds, device, precision, model, len(data["x_train"]))
    exp_id = experiment_id_for(experiment)
    monitor = cfg.system_metrics and tracking
    with tracked_run(f"train-{cfg.tag()}", exp_id, nested=nested, run_id=resume_run_id, system_metrics=monitor) as rid:
        if not resume_run_id:
            log_params(params)
            log_data_inputs(ds)
        set_tags({"step": "train", "model": cfg.model, "dataset": ds.name})
        ckpt = checkpoint_dir(rid) / "last.pt"
        if resume_run_id and not ckpt.exists():
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            # Not on this machine: fetch it from the run (none logged yet: start at epoch 0, same run).
            with tempfile.TemporaryDirectory() as tmp, contextlib.suppress(Exception):
                shutil.move(download(rid, CHECKPOINT, tmp), ckpt)
        local_metrics = checkpoint_dir(rid) / "metrics.jsonl"
        skip = None
        if resume_run_id and tracking:
            # What the interrupted attempt kept locally goes up first (it may have lost its server);
            # steps the server holds are never logged twice.
            from tracking.metrics import logged_steps, resync
            from tracking.runs import replay_pending

            replay_pending(rid, end=False)
            if local_metrics.exists():
                resync(rid, local_metrics)
            skip = logged_steps(rid)
        logger = MetricLogger(rid if tracking else None, local_path=local_metrics, skip=skip)
        try:
            state = fit(
                model,
                data["x_train"],
                data["y_train"],
                data["x_test"],
                data["y_test"],
                recipe,
                cfg.seed,
                precision,
                cfg.eval_every,
                cfg.checkpoint_every,
                ckpt,
                resume=resume_run_id is not None,
                on_epoch=lambda epoch, metrics: logger.log(metrics, epoch),
                x_val=data.get("x_val"),
                y_val=data.get("y_val"),
            )
        finally:
            logger.flush(force=True)  # a dead server is found here in seconds: the rest is kept locally
            if ckpt.exists():
                log_file(ckpt, "checkpoints")  # resumable from any machine that sees the server
        log_trained(model, model_config, state)
    return TrainResult(rid, model.eval(), state, model_config)


def training_params(
    data_cfg: DataConfig, cfg: TrainConfig, ds: Dataset, device, precision: str, model: nn.Module, n_train: int
) -> dict:
    """What a training run logs about itself: raw params, resolved recipe, and what was actually used."""
    return {
        **as_params(data_cfg, cfg),
        **{f"recipe.{k}": v for k, v in cfg.recipe().items()},
        "classes_used": ",".join(map(str, ds.class_ids)),
        "device_used": str(device),
        "precision_used": precision,
        "channels_last": True,
        "cpu_allocator": host_allocator(device),
        "num_params": count_params(model),
        "n_train": n_train,
    }


def log_trained(model: nn.Module, model_config: dict, state) -> None:
    """Into the active run: timings and size, the state_dict + model config (``load_trained`` reads them), history."""
    log_metrics(
        {
            "train_seconds": state.train_seconds,
            "seconds_per_epoch": state.train_seconds / max(state.epoch, 1),
            "num_params": count_params(model),
            "epochs_done": state.epoch,
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(model.state_dict(), Path(tmp) / "state_dict.pt")
        log_file(Path(tmp) / "state_dict.pt", "model")
    log_json(model_config, MODEL_CONFIG)
    log_json(state.history, "history.json")
