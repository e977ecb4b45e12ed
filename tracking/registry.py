"""Model registry: one kind of model per registered name, and a champion rule that compares like with like.

A registered name holds versions a user can swap for one another: the same data set, class ids
and names, input shape and task (its ``ModelKind``, stored as tags of the registered model when its
first version is registered). A run whose kind differs is refused before it trains
(``check_compatible``). ``champion`` moves to a new version only when its score was measured on
the same test split (the split's fingerprint) as the current champion's and is higher.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import version as package_version
from pathlib import Path

import mlflow
import mlflow.onnx
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from tracking.errors import TrackingError

CHAMPION = "champion"
CHALLENGER = "challenger"
SCORE_TAG = "score"  # version tag the champion rule compares (its metric is in SCORE_METRIC_TAG)
SCORE_METRIC_TAG = "score_metric"
TEST_FINGERPRINT_TAG = "test_fingerprint"  # sha256 of the test split the score was measured on
KIND_PREFIX = "kind."  # registered-model tags that make a name's versions interchangeable


class RegistryMismatch(TrackingError):
    """A run would register a model that is not interchangeable with the name's existing versions."""


def _id_list(ids) -> str:
    """``0..9`` for a run of consecutive ids, else ``0,33,41``."""
    ids = [int(i) for i in ids]
    if len(ids) > 3 and ids == list(range(ids[0], ids[0] + len(ids))):
        return f"{ids[0]}..{ids[-1]}"
    return ",".join(map(str, ids))


@dataclass(frozen=True)
class ModelKind:
    """What makes two registered versions interchangeable for a user."""

    dataset: str
    class_ids: tuple[int, ...]
    class_names: tuple[str, ...]
    input_shape: tuple[int, ...]  # H, W, C of the NHWC input
    task: str = "classification"

    def describe(self) -> str:
        """``cifar100 classes 0,33,41 (32x32x3)``; the task is named when it is not classification."""
        task = "" if self.task == "classification" else f" {self.task}"
        shape = "x".join(map(str, self.input_shape))
        return f"{self.dataset}{task} classes {_id_list(self.class_ids)} ({shape})"

    def tags(self) -> dict[str, str]:
        return {
            f"{KIND_PREFIX}dataset": self.dataset,
            f"{KIND_PREFIX}classes": ",".join(map(str, self.class_ids)),
            f"{KIND_PREFIX}class_names": ",".join(self.class_names),
            f"{KIND_PREFIX}input_shape": "x".join(map(str, self.input_shape)),
            f"{KIND_PREFIX}task": self.task,
        }

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> ModelKind | None:
        t = {k[len(KIND_PREFIX) :]: v for k, v in tags.items() if k.startswith(KIND_PREFIX)}
        if "dataset" not in t:
            return None
        return cls(
            t["dataset"],
            tuple(int(i) for i in t.get("classes", "").split(",") if i),
            tuple(n for n in t.get("class_names", "").split(",") if n),
            tuple(int(i) for i in t.get("input_shape", "").split("x") if i),
            t.get("task", "classification"),
        )


def default_model_name(dataset: str, model: str, class_ids, default_class_ids) -> str:
    """``<dataset>-<model>``, plus ``-c<ids>`` when the classes are not the data set's default."""
    name = f"{dataset}-{model}"
    if list(class_ids) != list(default_class_ids):
        name += "-c" + "-".join(map(str, class_ids))
    return name


def registered_kind(name: str) -> ModelKind | None:
    """The kind of model ``name`` holds; None when the name does not exist yet (or holds no version)."""
    client = MlflowClient()
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        return None
    return ModelKind.from_tags(dict(model.tags or {}))


def check_compatible(name: str, kind: ModelKind) -> None:
    """RegistryMismatch (one line) when ``name`` already holds another kind of model."""
    held = registered_kind(name)
    if held is not None and held != kind:
        raise RegistryMismatch(
            f"registered model {name} holds {held.describe()}; this run is {kind.describe()}: "
            "choose another --registered-model-name"
        )


@dataclass
class VersionSpec:
    """What a new version is: its kind, its score and where that score comes from, and its description."""

    kind: ModelKind
    score: float | None  # the champion rule's number (test accuracy, test mIoU)
    score_metric: str  # its name, e.g. "test_accuracy"
    test_fingerprint: str  # the split the score was measured on
    description: str  # one sentence: data, classes, model, score on which split, source run
    tags: dict[str, str] = field(default_factory=dict)  # more version tags (train_run_id, ...)


@dataclass
class Registered:
    name: str
    version: str
    model_uri: str  # models:/<name>/<version>
    is_champion: bool
    previous_champion_score: float | None
    reason: str  # why champion moved or stayed, one sentence


@dataclass
class LoggedOnnx:
    model_id: str  # the LoggedModel (MLflow 3): models:/<model_id>
    registered: Registered | None


