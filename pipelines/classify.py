"""Command ``classify``: top-k classes of image files from an ONNX model, run by onnxruntime.

``python -m pipelines classify --model-uri models:/cifar100-cnn@champion cat.png dog.jpg``
``python -m pipelines classify --model-uri out/model.onnx cat.png``  (a downloaded file)

A registered model is downloaded into a temporary folder (names checked: nothing is written
outside it); a local ``.onnx`` file is read in place. Either runs through onnxruntime only: no
pickle-based loader ever sees it. The class ids and names and the input come from the file's own
model card (``pipelines.modelcard``), not from the registry. Images are read with Pillow and
preprocessed by ``modelcard.to_model_input`` (the card's preprocessing, the same as the browser
demo's): centre crop to the input's aspect ratio, area average to its size (``--no-resize``
makes a wrong size an error). Every bad input is a one-line ``DataError`` / ``TrackingError``
and no MLflow run is created: classifying only reads.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines import modelcard
from pipelines.data import DataError

MAX_PIXELS = 50_000_000  # larger files are refused before decoding (decompression bombs)


@dataclass
class Prediction:
    path: str
    size: tuple[int, int]  # (width, height) of the file
    resized: bool
    top: list[tuple[int, str, float]]  # (class id, class name, probability), best first


def check_image(path: str | Path) -> tuple[int, int]:
    """(width, height) of a readable image file; DataError naming the file and the problem otherwise."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                size = img.size
                if size[0] * size[1] > MAX_PIXELS:
                    raise DataError(f"{path}: {size[0]}x{size[1]} pixels is too large (limit {MAX_PIXELS:,})")
                img.verify()  # structure and checksums, without decoding the pixels
    except DataError:
        raise
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image file (Pillow cannot identify it)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"{path}: image too large ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt data
        raise DataError(f"{path}: corrupt image ({' '.join(str(e).split())})") from None
    if min(size) < 1:
        raise DataError(f"{path}: empty image ({size[0]}x{size[1]})")
    return size


def to_input(path: str | Path, height: int, width: int, channels: int, resize: bool = True) -> tuple[np.ndarray, bool]:
    """float32 [H, W, C] in 0..255 for the model (``modelcard.to_model_input``); (array, whether it was resized)."""
    from PIL import Image

    with Image.open(path) as img:
        resized = img.size != (width, height)
        if resized and not resize:
            raise DataError(
                f"{path}: image is {img.size[0]}x{img.size[1]}, the model takes {width}x{height} "
                "(drop --no-resize to resize it)"
            )
        try:
            x = modelcard.to_model_input(img, height, width, channels)
        except OSError as e:  # truncated pixel data shows only when decoding
            raise DataError(f"{path}: corrupt image ({' '.join(str(e).split())})") from None
    return x, resized


def is_local(model_uri: str) -> bool:
    """A path to an ``.onnx`` file (or any existing file) rather than a ``models:/`` URI."""
    if model_uri.startswith("models:/"):
        return False
    return model_uri.lower().endswith(".onnx") or Path(model_uri).is_file()


def open_model(path: Path) -> tuple[object, modelcard.ModelCard]:
    """(onnxruntime CPU session, model card) of an ``.onnx`` file; DataError if it has no card."""
    import onnxruntime as ort

    card = modelcard.read_checked(path)  # also: a missing or unreadable file, one line
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's own exception types: an invalid graph
        raise DataError(f"{path}: onnxruntime cannot load it ({' '.join(str(e).split())[:200]})") from None
    return session, card


def onnx_file(model_uri: str, folder: Path) -> Path:
    """Download the registered model ``model_uri`` into ``folder``; the path of its one ``.onnx`` file."""
    from tracking.registry import download_model

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # stdout/stderr stay the results
    files = sorted(download_model(model_uri, folder).rglob("*.onnx"))
    if len(files) != 1:
        raise DataError(f"{model_uri}: expected one .onnx file in the model, found {[f.name for f in files]}")
    return files[0]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def classify(model_uri: str, images: list[str], top_k: int = 3, resize: bool = True) -> list[Prediction]:
    """Top-k predictions for each image; every file is checked before the model is fetched.

    ``model_uri`` is ``models:/<name>@<alias>`` (or ``/<version>``) or the path of a local ``.onnx`` file.
    """
    from tracking.registry import model_version_info

    if not images:
        raise DataError("no image files given")
    sizes = [check_image(p) for p in images]  # local checks first: a bad file never costs a download
    with tempfile.TemporaryDirectory(prefix="classify-") as tmp:
        if is_local(model_uri):
            path = Path(model_uri)
        else:
            model_version_info(model_uri)  # a missing models:/ URI: one-line TrackingError, before any download
            path = onnx_file(model_uri, Path(tmp))
        session, card = open_model(path)
        h, w, c = card.input_shape  # checked against the graph by open_model
        arrays = [to_input(p, h, w, c, resize) for p in images]
        logits = session.run(None, {card.input_name: np.stack([a for a, _ in arrays])})[0]
    k = logits.shape[1]
    ids, names = card.class_ids, card.class_names
    probs = softmax(logits.astype(np.float64))
    out = []
    for path, size, (_, resized), p in zip(images, sizes, arrays, probs):
        order = np.argsort(-p)[: min(top_k, k)]
        out.append(Prediction(str(path), size, resized, [(ids[i], names[i], float(p[i])) for i in order]))
    return out


def format_prediction(pred: Prediction) -> str:
    best = ", ".join(f"{name} ({cid}) {p:.3f}" for cid, name, p in pred.top)
    return f"{pred.path}: {best}"
