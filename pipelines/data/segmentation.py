"""Segmentation data: a generated digits-on-canvas task, and a loader for folders of PNGs.

``segdigits`` — built from sklearn's bundled ``load_digits`` (real 8x8 handwriting, offline).
Each canvas (default 48x48, grey) holds 1..``max_digits`` digits, each upscaled bilinearly by
2, 3 or 4 (16..32 px), given a random brightness and pasted at a random place where it does not
touch a digit already there; light Gaussian noise is added on top. The mask is the digit's shape
(upscaled intensity >= 40 % of full scale, before brightness and noise), so a model has to learn
shapes, not a brightness threshold. Labels per pixel: 0 = background, ``d + 1`` = digit ``d``
(multiclass, 11 classes); the binary task uses the same canvases with ``label > 0``.
Train canvases use digits from sklearn's train split, test canvases only unseen digits (the same
stratified 80/20 split, seed 0, as ``pipelines.data.digits``). Everything is drawn from one
``numpy.random.default_rng(seed)``: same parameters, same bytes, on every machine. The arrays
are cached as ``.npz`` under ``cache_dir()/segdigits`` keyed by a hash of the parameters.

Folder format (``load_folder``), for a user's own set::

    data_dir/images/<name>.png  data_dir/masks/<name>.png   (split 80/20 by a seeded permutation)
or  data_dir/train/images, train/masks, test/images, test/masks
    data_dir/classes.txt        optional: one class name per line, line i = class id i (0 = background)

Images: greyscale (L) or colour (RGB; RGBA/P are converted), all the same size. Masks: one channel
(L, P or 1 mode) of class ids; for the binary task any non-zero pixel is foreground (0/1 and 0/255
both work). ``write_folder`` writes a data set in this format (tests use it for the round trip).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipelines.data import TASKS, DataError, hash_arrays

NAME = "segdigits"
DIGIT_NAMES = [f"digit {d}" for d in range(10)]  # class d + 1
GENERATOR_VERSION = 1  # bump when the generator changes: old cache files are then not reused
SCALES = (2, 3, 4)  # 8x8 digit -> 16, 24, 32 px
MASK_THRESHOLD = 0.4  # fraction of full intensity (16) that counts as digit
NOISE_STD = 12.0  # Gaussian pixel noise, in 0..255 units
BRIGHTNESS = (0.55, 1.0)  # per-digit intensity factor
PLACE_TRIES = 20  # random positions tried per digit before it is left out
TEST_FRACTION = 0.2
IMAGE_EXTS = (".png",)


@dataclass
class SegDataset:
    name: str
    task: str  # binary | multiclass
    x_train: np.ndarray  # uint8 [N, H, W, C] raw pixels
    y_train: np.ndarray  # uint8 [N, H, W] class id per pixel, 0 = background
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]  # index = class id; binary: [background, foreground]
    mean: tuple[float, ...]  # per-channel mean/std of x_train/255, for the model's Normalize
    std: tuple[float, ...]
    source: str
    params: dict = field(default_factory=dict)  # how it was made (generator parameters or folder)

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        """Classes in the masks, background included (binary: 2)."""
        return len(self.class_names)

    @property
    def out_channels(self) -> int:
        """Model output channels: 1 logit for binary (sigmoid), one per class for multiclass (softmax)."""
        return 1 if self.task == "binary" else self.num_classes

    def fingerprint(self) -> str:
        h = hash_arrays(hashlib.sha256(self.task.encode()), self.x_train, self.y_train, self.x_test, self.y_test)
        h.update("\n".join(self.class_names).encode())
        return h.hexdigest()


def _stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    flat = x.reshape(-1, x.shape[-1]).astype(np.float64) / 255
    std = np.maximum(flat.std(0), 1e-3)  # a constant channel must not divide by zero
    return tuple(float(v) for v in flat.mean(0)), tuple(float(v) for v in std)


def _for_task(task: str, y: np.ndarray) -> np.ndarray:
    return (y > 0).astype(np.uint8) if task == "binary" else y


# ---------------------------------------------------------------- generated: segdigits


def _source_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """load_digits images as float 0..1, split like ``pipelines.data.digits`` (stratified, seed 0)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    imgs = (d.images / 16.0).astype(np.float32)
    return train_test_split(imgs, d.target, test_size=TEST_FRACTION, stratify=d.target, random_state=0)


def _upscale(img: np.ndarray, scale: int) -> np.ndarray:
    from PIL import Image

    n = img.shape[0] * scale
    return np.asarray(Image.fromarray(img, mode="F").resize((n, n), Image.Resampling.BILINEAR), dtype=np.float32)


