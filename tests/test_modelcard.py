"""The model card in the ONNX file's metadata, and the one preprocessing (``to_model_input``) it names.

A file with a card is enough: ``classify`` runs a local ``.onnx`` file, and the README's snippet (run
here as written) prints class names from the card with the card's preprocessing. The preprocessing
is an exact area average (checked against an independent construction); the browser's copy of it is
compared in ``tests/test_web_demo.py``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from PIL import Image

from pipelines.data import DataError
from pipelines.modelcard import (
    PREPROCESSING,
    ModelCard,
    box_filter,
    crop_rect,
    embed,
    read,
    to_model_input,
)
from tests.conftest import ROOT

IDS, NAMES = [0, 33, 41], ["apple", "flatfish", "lawn_mower"]


def make_card(input_shape=(32, 32, 3), model="pooling_cnn", **kw) -> ModelCard:
    values = dict(
        model=model,
        dataset="cifar100",
        class_ids=IDS,
        class_names=NAMES,
        input_shape=list(input_shape),
        dataset_fingerprint="a" * 64,
        test_fingerprint="b" * 64,
        test_split="cifar100 test split (36 images, sha256 bbbbbbbbbbbb)",
        train_run_id="0123456789abcdef0123456789abcdef",
        test_accuracy=0.5,
    )
    return ModelCard(**{**values, **kw})


def export_with_card(path: Path, model: str = "pooling_cnn", input_shape=(32, 32, 3), seed: int = 0) -> ModelCard:
    """A real model of the zoo (seeded initial weights, not trained) exported as export_onnx does, with a card."""
    import torch

    from models import create_model
    from pipelines.export_onnx import to_onnx

    torch.manual_seed(seed)
    c = input_shape[2]
    net = create_model(model, num_classes=len(IDS), in_shape=tuple(input_shape), mean=(0.45,) * c, std=(0.25,) * c)
    proto = to_onnx(net, tuple(input_shape))
    card = make_card(input_shape, model)
    embed(proto, card)
    onnx.save(proto, str(path))
    return card


def tiny_proto(input_shape=(8, 8, 1), k: int = 3) -> onnx.ModelProto:
    """A hand-made NHWC classifier (flatten -> matmul): enough for the card's own tests."""
    from onnx import TensorProto, helper, numpy_helper

    n = int(np.prod(input_shape))
    w = np.linspace(-1, 1, n * k, dtype=np.float32).reshape(n, k) / n
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "W"], ["output"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, *input_shape])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [None, k])],
        initializer=[numpy_helper.from_array(w, "W")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    proto.ir_version = 10
    return proto


def photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """uint8 [height, width, 3]: smooth colour gradients, a few soft blobs and a little noise (photo-like)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    chans = []
    for _ in range(3):
        a, b, phase = rng.uniform(-3, 3, 3)
        v = 128 + 90 * np.sin(2 * np.pi * (a * xx + b * yy) + phase)
        for cx, cy, r, amp in rng.uniform([0, 0, 0.05, -80], [1, 1, 0.3, 80], (3, 4)):
            v += amp * np.exp(-((xx - cx * width / max(width, height)) ** 2 + (yy - cy) ** 2) / r**2)
        chans.append(v)
    img = np.stack(chans, axis=-1) + rng.normal(0, 4, (height, width, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def area_average(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Independent exact area average: repeat every pixel m times, then mean over blocks of n (n -> m)."""
    h, w = img.shape[:2]
    up = np.repeat(np.repeat(img.astype(np.float64), height, axis=0), width, axis=1)
    return up.reshape(height, h, width, w, -1).mean(axis=(1, 3))


# ---------------------------------------------------------------- the card


def test_card_round_trips_through_the_onnx_file(tmp_path):
    card = make_card()
    meta = card.to_metadata()
    assert set(meta) == {
        "model",
        "dataset",
        "class_ids",
        "class_names",
        "input_shape",
        "dataset_fingerprint",
        "test_fingerprint",
        "test_split",
        "train_run_id",
        "test_accuracy",
        "input_name",
        "output_name",
        "input_layout",
        "input_range",
        "preprocessing",
    }
    assert all(isinstance(v, str) for v in meta.values())
    assert json.loads(meta["class_names"]) == NAMES and json.loads(meta["input_shape"]) == [32, 32, 3]
    assert meta["preprocessing"] == PREPROCESSING and PREPROCESSING.startswith("center-crop-box-v1: ")
    assert ModelCard.from_metadata(meta) == card
    assert ModelCard.from_metadata({**meta, "test_accuracy": "null"}).test_accuracy is None
    numpy_values = make_card(class_ids=list(np.asarray(IDS)), test_accuracy=np.float64(0.5))  # as data sets give them
    assert numpy_values.to_metadata() == meta

    proto = tiny_proto((32, 32, 3))
    for key, value in (("note", "kept"), ("class_ids", "[1, 2, 3]")):  # an older card's key is replaced
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    embed(proto, card)
    props = [(p.key, p.value) for p in proto.metadata_props]
    assert len(props) == len(dict(props)) and dict(props)["note"] == "kept"
    assert read(proto) == card
    path = tmp_path / "model.onnx"
    onnx.save(proto, str(path))
    assert read(path) == card and read(str(path)) == card
    # onnxruntime alone reads it (what the README's snippet does)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.get_modelmeta().custom_metadata_map
    assert {k: got[k] for k in meta} == meta


def test_a_file_without_a_card_is_a_one_line_error(tmp_path):
    path = tmp_path / "bare.onnx"
    onnx.save(tiny_proto(), str(path))
    with pytest.raises(DataError, match=r"^bare.onnx: no model card in the ONNX metadata: key 'model' is missing"):
        read(path)
    meta = make_card().to_metadata()
    del meta["class_names"]
    with pytest.raises(DataError, match="key 'class_names' is missing"):
        ModelCard.from_metadata(meta)
    bad = {
        "class_ids": ("[0, 1", "is not JSON"),
        "class_names": ('["a"]', "has 1 names for 3 class ids"),
        "input_shape": ("[32, 32]", "must be [H, W, C]"),
        "test_accuracy": ('"high"', "must be a number or null"),
    }
    for key, (value, message) in bad.items():
        with pytest.raises(DataError, match=re.escape(message)) as e:
            ModelCard.from_metadata({**make_card().to_metadata(), key: value})
        assert "\n" not in str(e.value) and key in str(e.value)
    (tmp_path / "notes.onnx").write_text("not a model\n")
    with pytest.raises(DataError, match="notes.onnx: not a readable ONNX file"):
        read(tmp_path / "notes.onnx")
    with pytest.raises(DataError, match="nope.onnx: no such file"):
        read(tmp_path / "nope.onnx")


# ---------------------------------------------------------------- the preprocessing


def test_box_filter_is_the_exact_mean_of_each_block():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)
    means = img.astype(np.float64).reshape(32, 2, 32, 2, 3).mean(axis=(1, 3))
    np.testing.assert_array_equal(box_filter(img, 32, 32), means)  # sums of integers: exact
    assert np.any(means % 1 == 0.5)  # ties are present and round up, as JavaScript's Math.round
    x = to_model_input(Image.fromarray(img), 32, 32, 3)
    assert x.dtype == np.float32 and x.shape == (32, 32, 3)
    np.testing.assert_array_equal(x, np.floor(means + 0.5))
    # grayscale after the average, from the same weights the page uses
    gray = to_model_input(Image.fromarray(img), 32, 32, 1)
    want = np.floor(0.299 * means[..., 0] + 0.587 * means[..., 1] + 0.114 * means[..., 2] + 0.5)
    np.testing.assert_array_equal(gray[..., 0], want)
    # a gray file becomes the same numbers as its RGB copy
    g = Image.fromarray(img[..., 0])
    np.testing.assert_array_equal(to_model_input(g, 32, 32, 1), to_model_input(g.convert("RGB"), 32, 32, 1))
    # an image of the input's size is passed through unchanged
    np.testing.assert_array_equal(to_model_input(Image.fromarray(img), 64, 64, 3), img)


