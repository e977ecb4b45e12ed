"""Entry point ``segment``: U-Net segmentation, trained, evaluated and exported in one run.

    python -m pipelines segment --task binary|multiclass [--epochs 25] [--data-dir DIR]
    mlflow run . -e segment -P task=multiclass

Data: the generated ``segdigits`` task (``pipelines/data/segmentation.py``) or a user's folder of
``images/*.png`` + ``masks/*.png``. Model: any zoo model registered for ``segdigits``
(``unet_small``), logits [B, N, H, W]; binary = 1 channel, sigmoid, BCE + soft Dice loss;
multiclass = one channel per class (background included), softmax/argmax, cross-entropy + soft
Dice over the digit (foreground) classes.

One MLflow run, not parent + children: ``main`` splits prep/train/evaluate/export because each
is also its own entry point working from a previous run's id. Here the data are generated (or
read) deterministically in-process and identified by their fingerprint param, and the
segmentation evaluation and export only make sense for the model this run just trained, so a
single run holds the whole story — params, per-epoch curves, checkpoint, per-class IoU/Dice
table, prediction figure, ONNX model (and registry version) — and one id is all a user needs.
A killed run resumes into the same run with ``--resume RUN_ID`` (params are re-read from it).

Logged: params (the raw values as given, ``recipe.*``, ``data.*``; ``env.*`` as tags); per epoch
``train_loss``/``train_acc`` (pixel accuracy; mean and batch p25/p75), ``test_loss``/``test_acc``
likewise on the test split plus ``test_epoch_miou``/``test_epoch_mdice``; after training, in eval
mode, ``{train,test}_{pixel_acc, miou, mdice, miou_fg, mdice_fg, eval_loss}`` and
``{split}_{iou,dice}_class_<id>`` (a class absent from both
truth and prediction has no IoU and is not logged), inference latency, ``onnx_max_abs_diff``.
Artifacts: ``reports/segmentation_report_*`` (table + CSV), ``reports/confusion_*.json``,
``figures/predictions_test.png`` (image / true / predicted mask), ``figures/learning_curves.png``,
``model/state_dict.pt`` + ``model/model_config.json`` (``pipelines.trained.load_trained`` rebuilds
the model from them), ``checkpoints/last.pt``, ``history.json`` and the ONNX model.
The registry's champion rule compares the version tag ``test_accuracy``; for segmentation the
value given to it is the test mIoU (tag ``score_metric`` says so).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from models import count_params
from pipelines.data.segmentation import SegDataset, load_folder, load_generated
from pipelines.device import autocast_dtype, pick_device, pick_precision
from pipelines.params import raw_values
from pipelines.parsing import ConfigError
from pipelines.runner import place, training_run
from pipelines.segmentation_config import SegmentConfig
from pipelines.segmentation_metrics import (
    evaluate_tensors,
    mask_hooks,
    predictions_figure,
    report_table,
    segmentation_scores,
)
from pipelines.trained import inference_latency, instantiate, model_config_for, predict
from tracking.runs import log_metrics, set_tags

PARITY_IMAGES = 64  # test images compared between onnxruntime and torch (a batch the export never saw)
FIGURE_IMAGES = 4


def load_data(cfg: SegmentConfig) -> SegDataset:
    if cfg.data_dir:
        return load_folder(cfg.data_dir, cfg.task, cfg.data_seed)
    return load_generated(cfg.task, cfg.n_train, cfg.n_test, cfg.size, cfg.max_digits, cfg.data_seed)


def build_model(cfg: SegmentConfig, ds: SegDataset) -> tuple[nn.Module, dict]:
    """Model + the config ``pipelines.trained.instantiate``/``load_trained`` rebuild it from."""
    model_config = model_config_for(
        cfg,
        ds,
        ds.out_channels,
        task=ds.task,
        class_names=ds.class_names,
        output="logits [batch, num_classes, H, W]; binary: sigmoid > 0.5, multiclass: argmax over classes",
    )
    torch.manual_seed(cfg.seed)  # the initial weights depend on the seed only
    try:
        model = instantiate(model_config)
    except ValueError as e:  # e.g. images too small for the depth
        raise ConfigError(str(e)) from None
    return model, model_config


def mask_tensors(ds: SegDataset, device) -> dict[str, torch.Tensor]:
    """``fit``'s data on ``device``: images as float32, masks as class ids."""
    arrays = {"x_train": ds.x_train, "y_train": ds.y_train, "x_test": ds.x_test, "y_test": ds.y_test}
    return {
        k: torch.from_numpy(a).to(device).float() if k[0] == "x" else torch.from_numpy(a).to(device).long()
        for k, a in arrays.items()
    }


