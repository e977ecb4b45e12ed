"""Reading CIFAR's python pickles without letting a file run code, and writing them (synthetic data).

A pickle can name any importable callable; a crafted ``data_dir`` file would run it on load.
The official CIFAR files hold only dicts, lists, bytes and numpy arrays, so only numpy's array
reconstruction is allowed here; anything else is refused as a corrupt file.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from pipelines.data import DataError

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes; no side effects
}


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays are allowed)")


def load_cifar_pickle(path: Path) -> dict:
    """The dict in a CIFAR pickle, keys decoded to str; DataError naming the file otherwise."""
    if not path.is_file():
        raise DataError(f"{path}: file missing")
    try:
        with open(path, "rb") as f:
            obj = _ArraysOnly(f, encoding="bytes").load()
    except Exception as e:  # truncated or not a pickle: many exception types are possible
        msg = " ".join(str(e).split())  # some pickle errors span several lines
        raise DataError(f"{path}: not a readable CIFAR pickle ({type(e).__name__}: {msg})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict, found {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def cifar_images(path: Path, d: dict, label_key: str, num_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """``d``'s images as uint8 NHWC and its ``label_key`` labels as int64, checked; DataError naming ``path``."""
    for key in ("data", label_key):
        if key not in d:
            raise DataError(f"{path}: key {key!r} missing (keys: {sorted(map(str, d))})")
    data = np.asarray(d["data"])
    try:
        labels = np.asarray(d[label_key], dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: {label_key!r} must be a list of integers ({e})") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: 'data' must be uint8 [N, 3072], found {data.dtype} {list(data.shape)}")
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(data)} images but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() > num_labels - 1):
        raise DataError(f"{path}: {label_key.replace('_', ' ')} outside 0..{num_labels - 1}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels  # CHW rows -> NHWC


def cifar_rows(x: np.ndarray) -> np.ndarray:
    """uint8 NHWC images as the official files store them: one CHW row of 3072 bytes per image."""
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2).reshape(len(x), 3072))


def dump_cifar_pickle(path: Path, blob: dict) -> None:
    """Write ``blob`` as the official files are written: protocol 2 (the keys bytes, as there)."""
    with open(path, "wb") as f:
        pickle.dump(blob, f, protocol=2)
