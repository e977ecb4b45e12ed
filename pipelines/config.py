"""The configs entry points run with, built from raw values through the parameter table.

Values arrive as strings (from click or ``mlflow run -P``, which does not check MLproject
types), so each is parsed by its row in ``pipelines.params`` and a bad one raises
``ConfigError`` with one line naming the parameter and what is allowed — before any run is
created. Each config keeps the raw strings it was built from: runs log those, spelled as
``mlflow run`` logs them, and the resolved values under other keys.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from models import RECIPE_KEYS, model_info
from pipelines.params import (
    AUTO,
    LR_SCHEDULES,
    MAX_VAL_FRACTION,
    OPTIMIZERS,
    PRECISIONS,
    ConfigError,
    param,
    params_of,
    parse_bool,
    parse_choice,
    parse_classes,
    parse_device,
    parse_float,
    parse_int,
    parse_val_fraction,
    parse_values,
    raw_values,
    unquote,
)

__all__ = [
    "AUTO",
    "LR_SCHEDULES",
    "MAX_VAL_FRACTION",
    "OPTIMIZERS",
    "PRECISIONS",
    "TRAIN_PARAMS",
    "ConfigError",
    "DataConfig",
    "ExportConfig",
    "TrainConfig",
    "as_params",
    "data_config",
    "export_config",
    "parse_bool",
    "parse_choice",
    "parse_classes",
    "parse_device",
    "parse_float",
    "parse_int",
    "parse_val_fraction",
    "train_config",
    "train_config_from",
]


def _raw_field():
    # the parameters as given (strings): what runs log; not part of the config's value
    return field(default_factory=dict, repr=False, compare=False)


@dataclass
class DataConfig:
    dataset: str = "cifar100"  # cifar100 | digits (| mnist | cifar10 when present)
    data_dir: str | None = None  # folder with the official files; None = download to the cache
    classes: list[int] = field(default_factory=list)  # original label ids; [] = data set default (cifar100: 0,33,41)
    raw: dict = _raw_field()


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
    # val_* metrics, never trained on. 0 = none (the reference notebooks' protocol). Not in any recipe.
    val_fraction: float = 0.0
    system_metrics: bool = True  # CPU / memory (GPU) sampled by MLflow while the run trains
    # Recipe: None = the model's recipe (models/__init__.py DEFAULT_RECIPE + the model's own).
    epochs: int | None = None  # passes over the training set (cifar100 CNNs: 500)
    batch_size: int | None = None  # images per step (128)
    lr: float | None = None  # learning rate (5e-3)
    momentum: float | None = None  # SGD momentum (0.9)
    weight_decay: float | None = None  # L2 penalty (0)
    optimizer: str | None = None  # sgd | adam
    lr_schedule: str | None = None  # none | step | linear
    augment: bool | None = None  # random shifts + flips on device tensors
    raw: dict = _raw_field()

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
    raw: dict = _raw_field()


def _spelled(value) -> str:
    """A parsed value as the user would have typed it (configs built without raw strings)."""
    if value is None:
        return AUTO
    if isinstance(value, list):
        return ",".join(map(str, value)) or "default"
    return str(value).lower() if isinstance(value, bool) else str(value)


def as_params(*configs) -> dict[str, str]:
    """Params as the user gave them, spelled as ``mlflow run`` logs them.

    MLflow refuses to change a logged param, and ``mlflow run`` logs the MLproject values
    first, as given and shell-quoted as in the command it runs (``-P lr=5e-3`` is ``5e-3``, an
    empty ``data_dir`` is ``''``), so each config's raw strings are logged; resolved values go
    under other keys (``recipe.*``, ``classes_used``, the registered model's name as a tag).
    """
    out: dict[str, str] = {}
    for cfg in configs:
        for f in fields(cfg):
            if f.name == "raw":
                continue
            if f.name in cfg.raw:
                out[f.name] = cfg.raw[f.name]
            elif f.name == "data_dir":
                out[f.name] = cfg.data_dir or ""
            else:
                out[f.name] = _spelled(getattr(cfg, f.name))
    return {k: shlex.quote(v) for k, v in out.items()}


DATA_PARAMS = ("dataset", "data_dir", "classes")
# The train parameters (CLI options, MLproject params, logged params): the table's rows of `train`.
TRAIN_PARAMS = tuple(p.name for p in params_of("train") if p.name not in DATA_PARAMS)
EXPORT_PARAMS = ("registered_model_name", "parity_tol")


def data_config_from(raw: Mapping) -> DataConfig:
    """A ``DataConfig`` from a mapping of raw values (click kwargs, a run's logged params)."""
    given = raw_values("prep", raw, DATA_PARAMS)
    values = parse_values("prep", given, ("dataset", "data_dir"))
    return DataConfig(**values, classes=parse_classes(given["classes"], values["dataset"]), raw=given)


def data_config(dataset, data_dir, classes) -> DataConfig:
    return data_config_from({"dataset": dataset, "data_dir": data_dir, "classes": classes})


def train_config_from(raw: Mapping) -> TrainConfig:
    """A ``TrainConfig`` from a mapping of raw values (click kwargs, a run's logged params).

    Missing values take the table's defaults: runs logged before a parameter existed resume
    with its default (no holdout, system metrics on).
    """
    from models import list_models

    given = raw_values("train", raw, TRAIN_PARAMS)
    cfg = TrainConfig(**parse_values("train", given, TRAIN_PARAMS), raw=given)
    parse_choice("model", cfg.model, list_models())
    return cfg


def train_config(**raw) -> TrainConfig:
    """``train_config_from`` with keywords; what is not given takes the table's default."""
    return train_config_from(raw)


def export_config(registered_model_name, parity_tol) -> ExportConfig:
    # the name is kept as spelled (none, auto or a name): pipelines.registration resolves it
    given = raw_values("export_onnx", {"registered_model_name": registered_model_name, "parity_tol": parity_tol})
    name = str(registered_model_name or "").strip()
    given = {"registered_model_name": unquote(name), "parity_tol": given["parity_tol"]}
    return ExportConfig(name, param("parity_tol", "export_onnx").parse(given["parity_tol"]), raw=given)
