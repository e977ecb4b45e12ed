"""MNIST (idx) and CIFAR-10 (pickle) parsers: synthetic round trips, corrupt files, the real MNIST files."""

from __future__ import annotations

import gzip
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from pipelines.data import DataError, cifar10, load_dataset, mnist

REAL_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


@pytest.fixture(autouse=True)
def _no_network_cache(tmp_path, monkeypatch):
    """Downloads and tarball extraction go to a per-test cache; any real download attempt fails fast."""
    monkeypatch.setenv("PIPELINE_DATA_DIR", str(tmp_path / "cache"))

    def no_network(*args, **kwargs):
        raise AssertionError("a test tried to reach the network")

    monkeypatch.setattr("urllib.request.urlopen", no_network)


@pytest.fixture
def mnist_dir(tmp_path) -> Path:
    return mnist.write_synthetic(tmp_path / "mnist", per_class_train=4, per_class_test=2)


@pytest.fixture
def cifar_dir(tmp_path) -> Path:
    """The ``cifar-10-batches-py`` folder itself."""
    return cifar10.write_synthetic(tmp_path / "c10", per_class_train=5, per_class_test=2)


# --- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_round_trip(tmp_path, compress):
    folder = mnist.write_synthetic(tmp_path, per_class_train=4, per_class_test=2, compress=compress)
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(f"{n}.gz" if compress else n for pair in mnist.FILES.values() for n in pair)
    ds = mnist.load(folder)
    assert ds.name == "mnist" and ds.in_shape == (28, 28, 1)
    assert ds.x_train.shape == (40, 28, 28, 1) and ds.x_test.shape == (20, 28, 28, 1)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64
    assert np.bincount(ds.y_train).tolist() == [4] * 10
    assert ds.class_names == [str(i) for i in range(10)] and ds.class_ids == list(range(10))
    assert (ds.mean, ds.std) == ((0.1307,), (0.3081,))
    # Synthetic .gz files are not the official ones: a warning per file, no error. No md5 for raw idx.
    assert len(ds.warnings) == (4 if compress else 0)


def test_mnist_idx_bytes(mnist_dir):
    """The synthetic files are real idx: magic 2051/2049 and big-endian dims, gzip-compressed."""
    images = gzip.decompress((mnist_dir / "train-images-idx3-ubyte.gz").read_bytes())
    labels = gzip.decompress((mnist_dir / "train-labels-idx1-ubyte.gz").read_bytes())
    assert images[:16] == bytes.fromhex("00000803000000280000001c0000001c")  # 2051, 40, 28, 28
    assert labels[:8] == bytes.fromhex("0000080100000028") and len(labels) == 8 + 40
    assert len(images) == 16 + 40 * 28 * 28


def test_mnist_class_subset_remaps_labels(mnist_dir):
    full = mnist.load(mnist_dir)
    ds = load_dataset("mnist", data_dir=mnist_dir, classes=[7, 2])
    assert ds.class_ids == [7, 2] and ds.class_names == ["7", "2"] and ds.labels == ["7 7", "2 2"]
    assert sorted(set(ds.y_train.tolist())) == [0, 1] and len(ds.y_train) == 8 and len(ds.y_test) == 4
    np.testing.assert_array_equal(ds.x_train[ds.y_train == 0], full.x_train[full.y_train == 7])
    np.testing.assert_array_equal(ds.x_test[ds.y_test == 1], full.x_test[full.y_test == 2])


def test_mnist_torchvision_layout_and_determinism(tmp_path):
    a = mnist.write_synthetic(tmp_path / "a" / "MNIST" / "raw", per_class_train=2, per_class_test=1, seed=5)
    b = mnist.write_synthetic(tmp_path / "b", per_class_train=2, per_class_test=1, seed=5)
    for name in mnist.FILE_MD5:  # same seed -> byte-identical files (gzip mtime fixed)
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert mnist.load(tmp_path / "a").fingerprint() == mnist.load(b).fingerprint()


