"""The model card: what an exported ONNX classifier is, stored in the file's own ``metadata_props``.

A downloaded ``model.onnx`` alone says which classes its outputs are (ids and names), what its
input is (name, [H, W, C], layout, range), how an arbitrary image becomes that input
(``PREPROCESSING``, implemented by ``to_model_input`` here and by ``web/demo.js``), which data it
was trained and tested on (fingerprints) and which training run made it.

Keys are the field names of ``ModelCard``; values are strings, lists and numbers as JSON. Any
onnxruntime reads them without the ``onnx`` package::

    meta = ort.InferenceSession("model.onnx").get_modelmeta().custom_metadata_map
    names = json.loads(meta["class_names"])
"""

from __future__ import annotations

import json
import numbers
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipelines.data import DataError

if TYPE_CHECKING:
    import onnx
    from PIL import Image

PREPROCESSING_ID = "center-crop-box-v1"
PREPROCESSING = (
    f"{PREPROCESSING_ID}: apply the EXIF orientation, composite transparency over black, centre-crop to "
    "the input's aspect ratio (crop side rounded half up, offset rounded down), area-average (box filter) "
    "to H x W, grayscale = 0.299 R + 0.587 G + 0.114 B when C = 1, round half up to integers 0..255, "
    "float32 NHWC"
)


@dataclass
class ModelCard:
    model: str  # architecture name, e.g. "pooling_cnn"
    dataset: str  # e.g. "cifar100"
    class_ids: list[int]  # original label ids, in output order
    class_names: list[str]
    input_shape: list[int]  # [H, W, C] of one image; the model takes [batch, H, W, C]
    dataset_fingerprint: str  # sha256 of the whole data set (Dataset.fingerprint())
    test_fingerprint: str  # sha256 of the test split only (the split test accuracies are measured on)
    test_split: str  # e.g. "cifar100 test, classes 0,33,41, 300 images"
    train_run_id: str
    test_accuracy: float | None = None
    input_name: str = "input"
    output_name: str = "output"
    input_layout: str = "NHWC"
    input_range: str = "float32 0..255 (raw pixels; the model normalises inside)"
    preprocessing: str = PREPROCESSING

    @property
    def preprocessing_id(self) -> str:
        return self.preprocessing.split(":", 1)[0].strip()

    def to_metadata(self) -> dict[str, str]:
        """Flat str -> str: strings as they are, everything else (lists, numbers, None) as JSON."""
        return {
            f.name: v if isinstance(v := getattr(self, f.name), str) else json.dumps(v, default=_plain)
            for f in fields(self)
        }

    @classmethod
    def from_metadata(cls, props: dict[str, str]) -> ModelCard:
        """The inverse of ``to_metadata`` (other keys are ignored); DataError naming a missing or bad key."""
        values = {}
        for f in fields(cls):
            if f.name not in props:
                raise DataError(f"no model card in the ONNX metadata: key {f.name!r} is missing")
            raw = props[f.name]
            if f.type == "str":
                values[f.name] = raw
                continue
            try:
                values[f.name] = json.loads(raw)
            except ValueError:
                raise DataError(f"model card key {f.name!r} is not JSON: {raw[:80]!r}") from None
        card = cls(**values)
        card._check()
        return card

    def _check(self) -> None:
        def bad(key: str, why: str) -> DataError:
            return DataError(f"model card key {key!r} {why}: {getattr(self, key)!r}"[:300])

        if not (isinstance(self.class_ids, list) and all(_is_int(i) for i in self.class_ids)):
            raise bad("class_ids", "must be a list of integers")
        if not (isinstance(self.class_names, list) and all(isinstance(n, str) for n in self.class_names)):
            raise bad("class_names", "must be a list of strings")
        if len(self.class_ids) != len(self.class_names):
            raise bad("class_names", f"has {len(self.class_names)} names for {len(self.class_ids)} class ids")
        shape = self.input_shape
        if not (isinstance(shape, list) and len(shape) == 3 and all(_is_int(d) and d > 0 for d in shape)):
            raise bad("input_shape", "must be [H, W, C] of positive integers")
        acc = self.test_accuracy
        if acc is not None and not (isinstance(acc, numbers.Real) and not isinstance(acc, bool)):
            raise bad("test_accuracy", "must be a number or null")


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _plain(v):
    """numpy scalars (a data set's class ids, a computed accuracy) as the Python numbers JSON takes."""
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(f"{type(v).__name__} is not JSON serializable")


