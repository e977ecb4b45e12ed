"""CIFAR-100, python pickle format (``cifar-100-python/{train,test,meta}``)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipelines.data import DataError, Dataset, class_subset
from pipelines.data.download import cache_dir, download, extract_tar, md5sum
from pipelines.data.pickles import cifar_images, cifar_rows, dump_cifar_pickle, load_cifar_pickle
from pipelines.data.synthetic import Splits, SyntheticWriter

URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
TAR_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
FOLDER = "cifar-100-python"
# MD5s of the extracted official files; a user copy that differs only warns (SPEC 3).
FILE_MD5 = {"train": "16019d7e3df5f24257cddd939b257f8d", "test": "f0ef6b0ae62326f3e7ffdfab6717acfc"}
NAME = "cifar100"
NUM_LABELS = 100
DEFAULT_CLASSES = [0, 33, 41]
MEAN = (0.5074, 0.4867, 0.4411)  # the notebook's normalisation constants (full CIFAR-100 train set)
STD = (0.2011, 0.1987, 0.2025)


def _find_folder(data_dir: Path | None) -> Path:
    """Accept ``data_dir/cifar-100-python/``, the folder itself, or a tarball in ``data_dir``."""
    if data_dir is None:
        root = cache_dir()
        if not (root / FOLDER / "train").exists():
            extract_tar(download(URL, root / f"{FOLDER}.tar.gz", TAR_MD5), root)
        return root / FOLDER
    if not data_dir.is_dir():
        raise DataError(f"data_dir {data_dir} does not exist or is not a folder")
    for candidate in (data_dir / FOLDER, data_dir):
        if (candidate / "train").is_file():
            return candidate
    tarball = data_dir / f"{FOLDER}.tar.gz"
    if tarball.is_file():
        if md5sum(tarball) != TAR_MD5:
            warnings.warn(f"{tarball}: md5 differs from the official archive; using it anyway", stacklevel=2)
        target = cache_dir() / "extracted" / md5sum(tarball)
        if not (target / FOLDER / "train").exists():
            extract_tar(tarball, target)
        return target / FOLDER
    raise DataError(f"no CIFAR-100 found in {data_dir}: expected {FOLDER}/train,test,meta or {FOLDER}.tar.gz")


def _split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    images = cifar_images(path, load_cifar_pickle(path), "fine_labels", NUM_LABELS)
    if path.name in FILE_MD5 and md5sum(path) != FILE_MD5[path.name]:
        # Users keep subset or re-packed copies: valid structure is enough, say that it differs.
        warnings.warn(f"{path}: md5 differs from the official file (a subset or re-packed copy?)", stacklevel=2)
    return images


def load(data_dir: str | Path | None = None, classes: Sequence[int] = DEFAULT_CLASSES) -> Dataset:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        folder = _find_folder(Path(data_dir) if data_dir else None)
        x_train, y_train = _split(folder / "train")
        x_test, y_test = _split(folder / "test")
    meta = load_cifar_pickle(folder / "meta")
    names = meta.get("fine_label_names")
    if not isinstance(names, list) or len(names) != 100:
        raise DataError(f"{folder / 'meta'}: 'fine_label_names' must list 100 names")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return class_subset("cifar100", (x_train, y_train), (x_test, y_test), classes, names, MEAN, STD, folder, caught)


def _write_pickles(folder: Path, splits: Splits) -> None:
    """``train``, ``test`` and ``meta`` in the real pickle format (bytes keys, uint8 [N, 3072] CHW rows)."""
    for split, (x, labels) in splits.items():
        blob = {
            b"filenames": [f"synthetic_{i}.png".encode() for i in range(len(x))],
            b"batch_label": f"synthetic {split}".encode(),
            b"fine_labels": labels,
            b"coarse_labels": [lbl // 5 for lbl in labels],
            b"data": cifar_rows(x),
        }
        dump_cifar_pickle(folder / split, blob)
    meta = {
        b"fine_label_names": [f"class_{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"super_{i}".encode() for i in range(20)],
    }
    dump_cifar_pickle(folder / "meta", meta)


# write_synthetic(root, per_class_train=20, per_class_test=10, classes=DEFAULT_CLASSES, seed=0) -> the folder:
# a small CIFAR-100 in ``root/cifar-100-python``; each class gets its own colour and stripe
# orientation plus noise, so a CNN can learn it.
write_synthetic = SyntheticWriter(_write_pickles, FOLDER, DEFAULT_CLASSES)
