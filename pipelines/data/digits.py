"""sklearn's bundled ``load_digits`` (real 8x8 handwritten digits, offline), as uint8 NHWC."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipelines.data import DataError, Dataset, select_classes

NAME = "digits"
NUM_LABELS = 10
DEFAULT_CLASSES = list(range(10))
TEST_FRACTION = 0.2  # fixed stratified split, seed 0: the same split on every machine


def load(data_dir: str | Path | None = None, classes: Sequence[int] = DEFAULT_CLASSES) -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if data_dir:
        raise DataError("dataset 'digits' is bundled with scikit-learn and takes no data_dir")
    d = load_digits()
    x = np.round(d.images * (255 / 16)).astype(np.uint8)[..., None]  # 0..16 -> 0..255, [N, 8, 8, 1]
    y = d.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=TEST_FRACTION, stratify=y, random_state=0)
    x_train, y_train = select_classes(x_train, y_train, classes)
    x_test, y_test = select_classes(x_test, y_test, classes)
    mean = float(x_train.mean() / 255)
    std = float(x_train.std() / 255)
    return Dataset(
        "digits",
        x_train,
        y_train,
        x_test,
        y_test,
        list(classes),
        [str(c) for c in classes],
        (mean,),
        (std,),
        "sklearn.datasets.load_digits",
    )
