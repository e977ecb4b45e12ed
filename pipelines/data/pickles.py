"""Reading CIFAR's python pickles without letting a file run code.

A pickle can name any importable callable; a crafted ``data_dir`` file would run it on load.
The official CIFAR files hold only dicts, lists, bytes and numpy arrays, so only numpy's array
reconstruction is allowed here; anything else is refused as a corrupt file.
"""

from __future__ import annotations

import pickle
from pathlib import Path

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