def log_onnx(
    onnx_model,
    example: np.ndarray,
    logits: np.ndarray,
    registered_model_name: str | None,
    spec: VersionSpec,
    metadata: dict[str, str],
    metrics: dict[str, float] | None = None,
    dataset=None,
    promote: bool = True,
    model_name: str = "model",
    source_run_id: str | None = None,
) -> LoggedOnnx:
    """Log the ONNX model to the active run as a LoggedModel and, with a name, register a new version.

    ``metadata`` goes into the MLmodel file; ``metrics`` are linked to the LoggedModel (and to
    ``dataset``, an ``mlflow.data`` data set) so the Models tab shows them. With ``promote``,
    ``champion`` moves by the rule above; a study passes ``promote=False`` and sets aliases itself.
    ``source_run_id`` (e.g. the ``main`` run above this one) is the run the UI lists the model under;
    default: the active run. The ONNX file is stored whole (no external-data side file): one
    downloadable file is the product.
    """
    if registered_model_name:
        check_compatible(registered_model_name, spec.kind)  # again: another run may have registered since
    model_id = None
    if source_run_id:
        experiment_id = mlflow.active_run().info.experiment_id
        model_id = mlflow.initialize_logged_model(model_name, source_run_id, experiment_id=experiment_id).model_id
    info = mlflow.onnx.log_model(
        onnx_model,
        name=model_name,
        model_id=model_id,
        signature=infer_signature(example, logits),
        input_example=example,
        registered_model_name=registered_model_name or None,
        onnx_execution_providers=["CPUExecutionProvider"],
        # What serving the file needs, stated instead of inferred (inference costs seconds per call).
        pip_requirements=[f"onnx=={package_version('onnx')}", f"onnxruntime=={package_version('onnxruntime')}"],
        save_as_external_data=False,
        metadata=metadata,
        tags=spec.tags,
    )
    if metrics:
        mlflow.log_metrics(metrics, model_id=info.model_id, dataset=dataset)
    if not registered_model_name:
        return LoggedOnnx(info.model_id, None)
    version = str(info.registered_model_version)
    return LoggedOnnx(info.model_id, _register(registered_model_name, version, spec, promote))


def _register(name: str, version: str, spec: VersionSpec, promote: bool) -> Registered:
    client = MlflowClient()
    if registered_kind(name) is None:  # the first version fixes what the name holds
        for key, value in spec.kind.tags().items():
            client.set_registered_model_tag(name, key, value)
        client.update_registered_model(name, description=f"Models of {spec.kind.describe()}.")
    tags = {**spec.kind.tags(), **spec.tags, SCORE_METRIC_TAG: spec.score_metric}
    tags[TEST_FINGERPRINT_TAG] = spec.test_fingerprint
    if spec.score is not None:
        tags[SCORE_TAG] = f"{spec.score:.6f}"
        tags[spec.score_metric] = f"{spec.score:.6f}"
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))
    client.update_model_version(name, version, description=spec.description)
    current = champion_version(name)
    prev = _score(current) if current is not None else None
    if not promote:
        moved, reason = False, "aliases are set by the caller"
    elif current is None:
        moved, reason = True, "first version with a score" if spec.score is not None else "first version"
    elif spec.score is None:
        moved, reason = False, "this version has no score"
    elif (current.tags or {}).get(TEST_FINGERPRINT_TAG) != spec.test_fingerprint:
        moved, reason = False, f"champion v{current.version} was scored on another test split"
    elif prev is None or spec.score > prev:
        moved, reason = True, f"{spec.score:.4f} beats champion v{current.version}'s {prev}"
    else:
        moved, reason = False, f"{spec.score:.4f} does not beat champion v{current.version}'s {prev:.4f}"
    if moved:
        client.set_registered_model_alias(name, CHAMPION, version)
    return Registered(name, version, f"models:/{name}/{version}", moved, prev, reason)


def champion_version(name: str, alias: str = CHAMPION):
    """The ModelVersion holding ``alias``; None when there is none."""
    try:
        return MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _score(mv) -> float | None:
    tags = mv.tags or {}
    value = tags.get(SCORE_TAG, tags.get("test_accuracy"))
    return float(value) if value is not None else None


def champion_score(name: str, alias: str = CHAMPION) -> float | None:
    """The score of the version holding ``alias``; None when there is none (or no score)."""
    mv = champion_version(name, alias)
    return _score(mv) if mv is not None else None


def set_alias(name: str, alias: str, version: str) -> None:
    MlflowClient().set_registered_model_alias(name, alias, version)


def find_model_version(name: str, tag: str, value: str) -> str | None:
    """Newest version of registered model ``name`` whose tag ``tag`` equals ``value``."""
    try:
        versions = MlflowClient().search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    hits = [int(v.version) for v in versions if (v.tags or {}).get(tag) == value]
    return str(max(hits)) if hits else None


def set_model_version_tags(name: str, version: str, tags: dict) -> None:
    client = MlflowClient()
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, str(v))


def download_model(model_uri: str, dst: str | Path) -> Path:
    """Download a logged/registered model folder (``models:/name@alias``, ``runs:/id/model``).

    Only inside ``dst``: names from the server are checked before and after (path traversal).
    """
    from tracking.artifacts import safe_download

    return safe_download(model_uri, dst)


@dataclass
class ModelVersionInfo:
    name: str
    version: str
    run_id: str  # the run that logged the model (the export run)
    tags: dict[str, str]  # version tags: train_run_id, kind.*, score, test_fingerprint, ...


def model_version_info(model_uri: str) -> ModelVersionInfo:
    """``models:/<name>@<alias>`` or ``models:/<name>/<version>`` -> its version; one-line TrackingError if none."""
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
