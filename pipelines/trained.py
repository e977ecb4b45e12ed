"""A trained model, shared by the entry points: build, load and log it, its data, its summary numbers.

``train``, ``segment``, ``study`` trials and ``gradients`` log a model the same way (``log_trained``:
``model/state_dict.pt`` + ``model/model_config.json``, ``history.json``, timings); ``evaluate``,
``export_onnx`` and the analyses rebuild it with ``load_trained``.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn as nn

from models import count_params, create_model
from pipelines.data import Dataset, load_dataset, split_validation
from pipelines.device import host_allocator
from tracking.artifacts import download, log_file, log_json
from tracking.queries import run_data
from tracking.runs import log_metrics

if TYPE_CHECKING:
    from pipelines.config import DataConfig, TrainConfig

MODEL_CONFIG = "model/model_config.json"  # how to rebuild the module
STATE_DICT = "model/state_dict.pt"  # weights only: load with torch.load(weights_only=True)
CHECKPOINT = "checkpoints/last.pt"

# What a classifier run reports in the end: `main`, study trials and the comparison tables read these.
SUMMARY = (
    "test_accuracy",
    "test_macro_f1",
    "train_accuracy",
    "overfit_gap",
    "train_seconds",
    "seconds_per_epoch",
    "inference_ms_per_image",
    "inference_ms_per_batch",
    "num_params",
    "onnx_max_abs_diff",
)


def load_data(cfg: DataConfig) -> Dataset:
    """The data set a data config names (downloaded and verified when needed)."""
    return load_dataset(cfg.dataset, cfg.data_dir, cfg.classes or None)


def checkpoint_dir(run_id: str) -> Path:
    """Local checkpoint folder of a run (``$PIPELINE_CHECKPOINT_DIR`` or ./checkpoints)."""
    from tracking.offline import local_run_dir

    return local_run_dir(run_id)


def model_config_for(cfg, ds, num_classes: int, **extra) -> dict:
    """What ``instantiate`` rebuilds a model from (logged as ``model/model_config.json``): ``cfg``'s model and
    options, ``ds``'s input shape and normalisation, and what describes the outputs (``extra``)."""
    return {
        "model": cfg.model,
        "options": cfg.model_options(),
        "num_classes": num_classes,
        "in_shape": list(ds.in_shape),
        "mean": list(ds.mean),
        "std": list(ds.std),
        **extra,
        "dataset": ds.name,
    }


def build_model(cfg: TrainConfig, ds: Dataset) -> tuple[nn.Module, dict]:
    """A classifier for ``ds`` by ``cfg`` (initial weights from the seed only) and the config that rebuilds it."""
    model_config = model_config_for(cfg, ds, ds.num_classes, class_ids=ds.class_ids, class_names=ds.class_names)
    torch.manual_seed(cfg.seed)
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
        except (MlflowException, OSError):  # an interrupted run: one line that says what to do
            raise TrackingError(
                f"run {run_id} has no trained model ({MODEL_CONFIG} missing): finish it first with "
                f"`python -m pipelines train --resume {run_id}`"
            ) from None
        state = torch.load(download(run_id, STATE_DICT, tmp), map_location="cpu", weights_only=True)
    model = instantiate(config)
    model.load_state_dict(state)
    return model.eval(), config


def configs_from_run(run_id: str) -> tuple[DataConfig, TrainConfig]:
    """The data and train configs a finished or interrupted train run was started with (a run logged
    before ``val_fraction`` existed resumes with none)."""
    from pipelines.config import data_config, train_config_from  # parsing, only when a run is read back

    p, _, _ = run_data(run_id)
    if "dataset" not in p or "model" not in p:
        from tracking import TrackingError

        raise TrackingError(f"run {run_id} has no train parameters (dataset, model, ...): it cannot be resumed")
    return data_config(p["dataset"], p.get("data_dir"), p.get("classes")), train_config_from(p)


def fit_tensors(ds: Dataset, fraction: float, seed: int, device) -> dict[str, torch.Tensor]:
    """``fit``'s data on ``device`` (images as float32, moved once): ``x_train``/``y_train`` (the training set
    minus the validation holdout), ``x_test``/``y_test``, and ``x_val``/``y_val`` when ``fraction`` > 0."""
    rest, val = split_validation(ds, fraction, seed)
    arrays = {"x_train": rest.x_train, "y_train": rest.y_train, "x_test": ds.x_test, "y_test": ds.y_test}
    if val is not None:
        arrays["x_val"], arrays["y_val"] = val
    out = {k: torch.from_numpy(a).to(device) for k, a in arrays.items()}
    return {k: t.float() if k.startswith("x_") else t for k, t in out.items()}


def training_params(
    data_cfg: DataConfig, cfg: TrainConfig, ds: Dataset, device, precision: str, model: nn.Module, n_train: int
) -> dict:
    """What a training run logs about itself: raw params, resolved recipe, and what was actually used."""
    from pipelines.config import as_params

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


def trained_metrics(model: nn.Module, state) -> dict[str, float]:
    """Timings and size of a finished training."""
    return {
        "train_seconds": state.train_seconds,
        "seconds_per_epoch": state.train_seconds / max(state.epoch, 1),
        "num_params": count_params(model),
        "epochs_done": state.epoch,
    }


def log_weights(model: nn.Module, model_config: dict) -> None:
    """Into the active run: the state_dict + model config that ``load_trained`` reads."""
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(model.state_dict(), Path(tmp) / "state_dict.pt")
        log_file(Path(tmp) / "state_dict.pt", Path(STATE_DICT).parent.as_posix())
    log_json(model_config, MODEL_CONFIG)


def log_trained(model: nn.Module, model_config: dict, state, metrics: bool = True) -> dict[str, float]:
    """Into the active run: timings and size (unless ``metrics`` is false), weights, config and history.
    Returns the timings and size."""
    numbers = trained_metrics(model, state)
    if metrics:
        log_metrics(numbers)
    log_weights(model, model_config)
    log_json(state.history, "history.json")
    return numbers


@torch.inference_mode()
def predict(model: nn.Module, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Logits for uint8 NHWC images, on the model's device, in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    out = [
        model(torch.from_numpy(x[i : i + batch_size]).to(device).float()).float().cpu()
        for i in range(0, len(x), batch_size)
    ]
    return torch.cat(out).numpy()


@torch.inference_mode()
def inference_latency(
    model: nn.Module, x: np.ndarray, batch_size: int = 128, warmup: int = 3, repeats: int = 10
) -> dict[str, float]:
    """Median wall time of a forward pass (after warm-up), per batch and per image, plus batch-1 latency."""
    model.eval()
    device = next(model.parameters()).device
    batch = torch.from_numpy(x[:batch_size]).to(device).float()
    single = batch[:1]

    def median_ms(inp: torch.Tensor) -> float:
        times = []
        for i in range(warmup + repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            model(inp)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1000)
        return statistics.median(times)

    per_batch = median_ms(batch)
    return {
        "inference_ms_per_batch": per_batch,
        "inference_ms_per_image": per_batch / len(batch),
        "inference_ms_single": median_ms(single),
        "inference_batch_size": float(len(batch)),
    }
