"""Entry point ``export_onnx``: dynamo export with a dynamic batch, checker, onnxruntime parity, register."""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn

from pipelines import modelcard, registration
from pipelines.config import ExportConfig
from pipelines.data import Dataset
from pipelines.trained import configs_from_run, load_data, load_trained, predict
from tracking import experiment_id_for, tracked_run
from tracking.artifacts import log_data_inputs
from tracking.queries import run_data, run_experiment_id
from tracking.registry import log_onnx
from tracking.runs import log_metrics, log_params, parent_run_id, set_tags

INPUT, OUTPUT = "input", "output"


class ParityError(RuntimeError):
    """onnxruntime and PyTorch disagree by more than the tolerance: the export is not shipped."""


# ONNX opset stamped on every export, not the exporter's default (which moves with torch releases): both
# runtimes that read the file, onnxruntime (requirements.txt) and the vendored onnxruntime-web (web/package.json),
# implement it; tests/test_install.py checks that against onnxruntime's documented compatibility table.
OPSET = 18


def to_onnx(model: nn.Module, in_shape: tuple[int, ...]) -> onnx.ModelProto:
    """Export float NHWC 0..255 input ``input`` [batch, H, W, C] -> logits ``output`` [batch, k], at opset ``OPSET``."""
    model = model.cpu().eval()
    example = torch.rand(2, *in_shape) * 255  # batch >= 2 so the batch dimension is not specialised
    for name in ("torch.onnx", "torch._dynamo", "onnxscript"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LeafSpec", category=FutureWarning)  # torch-internal noise
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            opset_version=OPSET,
            verbose=False,
        )
    proto = program.model_proto
    onnx.checker.check_model(proto, full_check=True)
    return proto


def session(proto: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def parity(proto: onnx.ModelProto, model: nn.Module, x: np.ndarray) -> float:
    """Max |onnxruntime - torch| over the logits of ``x`` (uint8 NHWC)."""
    got = session(proto).run([OUTPUT], {INPUT: x.astype(np.float32)})[0]
    return float(np.abs(got - predict(model.cpu(), x)).max())


@dataclass
class ExportResult:
    onnx_max_abs_diff: float
    onnx_export_seconds: float
    model_id: str  # the MLflow LoggedModel
    registered_model: str | None = None  # None: logged without registering
    version: str | None = None
    champion: bool | None = None


def run(
    train_run_id: str,
    cfg: ExportConfig,
    dataset: Dataset | None = None,
    model: nn.Module | None = None,
    test_accuracy: float | None = None,
    experiment: str | None = None,
    nested: bool = False,
    test_metrics: dict[str, float] | None = None,
    promote: bool = True,
) -> ExportResult:
    """Export the model of ``train_run_id`` as a self-describing ONNX file; register it by the champion rule.

    ``test_metrics`` (evaluate's ``test_*`` numbers) are linked to the logged model with the test
    split they were measured on; ``promote=False`` registers without touching the aliases.
    """
    if model is None:
        model, _ = load_trained(train_run_id)  # a run without a trained model: one line, here
    data_cfg, train_cfg = configs_from_run(train_run_id)
    ds = dataset or load_data(data_cfg)
    registered = registration.registered_name(cfg.registered_model_name, ds, train_cfg.model)
    registration.check(registered, ds)  # before the export's own work: a mismatch costs nothing
    _, _, train_tags = run_data(train_run_id)
    name = train_tags.get("mlflow.runName", train_run_id).replace("train-", "")
    with tracked_run(f"export-{name}", experiment_id_for(experiment) or run_experiment_id(train_run_id), nested=nested):
        log_params(
            {
                "train_run_id": train_run_id,
                "registered_model_name": cfg.registered_model_name,
                "parity_tol": cfg.parity_tol,
                "opset": OPSET,
            }
        )
        set_tags({"step": "export_onnx", "train_run_id": train_run_id})
        test_set = log_data_inputs(ds)
        t0 = time.perf_counter()
        proto = to_onnx(model, ds.in_shape)
        seconds = time.perf_counter() - t0
        diff = parity(proto, model, ds.x_test)
        log_metrics({"onnx_export_seconds": seconds, "onnx_max_abs_diff": diff})
        if not diff < cfg.parity_tol:
            raise ParityError(f"onnxruntime differs from PyTorch by {diff:.3g} > parity_tol {cfg.parity_tol:g}")
        label = f"{train_cfg.model} ({train_cfg.tag()})"
        card, spec = registration.card_and_spec(
            ds, train_cfg.model, label, train_run_id, test_accuracy, {"train_run_id": train_run_id}
        )
        modelcard.embed(proto, card)
        linked = {k: v for k, v in (test_metrics or {}).items() if k.startswith("test_")}
        if test_accuracy is not None:
            linked["test_accuracy"] = test_accuracy
        logged = log_onnx(
            proto,
            ds.x_test[:2].astype(np.float32),
            predict(model, ds.x_test[:2]),
            registered,
            spec,
            card.to_metadata(),
            metrics=linked,
            dataset=test_set,
            promote=promote,
            model_name=registered or f"{ds.name}-{train_cfg.model}",
            source_run_id=parent_run_id(),  # `main` (or a study) lists the model it produced
        )
        result = ExportResult(onnx_max_abs_diff=diff, onnx_export_seconds=seconds, model_id=logged.model_id)
        set_tags({"model_id": logged.model_id})
        reg = logged.registered
        if reg:
            set_tags({"registered_model": reg.name, "registered_version": reg.version, "champion": reg.is_champion})
            set_tags({"champion_reason": reg.reason})
            result.registered_model, result.version, result.champion = reg.name, reg.version, reg.is_champion
    return result
