"""CIFAR-100 (real pickle format, synthetic and real subset) and sklearn digits."""

from __future__ import annotations

import pickle
import tarfile

import numpy as np
import pytest

from pipelines.data import DataError, load_dataset
from pipelines.data.cifar100 import write_synthetic
from tests.conftest import real_data


def test_synthetic_cifar100_roundtrip(tmp_path):
    write_synthetic(tmp_path, per_class_train=5, per_class_test=2, classes=[0, 33, 41, 55])
    ds = load_dataset("cifar100", tmp_path, [41, 0])
    assert ds.x_train.dtype == np.uint8 and ds.x_train.shape == (10, 32, 32, 3)
    assert ds.y_train.dtype == np.int64 and set(ds.y_train) == {0, 1}
    assert ds.class_ids == [41, 0] and ds.class_names == ["class_41", "class_0"]
    assert ds.labels == ["41 class_41", "0 class_0"]
    assert len(ds.fingerprint()) == 64 and ds.fingerprint() == load_dataset("cifar100", tmp_path, [41, 0]).fingerprint()
    assert any("md5 differs" in w for w in ds.warnings)  # a user copy is accepted with a warning


def test_pixels_are_decoded_chw_to_nhwc(tmp_path):
    folder = write_synthetic(tmp_path, per_class_train=2, per_class_test=1)
    with open(folder / "train", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    first = np.asarray(raw[b"data"][0]).reshape(3, 32, 32)
    ds = load_dataset("cifar100", tmp_path, [0, 33, 41])
    keep = np.isin(raw[b"fine_labels"], [0, 33, 41])
    assert keep[0]  # all synthetic labels are in the default classes
    np.testing.assert_array_equal(ds.x_train[0], first.transpose(1, 2, 0))


def test_tarball_in_data_dir(tmp_path):
    folder = write_synthetic(tmp_path / "src", per_class_train=2, per_class_test=1)
    (tmp_path / "user").mkdir()
    with tarfile.open(tmp_path / "user" / "cifar-100-python.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname="cifar-100-python")
    ds = load_dataset("cifar100", tmp_path / "user")
    assert ds.x_train.shape == (6, 32, 32, 3)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("truncate", "train: not a readable CIFAR pickle"),
        ("not_pickle", "train: not a readable CIFAR pickle"),
        ("missing_key", "train: key 'fine_labels' missing"),
        ("wrong_dtype", "train: 'data' must be uint8 \\[N, 3072\\]"),
        ("missing_file", "test: file missing"),
    ],
)
def test_corrupt_files_name_the_file(tmp_path, damage, message):
    folder = write_synthetic(tmp_path, per_class_train=2, per_class_test=1)
    train = folder / "train"
    if damage == "truncate":
        train.write_bytes(train.read_bytes()[:500])
    elif damage == "not_pickle":
        train.write_text("this is not a pickle")
    elif damage in ("missing_key", "wrong_dtype"):
        blob = pickle.loads(train.read_bytes(), encoding="bytes")
        if damage == "missing_key":
            del blob[b"fine_labels"]
        else:
            blob[b"data"] = blob[b"data"].astype(np.float32)
        train.write_bytes(pickle.dumps(blob, protocol=2))
    else:
        (folder / "test").unlink()
    with pytest.raises(DataError, match=message):
        load_dataset("cifar100", tmp_path)


def test_missing_data_dir():
    with pytest.raises(DataError, match="data_dir /no/such/dir does not exist"):
        load_dataset("cifar100", "/no/such/dir")


def test_empty_data_dir(tmp_path):
    with pytest.raises(DataError, match="no CIFAR-100 found in"):
        load_dataset("cifar100", tmp_path)


def test_digits_is_real_and_offline():
    ds = load_dataset("digits")
    assert ds.x_train.shape[1:] == (8, 8, 1) and ds.x_train.dtype == np.uint8 and ds.x_train.max() == 255
    assert len(ds.x_train) + len(ds.x_test) == 1797 and ds.num_classes == 10
    sub = load_dataset("digits", classes=[3, 8])
    assert set(sub.y_test) == {0, 1} and sub.class_names == ["3", "8"]


def test_real_cifar100_subset():
    root = real_data("cifar-100-python")
    ds = load_dataset("cifar100", root)  # default classes 0, 33, 41
    assert ds.x_train.shape == (1500, 32, 32, 3) and ds.x_test.shape == (300, 32, 32, 3)
    assert ds.class_names == ["apple", "forest", "lawn_mower"]
    assert np.bincount(ds.y_test).tolist() == [100, 100, 100]


def test_real_cifar10_subset():
    """The 1,000 train / 200 test images per class copy of real CIFAR-10 (official pickle layout)."""
    root = real_data("cifar-10-batches-py")
    ds = load_dataset("cifar10", root)
    assert ds.x_train.shape == (10000, 32, 32, 3) and ds.x_test.shape == (2000, 32, 32, 3)
    assert ds.x_train.dtype == np.uint8 and ds.class_ids == list(range(10))
    assert ds.class_names[:3] == ["airplane", "automobile", "bird"] and ds.class_names[-1] == "truck"
    assert np.bincount(ds.y_train).tolist() == [1000] * 10 and np.bincount(ds.y_test).tolist() == [200] * 10
    assert 100 < ds.x_test.mean() < 150 and ds.x_test.std() > 40  # real photographs, not noise or blank images
    assert any("md5 differs" in w for w in ds.warnings)  # a subset: accepted with a warning, not the official files
    cats = load_dataset("cifar10", root, [3, 5])  # cat, dog
    assert cats.class_names == ["cat", "dog"] and np.bincount(cats.y_test).tolist() == [200, 200]