def _canvases(
    digits: np.ndarray, labels: np.ndarray, n: int, size: tuple[int, int], max_digits: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    h, w = size
    scales = [s for s in SCALES if 8 * s <= min(h, w)]
    if not scales:
        raise DataError(f"segdigits canvases must be at least 16x16 px, got {h}x{w}")
    xs = np.zeros((n, h, w), np.float32)
    ys = np.zeros((n, h, w), np.uint8)
    for i in range(n):
        want = int(rng.integers(1, max_digits + 1))
        placed = 0
        while placed < want:
            k = int(rng.integers(len(digits)))
            s = scales[int(rng.integers(len(scales)))]
            patch = _upscale(digits[k], s)
            fg = patch >= MASK_THRESHOLD
            bright = rng.uniform(*BRIGHTNESS)
            ph, pw = patch.shape
            for _ in range(PLACE_TRIES):
                top, left = int(rng.integers(h - ph + 1)), int(rng.integers(w - pw + 1))
                region = ys[i, top : top + ph, left : left + pw]
                if not (region[fg] > 0).any():  # no overlap with a digit already there
                    region[fg] = labels[k] + 1
                    view = xs[i, top : top + ph, left : left + pw]
                    np.maximum(view, patch * bright, out=view)
                    break
            placed += 1  # counted even when no free spot was found: the loop always ends
        if not ys[i].any():  # every canvas shows at least one digit: retry with the smallest scale
            patch = _upscale(digits[0], scales[0])
            ph, pw = patch.shape
            ys[i, :ph, :pw][patch >= MASK_THRESHOLD] = labels[0] + 1
            xs[i, :ph, :pw] = np.maximum(xs[i, :ph, :pw], patch)
    noisy = xs * 255 + rng.normal(0, NOISE_STD, xs.shape).astype(np.float32)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)[..., None], ys


def generate(
    n_train: int = 1000, n_test: int = 200, size: tuple[int, int] = (48, 48), max_digits: int = 3, seed: int = 0
) -> dict[str, np.ndarray]:
    """Multiclass arrays (labels 0..10) of the generated task; no cache (see ``load_generated``)."""
    if n_train < 1 or n_test < 1 or max_digits < 1:
        raise DataError("segdigits needs n_train, n_test and max_digits >= 1")
    d_train, d_test, l_train, l_test = _source_digits()
    rng = np.random.default_rng(seed)
    x_train, y_train = _canvases(d_train, l_train, n_train, size, max_digits, rng)
    x_test, y_test = _canvases(d_test, l_test, n_test, size, max_digits, rng)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def cache_path(n_train: int, n_test: int, size: tuple[int, int], max_digits: int, seed: int) -> Path:
    from pipelines.data.download import cache_dir

    key = json.dumps([GENERATOR_VERSION, n_train, n_test, list(size), max_digits, seed]).encode()
    h, w = size
    return (
        cache_dir()
        / NAME
        / f"{NAME}-{n_train}-{n_test}-{h}x{w}-d{max_digits}-s{seed}-{hashlib.sha1(key).hexdigest()[:10]}.npz"
    )


def load_generated(
    task: str = "binary",
    n_train: int = 1000,
    n_test: int = 200,
    size: tuple[int, int] = (48, 48),
    max_digits: int = 3,
    seed: int = 0,
) -> SegDataset:
    """The generated task, from the cache when it is there (written atomically otherwise)."""
    if task not in TASKS:
        raise DataError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
    size = (int(size[0]), int(size[1]))
    path = cache_path(n_train, n_test, size, max_digits, seed)
    arrays = None
    if path.exists():
        try:
            with np.load(path) as z:
                arrays = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
        except (OSError, ValueError, KeyError):
            arrays = None  # a broken cache file is regenerated
    if arrays is None:
        arrays = generate(n_train, n_test, size, max_digits, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, path)
    mean, std = _stats(arrays["x_train"])
    names = ["background", "digit"] if task == "binary" else ["background", *DIGIT_NAMES]
    return SegDataset(
        NAME,
        task,
        arrays["x_train"],
        _for_task(task, arrays["y_train"]),
        arrays["x_test"],
        _for_task(task, arrays["y_test"]),
        names,
        mean,
        std,
        f"sklearn.datasets.load_digits (generated canvases, cached at {path})",
        {"n_train": n_train, "n_test": n_test, "size": list(size), "max_digits": max_digits, "seed": seed},
    )


# ---------------------------------------------------------------- folders of PNGs


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode in ("L", "RGB"):
                return np.asarray(im)
            if im.mode in ("1", "I", "I;16"):
                return np.clip(np.asarray(im.convert("I")), 0, 255).astype(np.uint8)
            return np.asarray(im.convert("RGB"))  # RGBA, P, CMYK, ...
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{path}: not a readable image ({e})") from None


