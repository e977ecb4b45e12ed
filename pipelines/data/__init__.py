"""Data sets: one interface, ``load_dataset(name, data_dir, classes) -> Dataset``.

Images are uint8 NHWC (0..255) and labels int64 0..k-1 after the class subset is applied;
``class_ids`` keeps the original label ids and ``class_names`` their names.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np


class DataError(ValueError):
    """A data set is missing, corrupt or in the wrong format (user error: one-line message)."""


@dataclass
class Dataset:
    name: str
    x_train: np.ndarray  # uint8 [N, H, W, C]
    y_train: np.ndarray  # int64 [N], 0..k-1
    x_test: np.ndarray
    y_test: np.ndarray
    class_ids: list[int]  # original label id of each class index
    class_names: list[str]
    mean: tuple[float, ...]  # per-channel mean/std of x/255, used by the model's Normalize
    std: tuple[float, ...]
    source: str  # where the files came from (path or URL)
    warnings: list[str] = field(default_factory=list)
    # sha256s, computed once per object (not copied by dataclasses.replace, which makes a new data set)
    _digests: dict[str, str] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)

    @property
    def labels(self) -> list[str]:
        """Human-readable ``"<id> <name>"`` labels in class-index order (used in reports)."""
        return [f"{i} {n}" for i, n in zip(self.class_ids, self.class_names)]

    def fingerprint(self) -> str:
        """sha256 over the exact arrays and class ids: equal fingerprints mean equal data."""
        if "all" not in self._digests:
            arrays = (self.x_train, self.y_train, self.x_test, self.y_test, np.asarray(self.class_ids))
            self._digests["all"] = hash_arrays(hashlib.sha256(), *arrays).hexdigest()
        return self._digests["all"]

    def test_fingerprint(self) -> str:
        """sha256 of the test split alone: test accuracies on equal fingerprints compare."""
        if "test" not in self._digests:
            self._digests["test"] = split_fingerprint(self.x_test, self.y_test, self.class_ids)
        return self._digests["test"]


def hash_arrays(h, *arrays: np.ndarray):
    """``h`` (a hashlib object) updated with each array's shape and exact bytes; returns ``h``."""
    for a in arrays:
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h


def split_fingerprint(x: np.ndarray, y: np.ndarray, labels) -> str:
    """sha256 of one split: images, labels and what the labels mean (class ids or names)."""
    return hash_arrays(hashlib.sha256(), x, y, np.asarray(labels)).hexdigest()


def select_classes(x: np.ndarray, y: np.ndarray, class_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Keep samples whose label is in ``class_ids`` and remap labels to their index there."""
    lookup = np.full(int(max(y.max(), max(class_ids))) + 1, -1, dtype=np.int64)
    lookup[list(class_ids)] = np.arange(len(class_ids))
    mask = np.isin(y, class_ids)
    return np.ascontiguousarray(x[mask]), lookup[y[mask]]


def class_subset(
    name: str,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    classes: Sequence[int],
    all_names: Sequence[str],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    folder: Path,
    caught_warnings: Sequence[warnings.WarningMessage] = (),
) -> Dataset:
    """The Dataset of ``classes`` (labels remapped) from full train/test splits read from ``folder``."""
    x_train, y_train = select_classes(*train, classes)
    x_test, y_test = select_classes(*test, classes)
    if len(x_train) == 0 or len(x_test) == 0:
        raise DataError(f"{folder}: no images of classes {list(classes)} in train or test")
    names = [all_names[c] for c in classes]
    messages = [str(w.message) for w in caught_warnings]
    return Dataset(name, x_train, y_train, x_test, y_test, list(classes), names, mean, std, str(folder), messages)


def validation_indices(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held out) positions of a training set, ``fraction`` held out, deterministic in ``seed``.

    Stratified by label (sklearn's ``train_test_split``, ``ceil(fraction * n)`` held out); a plain
    random split with the same seed when some class is too small to stratify.
    """
    from sklearn.model_selection import train_test_split

    if not 0 < fraction < 1:
        raise ValueError(f"a validation fraction must be in (0, 1), got {fraction!r}")
    positions = np.arange(len(y))
    try:
        kept, held = train_test_split(positions, test_size=fraction, stratify=y, random_state=seed)
    except ValueError:  # a class with one image, or fewer held-out images than classes
        kept, held = train_test_split(positions, test_size=fraction, random_state=seed)
    return kept, held


def split_validation(ds: Dataset, fraction: float, seed: int) -> tuple[Dataset, tuple[np.ndarray, np.ndarray] | None]:
    """``ds`` with ``fraction`` of its training set held out, and the holdout ``(x_val, y_val)``.

    The one place that splits off validation data (``train``'s ``val_fraction``, sweeps, study
    trials). The test split is left as it is; ``fraction`` 0 returns ``(ds, None)``.
    """
    if not fraction:
        return ds, None
    kept, held = validation_indices(ds.y_train, fraction, seed)
    if len(kept) == 0 or len(held) == 0:
        raise DataError(f"val_fraction {fraction:g} of {len(ds.y_train)} training images leaves one split empty")
    rest = replace(ds, x_train=ds.x_train[kept], y_train=ds.y_train[kept])
    return rest, (ds.x_train[held], ds.y_train[held])


# Each data-set module exposes NAME, NUM_LABELS, DEFAULT_CLASSES and load(data_dir, classes).
_MODULES = ("cifar100", "cifar10", "digits", "mnist")


def _module(name: str):
    import importlib

    if name not in _MODULES:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(sorted(_MODULES))}")
    return importlib.import_module(f"pipelines.data.{name}")


DATASETS = _MODULES
TASKS = ("binary", "multiclass")  # segmentation tasks (pipelines.data.segmentation)


def default_classes(name: str) -> list[int]:
    return list(_module(name).DEFAULT_CLASSES)


def num_labels(name: str) -> int:
    """How many distinct labels the full data set has (valid class ids are 0..n-1)."""
    return _module(name).NUM_LABELS


def load_dataset(name: str, data_dir: str | Path | None = None, classes: Sequence[int] | None = None) -> Dataset:
    module = _module(name)
    return module.load(data_dir=data_dir, classes=list(classes) if classes else list(module.DEFAULT_CLASSES))
