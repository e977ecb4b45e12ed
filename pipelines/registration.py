"""What a run registers, decided before it trains: the registered name, the kind of model, the version's card.

``registered_model_name`` is ``auto`` (``<dataset>-<model>``, plus the class ids when they are
not the data set's default: incompatible models never share a name), ``none`` (log the ONNX
model without registering it) or an explicit name, which must already hold this kind of model
or none at all (``check``, called before any training).
"""

from __future__ import annotations

from pipelines.data import Dataset, default_classes
from pipelines.modelcard import ModelCard
from tracking.registry import ModelKind, VersionSpec, check_compatible, default_model_name

AUTO = "auto"
NONE = ("", "none")


def resolve_name(raw: str | None, default: str) -> str | None:
    """``auto`` -> ``default``; ``none``/empty -> None (do not register); anything else as given."""
    value = str(raw or "").strip()
    if value.lower() in NONE:
        return None
    return default if value.lower() == AUTO else value


def registered_name(raw: str | None, ds: Dataset, model: str) -> str | None:
    """The name a model of architecture ``model`` trained on ``ds`` registers under."""
    return resolve_name(raw, default_model_name(ds.name, model, ds.class_ids, default_classes(ds.name)))


def kind_of(ds: Dataset) -> ModelKind:
    return ModelKind(ds.name, tuple(ds.class_ids), tuple(ds.class_names), tuple(ds.in_shape))


def check(name: str | None, ds: Dataset) -> None:
    """RegistryMismatch (one line) when ``name`` holds another kind of model; call it before training."""
    if name:
        check_compatible(name, kind_of(ds))


def describe_split(ds: Dataset) -> str:
    """``cifar100 test split (300 images, sha256 1a2b3c4d5e6f)``."""
    return f"{ds.name} test split ({len(ds.y_test)} images, sha256 {ds.test_fingerprint()[:12]})"


def card_and_spec(
    ds: Dataset, model: str, model_label: str, train_run_id: str, test_accuracy: float | None, tags: dict[str, str]
) -> tuple[ModelCard, VersionSpec]:
    """The ONNX file's card and the registry version's spec of a classifier trained on ``ds``."""
    kind, split = kind_of(ds), describe_split(ds)
    card = ModelCard(
        model=model,
        dataset=ds.name,
        class_ids=list(ds.class_ids),
        class_names=list(ds.class_names),
        input_shape=list(ds.in_shape),
        dataset_fingerprint=ds.fingerprint(),
        test_fingerprint=ds.test_fingerprint(),
        test_split=split,
        train_run_id=train_run_id,
        test_accuracy=test_accuracy,
    )
    score = f"test accuracy {test_accuracy:.4f}" if test_accuracy is not None else "no test accuracy"
    description = (
        f"{model_label} on {kind.describe()} ({', '.join(ds.class_names)}): {score} on the "
        f"{split}; trained in run {train_run_id}."
    )
    spec = VersionSpec(kind, test_accuracy, "test_accuracy", ds.test_fingerprint(), description, tags)
    return card, spec