def _read_mask(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "1", "I", "I;16"):
                raise DataError(f"{path}: a mask must be one channel of class ids (L, P or 1 mode), got {im.mode}")
            m = np.asarray(im)
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{path}: not a readable mask ({e})") from None
    if m.dtype == bool:
        m = m.astype(np.uint8)
    if m.min() < 0 or m.max() > 255:
        raise DataError(f"{path}: mask values must be class ids in 0..255, got {m.min()}..{m.max()}")
    return m.astype(np.uint8)


def _read_split(folder: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    img_dir, mask_dir = folder / "images", folder / "masks"
    if not img_dir.is_dir() or not mask_dir.is_dir():
        raise DataError(f"{folder}: expected folders images/ and masks/ (see pipelines/data/segmentation.py)")
    images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not images:
        raise DataError(f"{img_dir}: no .png images")
    masks = {p.stem: p for p in mask_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS}
    missing = [p.name for p in images if p.stem not in masks]
    if missing:
        raise DataError(f"{mask_dir}: no mask for {len(missing)} image(s), e.g. {missing[0]}")
    xs, ys = [], []
    for p in images:
        x, y = _read_image(p), _read_mask(masks[p.stem])
        if x.shape[:2] != y.shape:
            raise DataError(f"{p.name}: image is {x.shape[1]}x{x.shape[0]} but its mask {y.shape[1]}x{y.shape[0]}")
        xs.append(x)
        ys.append(y)
    if len({x.shape[:2] for x in xs}) > 1:
        raise DataError(f"{img_dir}: images must all have the same size, found {sorted({x.shape[:2] for x in xs})}")
    rgb = any(x.ndim == 3 for x in xs)
    xs = [np.repeat(x[..., None], 3, -1) if rgb and x.ndim == 2 else x if rgb else x[..., None] for x in xs]
    return np.stack(xs), np.stack(ys), [p.stem for p in images]


def load_folder(data_dir: str | Path, task: str = "binary", seed: int = 0) -> SegDataset:
    """A user's set in the folder format (module docstring); split 80/20 by ``seed`` when not pre-split."""
    if task not in TASKS:
        raise DataError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"data_dir {root} is not a folder")
    if (root / "train").is_dir():
        if not (root / "test").is_dir():
            raise DataError(f"{root}: has train/ but no test/")
        x_train, y_train, _ = _read_split(root / "train")
        x_test, y_test, _ = _read_split(root / "test")
        if x_train.shape[1:] != x_test.shape[1:]:
            raise DataError(f"{root}: train images are {x_train.shape[1:]} but test images {x_test.shape[1:]}")
    else:
        x, y, _ = _read_split(root)
        if len(x) < 2:
            raise DataError(f"{root}: need at least 2 image/mask pairs to split into train and test")
        perm = np.random.default_rng(seed).permutation(len(x))
        n_test = max(1, round(len(x) * TEST_FRACTION))
        test, train = np.sort(perm[:n_test]), np.sort(perm[n_test:])
        x_train, y_train, x_test, y_test = x[train], y[train], x[test], y[test]
    top = int(max(y_train.max(), y_test.max()))
    names_file = root / "classes.txt"
    if task == "binary":
        names = ["background", "foreground"]
        if names_file.exists():
            lines = [s.strip() for s in names_file.read_text().splitlines() if s.strip()]
            if len(lines) == 2:
                names = lines
    else:
        if names_file.exists():
            names = [s.strip() for s in names_file.read_text().splitlines() if s.strip()]
            if top >= len(names):
                raise DataError(f"{root}: a mask holds class id {top} but classes.txt names only {len(names)} classes")
        else:
            names = ["background", *(str(i) for i in range(1, max(top, 1) + 1))]
        if len(names) < 2:
            raise DataError(f"{names_file}: multiclass needs at least 2 classes (background + one)")
    mean, std = _stats(x_train)
    return SegDataset(
        root.name or "folder",
        task,
        x_train,
        _for_task(task, y_train),
        x_test,
        _for_task(task, y_test),
        names,
        mean,
        std,
        str(root.resolve()),
        {"data_dir": str(root), "split": "folders" if (root / "train").is_dir() else f"80/20 seed {seed}"},
    )


def write_folder(ds: SegDataset, root: str | Path) -> Path:
    """Write ``ds`` as train/ and test/ folders of PNGs (masks = class ids, mode L) plus classes.txt."""
    from PIL import Image

    root = Path(root)
    for split, xs, ys in (("train", ds.x_train, ds.y_train), ("test", ds.x_test, ds.y_test)):
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "masks").mkdir(parents=True, exist_ok=True)
        for i, (x, y) in enumerate(zip(xs, ys)):
            Image.fromarray(x[..., 0] if x.shape[-1] == 1 else x).save(root / split / "images" / f"{i:05d}.png")
            Image.fromarray(y.astype(np.uint8), mode="L").save(root / split / "masks" / f"{i:05d}.png")
    (root / "classes.txt").write_text("\n".join(ds.class_names) + "\n")
    return root
