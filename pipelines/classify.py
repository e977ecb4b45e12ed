"""Command ``classify``: top-k classes of image files from a registered ONNX model, run by onnxruntime.

``python -m pipelines classify --model-uri models:/cifar100-cnn@champion cat.png dog.jpg``

The model is downloaded from the registry into a temporary folder (names checked: nothing is
written outside it) and run through onnxruntime only: no pickle-based loader ever sees it.
Images are read with Pillow, converted to the model's channels and resized to its input size
(``--no-resize`` makes a wrong size an error). Every bad input is a one-line ``DataError`` /
``TrackingError`` and no MLflow run is created: classifying only reads.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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
    """float32 [H, W, C] in 0..255 for the model; (array, whether it was resized)."""
    from PIL import Image

    with Image.open(path) as img:
        try:
            img = img.convert("L" if channels == 1 else "RGB")
        except OSError as e:  # truncated pixel data shows only when decoding
            raise DataError(f"{path}: corrupt image ({' '.join(str(e).split())})") from None
        resized = img.size != (width, height)
        if resized and not resize:
            raise DataError(
                f"{path}: image is {img.size[0]}x{img.size[1]}, the model takes {width}x{height} "
                "(drop --no-resize to resize it)"
            )
        if resized:
            img = img.resize((width, height), Image.Resampling.BILINEAR)
        x = np.asarray(img, dtype=np.float32)
    return (x[..., None] if channels == 1 else x), resized


def _input_shape(session) -> tuple[str, int, int, int]:
    (inp,) = session.get_inputs()
    shape = inp.shape
    if len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
        raise DataError(f"model input {inp.name} is {shape}, expected [batch, H, W, C] (an NHWC image classifier)")
    return inp.name, shape[1], shape[2], shape[3]


def load_session(model_uri: str, folder: Path):
    """Download ``model_uri`` into ``folder`` and open its one ``.onnx`` file with onnxruntime (CPU)."""
    import onnxruntime as ort

    from tracking.registry import download_model

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # stdout/stderr stay the results
    files = sorted(download_model(model_uri, folder).rglob("*.onnx"))
    if len(files) != 1:
        raise DataError(f"{model_uri}: expected one .onnx file in the model, found {[f.name for f in files]}")
    return ort.InferenceSession(str(files[0]), providers=["CPUExecutionProvider"])


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def classify(model_uri: str, images: list[str], top_k: int = 3, resize: bool = True) -> list[Prediction]:
    """Top-k predictions for each image; every file is checked before the model is fetched."""
    from tracking.registry import model_version_info

    if not images:
        raise DataError("no image files given")
    sizes = [check_image(p) for p in images]  # local checks first: a bad file never costs a download
    info = model_version_info(model_uri)  # a missing models:/ URI: one-line TrackingError
    with tempfile.TemporaryDirectory(prefix="classify-") as tmp:
        session = load_session(model_uri, Path(tmp))
        name, h, w, c = _input_shape(session)
        arrays = [to_input(p, h, w, c, resize) for p in images]
        logits = session.run(None, {name: np.stack([a for a, _ in arrays])})[0]
    k = logits.shape[1]
    tags = info.tags
    ids = [int(i) for i in tags["classes"].split(",")] if tags.get("classes") else list(range(k))
    names = tags["class_names"].split(",") if tags.get("class_names") else [str(i) for i in ids]
    if not len(ids) == len(names) == k:
        ids, names = list(range(k)), [str(i) for i in range(k)]
    probs = softmax(logits.astype(np.float64))
    out = []
    for path, size, (_, resized), p in zip(images, sizes, arrays, probs):
        order = np.argsort(-p)[: min(top_k, k)]
        out.append(Prediction(str(path), size, resized, [(ids[i], names[i], float(p[i])) for i in order]))
    return out


def format_prediction(pred: Prediction) -> str:
    best = ", ".join(f"{name} ({cid}) {p:.3f}" for cid, name, p in pred.top)
    return f"{pred.path}: {best}"