def embed(proto: onnx.ModelProto, card: ModelCard) -> None:
    """Write ``card`` into ``proto.metadata_props``, replacing entries with the same keys."""
    card._check()
    meta = card.to_metadata()
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key not in meta]
    del proto.metadata_props[:]
    for key, value in [*kept, *meta.items()]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def graph_io(path: str | Path) -> tuple[str, list[int], str, int]:
    """(input name, [H, W, C], output name, number of outputs) of an NHWC classifier's ONNX graph."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    (inp,), out = graph.input, graph.output[0]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
    odims = [d.dim_value if d.HasField("dim_value") else None for d in out.type.tensor_type.shape.dim]
    if len(dims) != 4 or None in dims[1:] or len(odims) != 2 or odims[1] is None:
        raise DataError(
            f"{Path(path).name}: expected input [batch, H, W, C] and output [batch, k], got {dims} -> {odims}"
        )
    return inp.name, dims[1:], out.name, odims[1]


def read_checked(path: str | Path, model_uri: str | None = None) -> ModelCard:
    """``read``, and the card agrees with the file's graph (input name and shape, output, number of classes)."""
    card = read(path)
    input_name, shape, output_name, k = graph_io(path)
    graph = {"input_name": input_name, "input_shape": shape, "output_name": output_name, "classes": k}
    said = {"input_name": card.input_name, "input_shape": card.input_shape, "output_name": card.output_name}
    said["classes"] = len(card.class_ids)
    if said != graph:
        raise DataError(f"{model_uri or path}: the model card says {said} but the ONNX graph has {graph}")
    return card


def read(path_or_proto: str | Path | onnx.ModelProto) -> ModelCard:
    """The card of an ``.onnx`` file (weights are not loaded) or of a ModelProto; DataError if it has none."""
    import onnx

    if isinstance(path_or_proto, onnx.ModelProto):
        return ModelCard.from_metadata({p.key: p.value for p in path_or_proto.metadata_props})
    path = Path(path_or_proto)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except Exception as e:  # protobuf's DecodeError and friends: not an ONNX file
        raise DataError(f"{path}: not a readable ONNX file ({' '.join(str(e).split())[:200]})") from None
    try:
        return ModelCard.from_metadata({p.key: p.value for p in proto.metadata_props})
    except DataError as e:
        raise DataError(f"{path.name}: {e} (export it again with export_onnx)") from None


# ---------- preprocessing: PREPROCESSING, the same arithmetic as web/demo.js ----------


def crop_rect(w: int, h: int, width: int, height: int) -> tuple[int, int, int, int]:
    """(x0, y0, cw, ch): the largest centred rectangle of ``w`` x ``h`` with aspect ``width``:``height``."""
    cw, ch = w, h
    if w * height > h * width:
        cw = max(1, (2 * h * width + height) // (2 * height))  # round(h * width / height), halves up
    else:
        ch = max(1, (2 * w * height + width) // (2 * width))
    return (w - cw) // 2, (h - ch) // 2, cw, ch


def box_weights(n: int, m: int) -> np.ndarray:
    """[m, n]: output i covers source pixels [i s, (i+1) s), s = n / m, each weighted by its overlap."""
    s = n / m
    edges = np.arange(m + 1) * s
    j = np.arange(n)
    return np.clip(np.minimum(edges[1:, None], j + 1) - np.maximum(edges[:-1, None], j), 0, None)


def box_filter(rgb: np.ndarray, height: int, width: int, rows_per_chunk: int = 512) -> np.ndarray:
    """Exact area average of uint8 [h, w, 3] down (or up) to float64 [height, width, 3], unrounded."""
    h, w = rgb.shape[:2]
    wx, wy = box_weights(w, width), box_weights(h, height)
    # Horizontal pass in chunks of rows: a large photo is never held in float64 at once.
    c = rgb.shape[2]
    tmp = np.empty((h, c, width))
    for r in range(0, h, rows_per_chunk):
        tmp[r : r + rows_per_chunk] = rgb[r : r + rows_per_chunk].astype(np.float64).transpose(0, 2, 1) @ wx.T
    tmp = tmp.transpose(0, 2, 1) / (w / width)  # [h, width, c]
    return (wy @ tmp.reshape(h, width * c)).reshape(height, width, c) / (h / height)


def to_model_input(image: Image.Image, height: int, width: int, channels: int) -> np.ndarray:
    """float32 [height, width, channels] of integers 0..255: ``image`` preprocessed by PREPROCESSING."""
    from PIL import Image, ImageOps

    if channels not in (1, 3):
        raise DataError(f"the model takes {channels} channels per pixel; images give 1 (gray) or 3 (RGB)")
    image = ImageOps.exif_transpose(image)  # phone photos: as the browser shows them
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    x0, y0, cw, ch = crop_rect(image.width, image.height, width, height)
    rgb = np.asarray(image.convert("RGB").crop((x0, y0, x0 + cw, y0 + ch)))
    v = box_filter(rgb, height, width)
    if channels == 1:
        v = (0.299 * v[..., 0] + 0.587 * v[..., 1] + 0.114 * v[..., 2])[..., None]
    return np.clip(np.floor(v + 0.5), 0, 255).astype(np.float32)