def run_params(cfg: SegmentConfig, ds: SegDataset, device, precision: str, model: nn.Module) -> dict:
    """What a segment run logs about itself: the raw values as given, the recipe, the data, what was used."""
    return {
        **raw_values("segment", cfg.raw),
        **{f"recipe.{key}": v for key, v in cfg.recipe().items()},
        "data.name": ds.name,
        "data.source": ds.source,
        "data.fingerprint_sha256": ds.fingerprint(),
        "data.n_train": len(ds.x_train),
        "data.n_test": len(ds.x_test),
        "data.in_shape": "x".join(map(str, ds.in_shape)),
        "data.class_names": ",".join(ds.class_names),
        "data.foreground_fraction": f"{float((ds.y_train > 0).mean()):.4f}",
        "num_classes": ds.num_classes,
        "out_channels": ds.out_channels,
        "device_used": str(device),
        "precision_used": precision,
        "channels_last": True,
        "num_params": count_params(model),
    }


def _log_new_params(run_id: str, params: dict) -> None:
    """Log what the run does not have yet: ``mlflow run`` logged the entry point's params first, in
    its own spelling, and MLflow refuses to change a param; a resumed run has them all already."""
    from tracking.queries import run_data
    from tracking.runs import log_params

    have = run_data(run_id)[0]
    new = {k: v for k, v in params.items() if k not in have}
    if new:
        log_params(new)


def evaluate_splits(model, data: dict, ds: SegDataset, cfg: SegmentConfig, dtype, title: str) -> dict[str, float]:
    """Eval-mode IoU/Dice per class and split into the active run: tables, confusion, prediction figure."""
    from tracking.artifacts import log_figure, log_json, log_table

    metrics: dict[str, float] = {}
    k, batch = ds.num_classes, cfg.recipe()["batch_size"]
    for split in ("train", "test"):
        keep = FIGURE_IMAGES if split == "test" else 0
        stats, cm, masks = evaluate_tensors(
            model, data[f"x_{split}"], data[f"y_{split}"], cfg.task, k, batch, dtype, keep
        )
        scores = segmentation_scores(cm.cpu().numpy())
        metrics[f"{split}_eval_loss"] = float(stats[:, 0].mean())  # not train_loss: that is per epoch
        for key in ("pixel_acc", "miou", "mdice", "miou_fg", "mdice_fg"):
            metrics[f"{split}_{key}"] = scores[key]
        for i in range(k):
            for key in ("iou", "dice"):
                metrics[f"{split}_{key}_class_{i}"] = float(scores[key][i])
        log_table(report_table(scores, ds.class_names), f"reports/segmentation_report_{split}")
        log_json(
            {"class_names": ds.class_names, "confusion": cm.cpu().tolist(), "rows_true_cols_pred": True},
            f"reports/confusion_{split}.json",
        )
        if split == "test":
            images, true = ds.x_test[:FIGURE_IMAGES], ds.y_test[:FIGURE_IMAGES]
            fig = predictions_figure(images, true, masks.cpu().numpy(), ds.class_names, title)
            log_figure(fig, "figures/predictions_test.png")
    return metrics


def _onnx_metadata(cfg: SegmentConfig, ds: SegDataset, fp_test: str, split: str, rid: str) -> dict[str, str]:
    return {
        "model": cfg.model,
        "task": cfg.task,
        "dataset": ds.name,
        "class_names": json.dumps(list(ds.class_names)),
        "input_name": "input",
        "input_shape": json.dumps(list(ds.in_shape)),
        "input_layout": "NHWC",
        "input_range": "float32 0..255 (raw pixels; the model normalises inside)",
        "output_layout": "logits NCHW [batch, out_channels, H, W]",
        "dataset_fingerprint": ds.fingerprint(),
        "test_fingerprint": fp_test,
        "test_split": split,
        "train_run_id": rid,
    }


