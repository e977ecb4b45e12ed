"""Parameters of every entry point, with defaults and units, parsed and checked in one place.

Values arrive as strings (from click or ``mlflow run -P``, which does not check MLproject
types), so each is parsed here and a bad one raises ``ConfigError`` with one line naming the
parameter and what is allowed — before any run is created.
"""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass, field

from models import RECIPE_KEYS, model_info
from pipelines.data import DATASETS, num_labels

AUTO = "auto"  # "use the model's recipe" (numbers) or "pick for this machine" (device/precision)
OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("none", "step", "linear")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


class ConfigError(ValueError):
    """A bad parameter: the message is the one line the user sees."""


@dataclass
class DataConfig:
    dataset: str = "cifar100"  # cifar100 | digits (| mnist | cifar10 when present)
    data_dir: str | None = None  # folder with the official files; None = download to the cache
    classes: list[int] = field(default_factory=list)  # original label ids; [] = data set default (cifar100: 0,33,41)


@dataclass
class TrainConfig:
    model: str = "pooling_cnn"  # a name from `python -m pipelines models`
    pooling: str = "max"  # stride | max | avg, for models with a pooling option
    seed: int = 0  # model init and shuffling; same seed + CPU = same weights
    device: str = AUTO  # auto (CUDA if present, else CPU) | cpu | cuda | cuda:N
    precision: str = AUTO  # auto: bf16 only where native (CUDA or AMX/AVX512-BF16 CPU), else fp32
    eval_every: int = 1  # epochs between test-set evaluations; the last epoch is always evaluated
    checkpoint_every: int = 50  # epochs between checkpoints (also written at the end and on Ctrl-C)
    # Share of the training set held out (stratified, by ``seed``) as the validation split: per-epoch
    # val_* metrics, never trained on. 0 = none (the seeds' protocol). Not in any model's recipe.
    val_fraction: float = 0.0
    system_metrics: bool = True  # CPU / memory (GPU) sampled by MLflow while the run trains
    # Recipe: None = the model's seed recipe (models/__init__.py DEFAULT_RECIPE + the model's own).
    epochs: int | None = None  # passes over the training set (cifar100 CNNs: 500)
    batch_size: int | None = None  # images per step (128)
    lr: float | None = None  # learning rate (5e-3)
    momentum: float | None = None  # SGD momentum (0.9)
    weight_decay: float | None = None  # L2 penalty (0)
    optimizer: str | None = None  # sgd | adam
    lr_schedule: str | None = None  # none | step | linear
    augment: bool | None = None  # random shifts + flips on device tensors

    def recipe(self) -> dict:
        """The recipe actually used: the model's defaults overridden by what the user set."""
        base = dict(model_info(self.model).recipe)
        base.update({k: v for k in RECIPE_KEYS if (v := getattr(self, k)) is not None})
        return base

    def model_options(self) -> dict:
        return {"pooling": self.pooling} if "pooling" in model_info(self.model).options else {}

    def tag(self) -> str:
        """Short run-name part: ``max-s0`` for the pooling CNN, ``cnn_seed-s0`` otherwise."""
        return f"{self.pooling if self.model_options() else self.model}-s{self.seed}"


@dataclass
class ExportConfig:
    registered_model_name: str = "auto"  # auto = <dataset>-<model>[-c<ids>]; none = log without registering
    parity_tol: float = 1e-4  # max |onnxruntime - torch| on the test set, else the step fails


def as_params(*configs) -> dict[str, str]:
    """Params as the user gave them, spelled as ``mlflow run`` logs them (None -> auto, [] -> default).

    MLflow refuses to change a logged param, and ``mlflow run`` logs the MLproject values
    first, shell-quoted as in the command it runs (an empty ``data_dir`` is logged as ``''``),
    so our spelling must match; resolved values go under other keys (``recipe.*``,
    ``classes_used``, the registered model's name as a tag).
    """
    out: dict[str, str] = {}
    for cfg in configs:
        for k, v in asdict(cfg).items():
            if v is None:
                out[k] = "" if k == "data_dir" else AUTO
            elif isinstance(v, list):
                out[k] = ",".join(map(str, v)) or "default"
            else:
                out[k] = str(v).lower() if isinstance(v, bool) else str(v)
    return {k: shlex.quote(v) for k, v in out.items()}


# ---- parsers: each takes the raw string and the parameter's name, returns a typed value ----


def _is_auto(raw) -> bool:
    return raw is None or str(raw).strip().lower() in ("", AUTO, "recipe", "none")


def parse_int(name: str, raw, minimum: int = 1, allow_auto: bool = False) -> int | None:
    if allow_auto and _is_auto(raw):
        return None
    try:
        value = float(str(raw).strip())
        if value != int(value):
            raise ValueError
        value = int(value)
    except (ValueError, OverflowError):
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {raw!r}")
    return value


def parse_float(name: str, raw, positive: bool = True, allow_auto: bool = False) -> float | None:
    if allow_auto and _is_auto(raw):
        return None
    try:
        value = float(str(raw).strip())
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(f"{name} must be a finite number, got {raw!r}")
    if positive and value <= 0:
        raise ConfigError(f"{name} must be > 0, got {raw!r}")
    if not positive and value < 0:
        raise ConfigError(f"{name} must be >= 0, got {raw!r}")
    return value