@pytest.mark.parametrize(("h", "w", "height", "width"), [(61, 61, 32, 32), (45, 70, 20, 30), (77, 77, 28, 28)])
def test_box_filter_is_an_exact_area_average_for_any_ratio(h, w, height, width):
    img = photo(w, h, seed=h)
    np.testing.assert_allclose(box_filter(img, height, width), area_average(img, height, width), rtol=0, atol=1e-9)


def test_crop_is_centred_to_the_input_aspect_ratio():
    assert crop_rect(97, 61, 32, 32) == (18, 0, 61, 61)
    assert crop_rect(61, 97, 32, 32) == (0, 18, 61, 61)
    assert crop_rect(40, 24, 8, 8) == (8, 0, 24, 24)
    assert crop_rect(100, 100, 16, 8) == (0, 25, 100, 50)  # a wide input takes a wide crop
    assert crop_rect(10, 3, 3, 2) == (2, 0, 5, 3)  # 4.5 rounds up (as Math.round), not to even
    assert crop_rect(1, 100, 32, 1) == (0, 49, 1, 1)  # never empty
    # the margins outside the crop do not matter; what is inside is area-averaged
    rng = np.random.default_rng(1)
    for w, h in ((97, 61), (61, 97)):
        img = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
        x0, y0, cw, ch = crop_rect(w, h, 32, 32)
        inside = img[y0 : y0 + ch, x0 : x0 + cw]
        img2 = img.copy()
        img2[:] = 255 - img2
        img2[y0 : y0 + ch, x0 : x0 + cw] = inside
        a = to_model_input(Image.fromarray(img), 32, 32, 3)
        np.testing.assert_array_equal(a, to_model_input(Image.fromarray(img2), 32, 32, 3))
        np.testing.assert_array_equal(a, np.floor(area_average(inside, 32, 32) + 0.5))