def export_and_register(model, cfg: SegmentConfig, ds: SegDataset, kind, metrics: dict, rid: str):
    """ONNX with dynamic batch, checked against onnxruntime on a batch size the export never saw, logged
    (and registered) with the test mIoU as its score. Adds the ONNX numbers to ``metrics``."""
    from pipelines.data import split_fingerprint
    from pipelines.export_onnx import ParityError, parity, to_onnx
    from tracking.registry import VersionSpec, log_onnx

    t0 = time.perf_counter()
    proto = to_onnx(model, ds.in_shape)  # moves the model to the CPU
    export_seconds = time.perf_counter() - t0
    x_parity = ds.x_test[:PARITY_IMAGES]
    diff = parity(proto, model, x_parity)
    onnx_metrics = {
        "onnx_export_seconds": export_seconds,
        "onnx_max_abs_diff": diff,
        "onnx_parity_batch": len(x_parity),
    }
    log_metrics(onnx_metrics)
    metrics.update(onnx_metrics)
    if not diff < cfg.parity_tol:
        raise ParityError(f"onnxruntime differs from PyTorch by {diff:.3g} > parity_tol {cfg.parity_tol:g}")
    fp_test = split_fingerprint(ds.x_test, ds.y_test, ds.class_names)
    split = f"{ds.name} {cfg.task} test split ({len(ds.y_test)} images, sha256 {fp_test[:12]})"
    spec = VersionSpec(
        kind,
        metrics["test_miou"],
        "test_miou",
        fp_test,
        f"{cfg.model} segmentation on {kind.describe()} ({', '.join(ds.class_names)}): test mIoU "
        f"{metrics['test_miou']:.4f} on the {split}; trained in run {rid}.",
        {"segment_run_id": rid},
    )
    metadata = _onnx_metadata(cfg, ds, fp_test, split, rid)
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return log_onnx(
        proto,
        ds.x_test[:2].astype(np.float32),
        predict(model, ds.x_test[:2]),
        cfg.registered_name(ds),
        spec,
        metadata,
        metrics={key: metrics[key] for key in ("test_miou", "test_mdice", "test_pixel_acc")},
    )


@dataclass
class SegmentResult:
    run_id: str
    model_id: str
    metrics: dict[str, float]  # train/test IoU, Dice, pixel accuracy, timings, ONNX parity
    registered_model: str | None = None
    version: str | None = None
    champion: bool | None = None


def run(
    cfg: SegmentConfig,
    dataset: SegDataset | None = None,
    experiment: str | None = None,
    resume_run_id: str | None = None,
    progress: bool = True,
) -> SegmentResult:
    """Train + evaluate + export one segmentation model in one run."""
    from pipelines import plots
    from tracking import experiment_id_for
    from tracking.artifacts import log_dataset_input, log_figure
    from tracking.registry import ModelKind, check_compatible

    ds = dataset or load_data(cfg)  # bad data fails here, before any run exists
    kind = ModelKind(ds.name, tuple(range(ds.num_classes)), tuple(ds.class_names), tuple(ds.in_shape), cfg.task)
    if cfg.registered_name(ds):  # a name holding another kind of model is refused before training
        check_compatible(cfg.registered_name(ds), kind)
    device = pick_device(cfg.device)
    precision = pick_precision(cfg.precision, device)
    model, model_config = build_model(cfg, ds)
    model = place(model, device)
    data = mask_tensors(ds, device)
    params = run_params(cfg, ds, device, precision, model)
    name = f"segment-{cfg.task}-{cfg.model}-s{cfg.seed}"
    with training_run(name, experiment_id_for(experiment), resume_run_id=resume_run_id) as session:
        rid = session.run_id
        _log_new_params(rid, params)
        set_tags({"step": "segment", "task": cfg.task, "model": cfg.model, "dataset": ds.name})
        if session.is_new:
            fingerprint = ds.fingerprint()
            log_dataset_input(f"{ds.name}-{ds.task}-train", ds.x_train, ds.y_train, ds.source, fingerprint, "training")
            log_dataset_input(f"{ds.name}-{ds.task}-test", ds.x_test, ds.y_test, ds.source, fingerprint, "evaluation")
        hooks = mask_hooks(cfg.task, ds.num_classes)
        state = session.fit(model, data, cfg, precision=precision, progress=progress, **hooks)
        metrics = session.log_trained(model, model_config, state, metrics=False)  # logged below with the rest
        metrics.update(evaluate_splits(model, data, ds, cfg, autocast_dtype(precision), name))
        log_figure(plots.learning_curves(state.history, name), "figures/learning_curves.png")
        metrics.update(inference_latency(model, ds.x_test, batch_size=min(len(ds.x_test), 32)))
        log_metrics({key: v for key, v in metrics.items() if math.isfinite(v)})  # NaN: class absent everywhere
        logged = export_and_register(model, cfg, ds, kind, metrics, rid)
        result = SegmentResult(rid, logged.model_id, metrics)
        reg = logged.registered
        if reg:
            set_tags({"registered_model": reg.name, "registered_version": reg.version, "champion": reg.is_champion})
            result.registered_model, result.version, result.champion = reg.name, reg.version, reg.is_champion
    return result