def test_cifar10_round_trip(cifar_dir):
    names = sorted(p.name for p in cifar_dir.iterdir())
    assert names == sorted(cifar10.FILE_MD5)
    with open(cifar_dir / "data_batch_1", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    assert set(raw) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert raw[b"data"].dtype == np.uint8 and raw[b"data"].shape == (10, 3072)
    with open(cifar_dir / "batches.meta", "rb") as f:
        assert pickle.load(f, encoding="bytes")[b"label_names"][0] == b"airplane"
    for data_dir in (cifar_dir, cifar_dir.parent):  # the folder itself or the folder holding it
        ds = cifar10.load(data_dir)
        assert ds.name == "cifar10" and ds.in_shape == (32, 32, 3)
        assert ds.x_train.shape == (50, 32, 32, 3) and ds.x_test.shape == (20, 32, 32, 3)
        assert ds.x_train.dtype == np.uint8 and ds.y_test.dtype == np.int64
        assert np.bincount(ds.y_train).tolist() == [5] * 10
        assert ds.class_names == cifar10.LABEL_NAMES
        assert ds.mean == (0.4914, 0.4822, 0.4465) and ds.std == (0.2470, 0.2435, 0.2616)
        assert len(ds.warnings) == 7 and all("md5 differs" in w for w in ds.warnings)


def test_cifar10_class_subset_and_names_from_meta(tmp_path):
    names = [f"thing{i}" for i in range(10)]
    folder = cifar10.write_synthetic(tmp_path, per_class_train=3, per_class_test=2, label_names=names, seed=1)
    full = cifar10.load(folder)
    ds = load_dataset("cifar10", data_dir=tmp_path, classes=[9, 3])
    assert ds.class_ids == [9, 3] and ds.class_names == ["thing9", "thing3"]
    assert sorted(set(ds.y_train.tolist())) == [0, 1] and len(ds.y_train) == 6 and len(ds.y_test) == 4
    np.testing.assert_array_equal(ds.x_train[ds.y_train == 0], full.x_train[full.y_train == 9])
    # CHW rows -> NHWC: pixel (row 0, col 1) of image 0 is data[0, [1, 1025, 2049]].
    with open(folder / "test_batch", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    np.testing.assert_array_equal(full.x_test[0, 0, 1], raw[b"data"][0, [1, 1025, 2049]])


def test_cifar10_tarball(tmp_path, monkeypatch):
    folder = cifar10.write_synthetic(tmp_path / "src", per_class_train=2, per_class_test=1)
    user = tmp_path / "user"
    user.mkdir()
    with tarfile.open(user / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname=cifar10.FOLDER)
    ds = cifar10.load(user)
    assert ds.x_train.shape == (20, 32, 32, 3)
    assert Path(ds.source).is_relative_to(tmp_path / "cache" / "extracted")
    assert any("differs from the official archive" in w for w in ds.warnings)


def test_default_download_paths(tmp_path, monkeypatch):
    """No data_dir: files are fetched into the cache (mirror fallback for MNIST), with the official md5s."""
    src = mnist.write_synthetic(tmp_path / "src", per_class_train=2, per_class_test=1)
    calls = []

    def fake_download(url, dest, md5):
        calls.append((url, dest, md5))
        if url.startswith(mnist.MIRRORS[0]):
            raise DataError(f"could not download {url} (offline)")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / dest.name, dest)
        return dest

    monkeypatch.setattr(mnist, "download", fake_download)
    ds = load_dataset("mnist", classes=[1, 0])
    assert ds.source == str(tmp_path / "cache" / "mnist") and ds.class_names == ["1", "0"]
    assert [u for u, _, _ in calls[:2]] == [m + "train-images-idx3-ubyte.gz" for m in mnist.MIRRORS]
    assert {(d.name, m) for _, d, m in calls} == set(mnist.FILE_MD5.items())

    def fake_cifar_download(url, dest, md5):
        assert (url, md5) == (cifar10.URL, cifar10.TAR_MD5)
        folder = cifar10.write_synthetic(tmp_path / "c10src", per_class_train=2, per_class_test=1)
        with tarfile.open(dest, "w:gz") as tar:
            tar.add(folder, arcname=cifar10.FOLDER)
        return dest

    monkeypatch.setattr(cifar10, "download", fake_cifar_download)
    ds = load_dataset("cifar10")
    assert ds.source == str(tmp_path / "cache" / cifar10.FOLDER) and len(ds.y_train) == 20


# --- corrupt and missing files -------------------------------------------------------------------


def _rewrite_gz(path: Path, edit) -> None:
    content = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(edit(content)))


