"""CIFAR-10, python pickle format (``cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipelines.data import DataError, Dataset, class_subset
from pipelines.data.download import cache_dir, download, extract_tar, md5sum
from pipelines.data.pickles import cifar_images, cifar_rows, dump_cifar_pickle, load_cifar_pickle
from pipelines.data.synthetic import Splits, SyntheticWriter

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
TAR_MD5 = "c58f30108f718f92721af3b95e74349a"
FOLDER = "cifar-10-batches-py"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILES = ["test_batch"]
META_FILE = "batches.meta"
# MD5s of the extracted official files (as torchvision lists them); a user copy that differs only warns (SPEC 3).
FILE_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}
NAME = "cifar10"
NUM_LABELS = 10
DEFAULT_CLASSES = list(range(10))
LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MEAN = (0.4914, 0.4822, 0.4465)  # the usual constants of the full CIFAR-10 train set
STD = (0.2470, 0.2435, 0.2616)


def _find_folder(data_dir: Path | None) -> Path:
    """Accept ``data_dir/cifar-10-batches-py/``, the folder itself, or a tarball in ``data_dir``."""
    if data_dir is None:
        root = cache_dir()
        if not (root / FOLDER / META_FILE).exists():
            extract_tar(download(URL, root / "cifar-10-python.tar.gz", TAR_MD5), root)
        return root / FOLDER
    if not data_dir.is_dir():
        raise DataError(f"data_dir {data_dir} does not exist or is not a folder")
    for candidate in (data_dir / FOLDER, data_dir):
        if any((candidate / name).is_file() for name in FILE_MD5):
            return candidate
    tarball = data_dir / "cifar-10-python.tar.gz"
    if tarball.is_file():
        digest = md5sum(tarball)
        if digest != TAR_MD5:
            warnings.warn(f"{tarball}: md5 differs from the official archive; using it anyway", stacklevel=2)
        target = cache_dir() / "extracted" / digest
        if not (target / FOLDER / META_FILE).exists():
            extract_tar(tarball, target)
        if not (target / FOLDER).is_dir():
            raise DataError(f"{tarball}: holds no {FOLDER}/ folder")
        return target / FOLDER
    raise DataError(
        f"no CIFAR-10 found in {data_dir}: expected {FOLDER}/data_batch_1..5,test_batch,batches.meta "
        "or cifar-10-python.tar.gz"
    )


def _unpickle(path: Path) -> dict:
    d = load_cifar_pickle(path)
    if path.name in FILE_MD5 and md5sum(path) != FILE_MD5[path.name]:
        # Users keep subset or re-packed copies: valid structure is enough, say that it differs.
        warnings.warn(f"{path}: md5 differs from the official file (a subset or re-packed copy?)", stacklevel=2)
    return d


def _batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    return cifar_images(path, _unpickle(path), "labels", NUM_LABELS)


def _split(folder: Path, files: list[str]) -> tuple[np.ndarray, np.ndarray]:
    parts = [_batch(folder / name) for name in files]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def load(data_dir: str | Path | None = None, classes: Sequence[int] = DEFAULT_CLASSES) -> Dataset:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        folder = _find_folder(Path(data_dir) if data_dir else None)
        x_train, y_train = _split(folder, TRAIN_FILES)
        x_test, y_test = _split(folder, TEST_FILES)
        meta = _unpickle(folder / META_FILE)
    names = meta.get("label_names")
    if not isinstance(names, list) or len(names) != 10:
        raise DataError(f"{folder / META_FILE}: 'label_names' must list 10 names")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return class_subset(NAME, (x_train, y_train), (x_test, y_test), classes, names, MEAN, STD, folder, caught)


def _write_batches(folder: Path, files: list[str], kind: str, x: np.ndarray, labels: list[int]) -> None:
    """One split's images spread evenly over ``files`` (the train split over ``data_batch_1..5``)."""
    data = cifar_rows(x)
    for i, (name, idx) in enumerate(zip(files, np.array_split(np.arange(len(x)), len(files)), strict=True)):
        blob = {
            b"batch_label": f"{kind} batch {i + 1} of {len(files)} (synthetic)".encode(),
            b"labels": [labels[j] for j in idx],
            b"data": data[idx],
            b"filenames": [f"synthetic_{j}.png".encode() for j in idx],
        }
        dump_cifar_pickle(folder / name, blob)


def _write_pickles(folder: Path, splits: Splits, label_names: Sequence[str] = LABEL_NAMES) -> None:
    """The batches and ``batches.meta`` in the real pickle format (bytes keys, uint8 [N, 3072] CHW rows)."""
    batches = {"train": (TRAIN_FILES, "training"), "test": (TEST_FILES, "testing")}
    for split, (x, labels) in splits.items():
        _write_batches(folder, *batches[split], x, labels)
    meta = {b"num_cases_per_batch": -(-len(splits["train"][0]) // len(TRAIN_FILES)), b"num_vis": 3072}
    meta[b"label_names"] = [str(n).encode() for n in label_names]
    dump_cifar_pickle(folder / META_FILE, meta)


# write_synthetic(root, per_class_train=20, per_class_test=10, classes=DEFAULT_CLASSES, seed=0,
# label_names=LABEL_NAMES) -> the folder: a small CIFAR-10 in ``root/cifar-10-batches-py``; each
# class gets its own colour and stripe orientation plus noise, so a CNN can learn it.
write_synthetic = SyntheticWriter(_write_pickles, FOLDER, DEFAULT_CLASSES)
