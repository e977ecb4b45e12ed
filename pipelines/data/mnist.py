"""MNIST, the four official idx files (``train-images-idx3-ubyte.gz`` ...; uncompressed names accepted)."""

from __future__ import annotations

import gzip
import math
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipelines.data import DataError, Dataset, class_subset
from pipelines.data.download import cache_dir, download, md5sum
from pipelines.data.synthetic import Splits, SyntheticWriter

# The mirrors torchvision uses, in its order: the S3 copy first, the original site second.
MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
# MD5s of the official .gz files (torchvision MNIST.resources); a user copy that differs only warns (SPEC 3).
FILE_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
FILES = {  # split -> (images, labels), names without .gz
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGES_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dims
LABELS_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dim
NAME = "mnist"
NUM_LABELS = 10
DEFAULT_CLASSES = list(range(10))
CLASS_NAMES = [str(i) for i in range(10)]
MEAN = (0.1307,)  # the usual constants of the full MNIST train set
STD = (0.3081,)


def _all_names() -> list[str]:
    return [name for pair in FILES.values() for name in pair]


def _has(folder: Path, name: str) -> bool:
    return (folder / f"{name}.gz").is_file() or (folder / name).is_file()


def _find_folder(data_dir: Path | None) -> Path:
    """Accept the files in ``data_dir`` itself, in ``data_dir/MNIST/raw`` or in ``data_dir/mnist``."""
    if data_dir is None:
        root = cache_dir() / "mnist"
        for name in FILE_MD5:
            _download(name, root)
        return root
    if not data_dir.is_dir():
        raise DataError(f"data_dir {data_dir} does not exist or is not a folder")
    for candidate in (data_dir, data_dir / "MNIST" / "raw", data_dir / "mnist"):
        if any(_has(candidate, name) for name in _all_names()):
            return candidate
    raise DataError(f"no MNIST found in {data_dir}: expected {', '.join(FILE_MD5)} (or the same names without .gz)")


def _download(name: str, root: Path) -> Path:
    """Fetch one official file, trying each mirror in turn; checksum-verified by ``download``."""
    errors = []
    for mirror in MIRRORS:
        try:
            return download(mirror + name, root / name, FILE_MD5[name])
        except DataError as e:
            errors.append(str(e))
    raise DataError(f"could not download {name} from any mirror: {'; '.join(errors)}")


def _read_bytes(folder: Path, name: str) -> tuple[Path, bytes]:
    """The content of ``name.gz`` (decompressed) or of ``name``; md5 of an official .gz name is checked."""
    gz, raw = folder / f"{name}.gz", folder / name
    if gz.is_file():
        try:
            with gzip.open(gz, "rb") as f:
                content = f.read()
        except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; truncation is EOFError
            raise DataError(
                f"{gz}: not a readable gzip file ({type(e).__name__}: {' '.join(str(e).split())})"
            ) from None
        if md5sum(gz) != FILE_MD5[gz.name]:
            # Users keep re-packed or subset copies: valid structure is enough, say that it differs.
            warnings.warn(f"{gz}: md5 differs from the official file (a subset or re-packed copy?)", stacklevel=2)
        return gz, content
    if raw.is_file():
        try:
            return raw, raw.read_bytes()
        except OSError as e:
            raise DataError(f"{raw}: cannot be read ({e})") from None
    raise DataError(f"{gz}: file missing (nor found uncompressed as {raw.name})")


def parse_idx(path: Path, content: bytes, magic: int) -> np.ndarray:
    """Parse idx bytes: big-endian magic (0x0000 0x08=ubyte, ndim), ndim big-endian uint32 dims, the data."""
    if len(content) < 4:
        raise DataError(f"{path}: {len(content)} bytes, too short for an idx header")
    got = int.from_bytes(content[:4], "big")
    if got != magic:
        raise DataError(f"{path}: magic number {got}, expected {magic} (not an idx{magic & 0xFF} ubyte file?)")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(content) < header:
        raise DataError(f"{path}: header truncated ({len(content)} bytes, need {header})")
    dims = [int.from_bytes(content[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = math.prod(dims)  # python ints: a corrupt header cannot overflow
    have = len(content) - header
    if have != expected:  # short data (truncated) or trailing bytes: both mean the file is not what it claims
        only = "only " if have < expected else ""
        raise DataError(f"{path}: header says {'x'.join(map(str, dims))} = {expected} bytes but {only}{have} follow")
    return np.frombuffer(content, dtype=np.uint8, offset=header).reshape(dims)


def _split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    images_name, labels_name = FILES[split]
    images_path, content = _read_bytes(folder, images_name)
    images = parse_idx(images_path, content, IMAGES_MAGIC)
    if images.shape[1:] != (28, 28):
        raise DataError(f"{images_path}: images must be 28x28, found {images.shape[1]}x{images.shape[2]}")
    labels_path, content = _read_bytes(folder, labels_name)
    labels = parse_idx(labels_path, content, LABELS_MAGIC).astype(np.int64)
    if len(labels) != len(images):
        raise DataError(f"{labels_path}: {len(labels)} labels but {images_path.name} holds {len(images)} images")
    if len(labels) and labels.max() > 9:
        raise DataError(f"{labels_path}: labels outside 0..9 (max {labels.max()})")
    return images[..., None], labels  # [N, 28, 28, 1]


def load(data_dir: str | Path | None = None, classes: Sequence[int] = DEFAULT_CLASSES) -> Dataset:
    folder = _find_folder(Path(data_dir) if data_dir else None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x_train, y_train = _split(folder, "train")
        x_test, y_test = _split(folder, "test")
    train, test = (x_train, y_train), (x_test, y_test)
    return class_subset(NAME, train, test, classes, CLASS_NAMES, MEAN, STD, folder, caught)


def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    """Write a uint8 array as an idx file (gzip-compressed when ``path`` ends in .gz)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    blob = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape) + array.tobytes()
    if path.suffix == ".gz":
        with gzip.GzipFile(path, "wb", mtime=0) as f:  # mtime=0: same bytes on every run
            f.write(blob)
    else:
        path.write_bytes(blob)


def _write_idx_files(folder: Path, splits: Splits, compress: bool = True) -> None:
    """The four idx files, gzip-compressed (the official names) unless ``compress=False``."""
    suffix = ".gz" if compress else ""
    for split, (x, labels) in splits.items():
        images_name, labels_name = FILES[split]
        write_idx(folder / f"{images_name}{suffix}", x[..., 0], IMAGES_MAGIC)
        write_idx(folder / f"{labels_name}{suffix}", np.asarray(labels, dtype=np.uint8), LABELS_MAGIC)


# write_synthetic(root, per_class_train=20, per_class_test=10, classes=DEFAULT_CLASSES, seed=0,
# compress=True) -> the folder: a small MNIST as the four idx files in ``root`` itself; each class
# gets its own grey level and stripe orientation plus noise, so a CNN can learn it.
write_synthetic = SyntheticWriter(_write_idx_files, "", DEFAULT_CLASSES, size=28, channels=1)