def _truncate_gzip(d: Path) -> str:
    p = d / "train-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return p.name


def _not_gzip(d: Path) -> str:
    (d / "t10k-images-idx3-ubyte.gz").write_bytes(b"this is not gzip data at all")
    return "t10k-images-idx3-ubyte.gz"


def _wrong_magic(d: Path) -> str:
    _rewrite_gz(d / "train-labels-idx1-ubyte.gz", lambda c: (2051).to_bytes(4, "big") + c[4:])
    return "train-labels-idx1-ubyte.gz"


def _count_too_large(d: Path) -> str:
    _rewrite_gz(d / "t10k-images-idx3-ubyte.gz", lambda c: c[:4] + (21).to_bytes(4, "big") + c[8:])
    return "t10k-images-idx3-ubyte.gz"


def _short_data(d: Path) -> str:
    _rewrite_gz(d / "train-images-idx3-ubyte.gz", lambda c: c[:-100])
    return "train-images-idx3-ubyte.gz"


def _trailing_bytes(d: Path) -> str:
    _rewrite_gz(d / "t10k-labels-idx1-ubyte.gz", lambda c: c + b"\x00\x01")
    return "t10k-labels-idx1-ubyte.gz"


def _header_only(d: Path) -> str:
    _rewrite_gz(d / "train-labels-idx1-ubyte.gz", lambda c: c[:6])
    return "train-labels-idx1-ubyte.gz"


def _label_count_mismatch(d: Path) -> str:
    _rewrite_gz(d / "train-labels-idx1-ubyte.gz", lambda c: c[:4] + (39).to_bytes(4, "big") + c[8:-1])
    return "train-labels-idx1-ubyte.gz"


def _label_out_of_range(d: Path) -> str:
    _rewrite_gz(d / "t10k-labels-idx1-ubyte.gz", lambda c: c[:-1] + b"\x0c")
    return "t10k-labels-idx1-ubyte.gz"


def _missing_mnist_file(d: Path) -> str:
    (d / "t10k-labels-idx1-ubyte.gz").unlink()
    return "t10k-labels-idx1-ubyte.gz"


def _empty_mnist_dir(d: Path) -> str:
    for p in d.iterdir():
        p.unlink()
    return "train-images-idx3-ubyte.gz"


@pytest.mark.parametrize(
    "corrupt",
    [
        _truncate_gzip,
        _not_gzip,
        _wrong_magic,
        _count_too_large,
        _short_data,
        _trailing_bytes,
        _header_only,
        _label_count_mismatch,
        _label_out_of_range,
        _missing_mnist_file,
        _empty_mnist_dir,
    ],
)
def test_mnist_corrupt_files(mnist_dir, corrupt):
    name = corrupt(mnist_dir)
    with pytest.raises(DataError, match=name.replace(".", r"\.")) as err:
        mnist.load(mnist_dir)
    assert "\n" not in str(err.value)


def _repickle(path: Path, edit) -> None:
    with open(path, "rb") as f:
        blob = pickle.load(f, encoding="bytes")
    edit(blob)
    with open(path, "wb") as f:
        pickle.dump(blob, f, protocol=2)


def _missing_key(d: Path) -> str:
    _repickle(d / "data_batch_2", lambda b: b.pop(b"labels"))
    return "data_batch_2"


def _wrong_dtype(d: Path) -> str:
    _repickle(d / "test_batch", lambda b: b.update({b"data": b[b"data"].astype(np.float32)}))
    return "test_batch"