def test_transparency_is_black_and_exif_orientation_is_applied(tmp_path):
    from PIL import ImageOps

    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:8, :, 3] = 255  # top half opaque, bottom half fully transparent
    x = to_model_input(Image.fromarray(rgba, "RGBA"), 2, 2, 3)
    np.testing.assert_array_equal(x[0], 200)
    np.testing.assert_array_equal(x[1], 0)
    rgba[:8, :, 3] = 128
    x = to_model_input(Image.fromarray(rgba, "RGBA"), 2, 2, 3)
    assert np.all(np.abs(x[0] - 200 * 128 / 255) <= 1)

    img = Image.fromarray(photo(40, 20))
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display": phones write this
    img.save(tmp_path / "rotated.png", exif=exif.tobytes())
    with Image.open(tmp_path / "rotated.png") as f:
        got = to_model_input(f, 40, 20, 3)
        upright = ImageOps.exif_transpose(f)
    assert upright.size == (20, 40)
    np.testing.assert_array_equal(got, np.asarray(upright, np.float32))


# ---------------------------------------------------------------- the file alone is enough


@pytest.fixture(scope="module")
def card_model(tmp_path_factory) -> tuple[Path, ModelCard]:
    path = tmp_path_factory.mktemp("card-model") / "model.onnx"
    return path, export_with_card(path)


def _classify_cli(args: list[str], tmp_path: Path, monkeypatch):
    from pipelines.cli import cli

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'unused.db'}")  # a local file needs no server
    return CliRunner().invoke(cli, ["classify", *args])


def test_classify_a_local_onnx_file_by_its_card(card_model, tmp_path, monkeypatch):
    from pipelines.classify import classify

    path, card = card_model
    Image.fromarray(photo(97, 61)).save(tmp_path / "wide.png")
    (pred,) = classify(str(path), [str(tmp_path / "wide.png")], top_k=3)
    assert [name for _, name, _ in pred.top] == [card.class_names[card.class_ids.index(i)] for i, _, _ in pred.top]
    assert sorted(i for i, _, _ in pred.top) == IDS and pred.resized
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with Image.open(tmp_path / "wide.png") as img:
        x = to_model_input(img, 32, 32, 3)
    logits = sess.run(None, {"input": x[None]})[0][0]
    assert pred.top[0][0] == IDS[int(np.argmax(logits))]

    res = _classify_cli(["--model-uri", str(path), "--top-k", "1", str(tmp_path / "wide.png")], tmp_path, monkeypatch)
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == f"{tmp_path / 'wide.png'}: {pred.top[0][1]} ({pred.top[0][0]}) {pred.top[0][2]:.3f}"

    onnx.save(tiny_proto((32, 32, 3)), str(tmp_path / "bare.onnx"))
    for model, message in (
        (tmp_path / "bare.onnx", "bare.onnx: no model card in the ONNX metadata: key 'model' is missing"),
        (tmp_path / "nope.onnx", "nope.onnx: no such file"),
    ):
        res = _classify_cli(["--model-uri", str(model), str(tmp_path / "wide.png")], tmp_path, monkeypatch)
        err = res.stderr.strip()
        assert res.exit_code == 2 and len(err.splitlines()) == 1 and message in err, err


def readme_snippet() -> str:
    """The Python block of README's "Use the registered model anywhere" section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### Use the registered model anywhere", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return code


def test_readme_snippet_prints_class_names_from_the_card(card_model, tmp_path):
    from pipelines.classify import classify

    path, card = card_model
    code = readme_snippet()
    assert 'InferenceSession("out/model.onnx"' in code and "get_modelmeta().custom_metadata_map" in code
    assert "pipelines" not in code  # the downloaded file, numpy, Pillow and onnxruntime: nothing else
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "model.onnx").write_bytes(path.read_bytes())
    Image.fromarray(photo(160, 120, seed=3)).save(tmp_path / "apple.jpg", quality=90)
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == card.preprocessing
    (pred,) = classify(str(path), [str(tmp_path / "apple.jpg")], top_k=3)
    printed = [line.rsplit(": ", 1) for line in lines[1:]]
    assert [name for name, _ in printed] == [name for _, name, _ in pred.top]  # names, in the same order
    np.testing.assert_allclose([float(p) for _, p in printed], [p for _, _, p in pred.top], atol=1e-3)
