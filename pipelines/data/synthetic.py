"""Class-dependent patterns + noise: the pixels of the tiny synthetic data sets (learnable by a CNN).

Each data-set module's ``write_synthetic`` draws its images here and writes them in its own real
file format, so tests exercise the real parsers on data a model can actually learn.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


def class_colour(k: int, channels: int) -> np.ndarray:
    """Base colour (RGB) or grey level of the ``k``-th class: well apart for k = 0..9."""
    if channels == 3:
        return np.array([(k * 97) % 256, (k * 57 + 80) % 256, (k * 31 + 160) % 256], dtype=np.float32)
    if channels == 1:
        return np.array([80 + (k * 67) % 160], dtype=np.float32)  # grey levels 80..239, >= 7 apart
    raise ValueError(f"channels must be 1 or 3, got {channels}")


def pattern_images(
    rng: np.random.Generator, n: int, k: int, size: int = 32, channels: int = 3, noise: float = 25.0
) -> np.ndarray:
    """``n`` images of class index ``k``: its colour modulated by stripes at angle ``k`` rad, plus noise.

    Returns uint8 [n, size, size, channels]. Draws exactly one ``rng.normal`` of that shape.
    """
    yy, xx = np.mgrid[0:size, 0:size]
    stripes = np.sin((xx * np.cos(k) + yy * np.sin(k)) * 0.8)[None, :, :, None]  # [1, size, size, 1]
    img = class_colour(k, channels) * (0.6 + 0.4 * stripes) + rng.normal(0, noise, size=(n, size, size, channels))
    return np.clip(img, 0, 255).astype(np.uint8)


def make_split(
    rng: np.random.Generator, classes: Sequence[int], per_class: int, size: int = 32, channels: int = 3
) -> tuple[np.ndarray, list[int]]:
    """``per_class`` images of each class in ``classes`` (pattern by position in ``classes``), shuffled.

    Returns (uint8 [N, size, size, channels], labels as the original class ids).
    """
    classes = list(classes)
    xs, ys = [], []
    for label in classes:
        xs.append(pattern_images(rng, per_class, classes.index(label), size, channels))
        ys += [label] * per_class
    x = np.concatenate(xs) if xs else np.zeros((0, size, size, channels), np.uint8)
    order = rng.permutation(len(x))
    return x[order], [ys[i] for i in order]


Splits = dict[str, tuple[np.ndarray, list[int]]]  # "train"/"test" -> (uint8 NHWC images, class ids)


@dataclass(frozen=True)
class SyntheticWriter:
    """A data set's ``write_synthetic(root, per_class_train=20, per_class_test=10, classes=None, seed=0, **options)``.

    Every data set draws its tiny learnable copy the same way (``make_split``, one seeded
    generator, the train split first); only the files differ, so each module gives ``write`` (its
    real format: ``write(folder, splits, **options)``), where under ``root`` they go, its default
    classes and its image size. ``classes=None`` means those defaults.
    """

    write: Callable[..., None]
    subfolder: str
    default_classes: Sequence[int]
    size: int = 32
    channels: int = 3

    def __call__(
        self,
        root: str | Path,
        per_class_train: int = 20,
        per_class_test: int = 10,
        classes: Sequence[int] | None = None,
        seed: int = 0,
        **options: Any,
    ) -> Path:
        """Write ``per_class_*`` images of each class into ``root/subfolder``; returns that folder."""
        classes = list(self.default_classes if classes is None else classes)
        rng = np.random.default_rng(seed)
        splits = {
            split: make_split(rng, classes, per_class, self.size, self.channels)
            for split, per_class in (("train", per_class_train), ("test", per_class_test))
        }
        folder = Path(root) / self.subfolder
        folder.mkdir(parents=True, exist_ok=True)
        self.write(folder, splits, **options)
        return folder