def _wrong_width(d: Path) -> str:
    _repickle(d / "data_batch_4", lambda b: b.update({b"data": b[b"data"][:, :1024]}))
    return "data_batch_4"


def _labels_not_ints(d: Path) -> str:
    _repickle(d / "data_batch_1", lambda b: b.update({b"labels": [b"cat"] * len(b[b"labels"])}))
    return "data_batch_1"


def _cifar_label_out_of_range(d: Path) -> str:
    _repickle(d / "data_batch_5", lambda b: b[b"labels"].__setitem__(0, 10))
    return "data_batch_5"


def _cifar_count_mismatch(d: Path) -> str:
    _repickle(d / "test_batch", lambda b: b[b"labels"].pop())
    return "test_batch"


def _not_a_pickle(d: Path) -> str:
    (d / "data_batch_3").write_bytes(b"\x89PNG\r\n\x1a\n not a pickle")
    return "data_batch_3"


def _truncated_pickle(d: Path) -> str:
    p = d / "test_batch"
    p.write_bytes(p.read_bytes()[:500])
    return "test_batch"


def _not_a_dict(d: Path) -> str:
    with open(d / "data_batch_1", "wb") as f:
        pickle.dump([1, 2, 3], f, protocol=2)
    return "data_batch_1"


def _meta_without_names(d: Path) -> str:
    _repickle(d / "batches.meta", lambda b: b.pop(b"label_names"))
    return "batches.meta"


def _missing_cifar_file(d: Path) -> str:
    (d / "data_batch_3").unlink()
    return "data_batch_3"


def _empty_cifar_dir(d: Path) -> str:
    for p in d.iterdir():
        p.unlink()
    return "cifar-10-python.tar.gz"


def _broken_tarball(d: Path) -> str:
    _empty_cifar_dir(d)
    (d / "cifar-10-python.tar.gz").write_bytes(b"not a tarball")
    return "cifar-10-python.tar.gz"


@pytest.mark.parametrize(
    "corrupt",
    [
        _missing_key,
        _wrong_dtype,
        _wrong_width,
        _labels_not_ints,
        _cifar_label_out_of_range,
        _cifar_count_mismatch,
        _not_a_pickle,
        _truncated_pickle,
        _not_a_dict,
        _meta_without_names,
        _missing_cifar_file,
        _empty_cifar_dir,
        _broken_tarball,
    ],
)
def test_cifar10_corrupt_files(cifar_dir, corrupt):
    name = corrupt(cifar_dir)
    with pytest.raises(DataError, match=name.replace(".", r"\.")) as err:
        cifar10.load(cifar_dir)
    if corrupt is not _broken_tarball:  # download.extract_tar passes tarfile's multi-line message on
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_data_dir_missing(tmp_path, name):
    with pytest.raises(DataError, match="no_such_folder"):
        load_dataset(name, data_dir=tmp_path / "no_such_folder")


def test_classes_absent_from_data(tmp_path):
    folder = mnist.write_synthetic(tmp_path, per_class_train=2, per_class_test=1, classes=[0, 1])
    with pytest.raises(DataError, match="no images of classes"):
        mnist.load(folder, classes=[5])


# --- the real MNIST files --------------------------------------------------------------------------


@pytest.mark.skipif(not REAL_MNIST.is_dir(), reason=f"real MNIST files not present at {REAL_MNIST}")
def test_real_mnist():
    ds = load_dataset("mnist", data_dir=REAL_MNIST)
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64
    assert ds.warnings == []  # byte-identical to the official files: every md5 matches
    assert np.bincount(ds.y_train).tolist()[:3] == [5923, 6742, 5958] and np.bincount(ds.y_test).sum() == 10000
    assert abs(ds.x_train.mean() / 255 - ds.mean[0]) < 1e-3 and abs(ds.x_train.std() / 255 - ds.std[0]) < 1e-3
    sub = load_dataset("mnist", data_dir=REAL_MNIST, classes=[3, 8])
    assert sub.class_names == ["3", "8"] and len(sub.y_train) == 6131 + 5851 and set(sub.y_test.tolist()) == {0, 1}
