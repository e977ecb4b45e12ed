"""Model registry: log + register the ONNX model, and the champion rule for aliases."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import version as package_version
from pathlib import Path

import mlflow
import mlflow.onnx
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

CHAMPION = "champion"
SCORE_TAG = "test_accuracy"  # version tag the champion rule compares


@dataclass
class Registered:
    name: str
    version: str
    model_uri: str  # models:/<name>/<version>
    is_champion: bool
    previous_champion_score: float | None


def log_onnx(
    onnx_model,
    example: np.ndarray,
    logits: np.ndarray,
    registered_model_name: str | None,
    score: float | None,
    tags: dict[str, str],
) -> Registered | None:
    """Log the ONNX model to the active run (flavour ``onnx``) and register a new version.

    The ONNX file is stored whole (no external-data side file): these models are small and
    one downloadable file is the product.
    """
    signature = infer_signature(example, logits)
    info = mlflow.onnx.log_model(
        onnx_model,
        name="model",
        signature=signature,
        input_example=example,
        registered_model_name=registered_model_name,
        onnx_execution_providers=["CPUExecutionProvider"],
        # What serving the file needs, stated instead of inferred (inference costs ~6 s per call).
        pip_requirements=[f"onnx=={package_version('onnx')}", f"onnxruntime=={package_version('onnxruntime')}"],
        save_as_external_data=False,
        tags=tags,
    )
    if not registered_model_name:
        return None
    version = str(info.registered_model_version)
    client = MlflowClient()
    for key, value in {**tags, **({SCORE_TAG: f"{score:.6f}"} if score is not None else {})}.items():
        client.set_model_version_tag(registered_model_name, version, key, str(value))
    prev = champion_score(registered_model_name)
    better = score is not None and (prev is None or score > prev)
    if better or (prev is None and score is None and not _has_alias(registered_model_name)):
        client.set_registered_model_alias(registered_model_name, CHAMPION, version)
    return Registered(registered_model_name, version, f"models:/{registered_model_name}/{version}", better, prev)


def _has_alias(name: str, alias: str = CHAMPION) -> bool:
    try:
        MlflowClient().get_model_version_by_alias(name, alias)
        return True
    except MlflowException:
        return False


def champion_score(name: str, alias: str = CHAMPION) -> float | None:
    """The score tag of the version holding ``alias``; None when there is none (or no score)."""
    try:
        mv = MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    value = mv.tags.get(SCORE_TAG)
    return float(value) if value is not None else None


def set_alias(name: str, alias: str, version: str) -> None:
    MlflowClient().set_registered_model_alias(name, alias, version)


def download_model(model_uri: str, dst: str | Path) -> Path:
    """Download a logged/registered model folder (``models:/name@alias``, ``runs:/id/model``).

    Only inside ``dst``: names from the server are checked before and after (path traversal).
    """
    from tracking.artifacts import safe_download

    return safe_download(model_uri, dst)


# --- demo (issue 7): resolve a models:/ URI to its registered version and tags ---


@dataclass
class ModelVersionInfo:
    name: str
    version: str
    run_id: str  # the run that logged the model (the export run)
    tags: dict[str, str]  # version tags: train_run_id, dataset, classes, class_names, test_accuracy, ...


def model_version_info(model_uri: str) -> ModelVersionInfo:
    """``models:/<name>@<alias>`` or ``models:/<name>/<version>`` -> its version; one-line TrackingError if none."""
    from tracking.runs import TrackingError

    if not model_uri.startswith("models:/") or len(model_uri) <= len("models:/"):
        raise TrackingError(f"model URI must be models:/<name>@<alias> or models:/<name>/<version>, got {model_uri!r}")
    ref = model_uri[len("models:/") :].rstrip("/")
    client = MlflowClient()
    try:
        if "@" in ref:
            name, alias = ref.rsplit("@", 1)
            mv = client.get_model_version_by_alias(name, alias)
        elif "/" in ref:
            name, version = ref.rsplit("/", 1)
            mv = client.get_model_version(name, version)
        else:
            raise TrackingError(f"model URI {model_uri!r} names no alias or version (models:/<name>@champion)")
    except MlflowException as e:
        raise TrackingError(f"no registered model {model_uri}: {str(e).splitlines()[0]}") from None
    return ModelVersionInfo(mv.name, str(mv.version), mv.run_id or "", dict(mv.tags or {}))
