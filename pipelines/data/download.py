"""Download with checksum into a cache dir; extraction that refuses paths outside the target."""

from __future__ import annotations

import hashlib
import os
import tarfile
import urllib.request
from pathlib import Path

from pipelines.data import DataError


def cache_dir() -> Path:
    """``$PIPELINE_DATA_DIR`` or ``~/.cache/mlflow-cnn-pipeline``: where downloads are kept."""
    return Path(os.environ.get("PIPELINE_DATA_DIR", Path.home() / ".cache" / "mlflow-cnn-pipeline"))


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download(url: str, dest: Path, md5: str, timeout_s: float = 60) -> Path:
    """Fetch ``url`` to ``dest`` unless a file with the right MD5 is already there.

    Written to ``dest.part`` and renamed only after the checksum matched, so a broken
    download never looks complete.
    """
    if dest.exists() and md5sum(dest) == md5:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r, open(part, "wb") as f:
            while block := r.read(1 << 20):
                f.write(block)
    except OSError as e:
        part.unlink(missing_ok=True)
        raise DataError(f"could not download {url} ({e}); pass data_dir= pointing at a local copy") from None
    got = md5sum(part)
    if got != md5:
        part.unlink(missing_ok=True)
        raise DataError(f"checksum mismatch for {url}: md5 {got}, expected {md5}")
    os.replace(part, dest)
    return dest


def extract_tar(archive: Path, into: Path) -> None:
    """Extract a tarball, rejecting members that would land outside ``into``."""
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(into, filter="data")  # "data" filter refuses absolute paths, .., links out
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"{archive}: not a readable tar.gz archive ({' '.join(str(e).split())})") from None