def parse_choice(name: str, raw, choices, allow_auto: bool = False) -> str | None:
    # a choice is never auto: lr_schedule none means no schedule, not the recipe's
    if allow_auto and _is_auto(raw) and str(raw).strip() not in choices:
        return None
    value = str(raw).strip()
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {raw!r}")
    return value


def parse_bool(name: str, raw, allow_auto: bool = False) -> bool | None:
    if allow_auto and _is_auto(raw):
        return None
    value = str(raw).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def parse_classes(raw, dataset: str) -> list[int]:
    if _is_auto(raw) or str(raw).strip().lower() == "default":
        return []
    parts = [p for p in str(raw).replace(" ", "").split(",") if p]
    try:
        ids = [int(p) for p in parts]
    except ValueError:
        raise ConfigError(f"classes must be comma-separated integers, got {raw!r}") from None
    n = num_labels(dataset)
    bad = [i for i in ids if not 0 <= i < n]
    if bad:
        raise ConfigError(f"classes must be ids in 0..{n - 1} for {dataset}; got {bad}")
    if len(set(ids)) != len(ids):
        raise ConfigError(f"classes must not repeat an id; got {raw!r}")
    if len(ids) < 2:
        raise ConfigError(f"classes needs at least 2 ids, got {raw!r}")
    return ids


def parse_device(raw) -> str:
    value = str(raw or AUTO).strip().lower()
    if value in (AUTO, "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
        return value
    raise ConfigError(f"device must be auto, cpu, cuda or cuda:N; got {raw!r}")


def data_config(dataset, data_dir, classes) -> DataConfig:
    name = parse_choice("dataset", dataset, DATASETS)
    # a logged data_dir read back (a run's params) is shell-quoted: an empty one is ''
    data_dir = str(data_dir or "").strip().strip("'\"")
    return DataConfig(name, data_dir if data_dir not in ("", "none") else None, parse_classes(classes, name))


# The raw train parameters in train_config's order (CLI options, MLproject params, logged params).
TRAIN_PARAMS = (
    "model", "pooling", "epochs", "batch_size", "lr", "momentum", "weight_decay", "optimizer", "lr_schedule",
    "augment", "seed", "device", "precision", "eval_every", "checkpoint_every", "val_fraction",
    "system_metrics",
)  # fmt: skip
MAX_VAL_FRACTION = 0.5


def train_config_from(raw: dict) -> TrainConfig:
    """``train_config`` from a mapping of raw values (click kwargs, a run's logged params)."""
    return train_config(*(raw.get(k) for k in TRAIN_PARAMS))


def train_config(
    model,
    pooling,
    epochs,
    batch_size,
    lr,
    momentum,
    weight_decay,
    optimizer,
    lr_schedule,
    augment,
    seed,
    device,
    precision,
    eval_every,
    checkpoint_every,
    val_fraction=None,
    system_metrics=None,
) -> TrainConfig:
    from models import list_models
    from models.cifar100 import POOLINGS

    return TrainConfig(
        model=parse_choice("model", model, list_models()),
        pooling=parse_choice("pooling", pooling, POOLINGS),
        seed=parse_int("seed", seed, minimum=0),
        device=parse_device(device),
        precision=parse_choice("precision", precision, PRECISIONS),
        eval_every=parse_int("eval_every", eval_every),
        checkpoint_every=parse_int("checkpoint_every", checkpoint_every),
        epochs=parse_int("epochs", epochs, allow_auto=True),
        batch_size=parse_int("batch_size", batch_size, allow_auto=True),
        lr=parse_float("lr", lr, allow_auto=True),
        momentum=parse_float("momentum", momentum, positive=False, allow_auto=True),
        weight_decay=parse_float("weight_decay", weight_decay, positive=False, allow_auto=True),
        optimizer=parse_choice("optimizer", optimizer, OPTIMIZERS, allow_auto=True),
        lr_schedule=parse_choice("lr_schedule", lr_schedule, LR_SCHEDULES, allow_auto=True),
        augment=parse_bool("augment", augment, allow_auto=True),
        val_fraction=parse_val_fraction(val_fraction),
        system_metrics=True if system_metrics is None else parse_bool("system_metrics", system_metrics),
    )


def parse_val_fraction(raw, allow_zero: bool = True) -> float:
    """A share of the training set in [0, 0.5] (``(0, 0.5]`` without ``allow_zero``); missing = 0.

    Missing covers runs logged before the parameter existed: they resume with no holdout.
    """
    value = 0.0
    if raw is not None and str(raw).strip() != "":
        try:
            value = float(str(raw).strip()) + 0.0  # + 0.0: -0.0 becomes 0.0
        except ValueError:
            value = float("nan")
    if not (0 <= value <= MAX_VAL_FRACTION) or (value == 0 and not allow_zero):
        bounds = f"{'[' if allow_zero else '('}0, {MAX_VAL_FRACTION:g}]"
        raise ConfigError(f"val_fraction must be a number in {bounds}, got {raw!r}")
    return value


def export_config(registered_model_name, parity_tol) -> ExportConfig:
    # kept as spelled (none, auto or a name): it is logged as given; pipelines.registration resolves it
    name = str(registered_model_name or "").strip()
    return ExportConfig(name, parse_float("parity_tol", parity_tol))
