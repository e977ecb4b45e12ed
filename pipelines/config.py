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
from dataclasses import dataclass, field, fields, replace

from models import list_models, model_info
from pipelines.params import RECIPE_PARAMS, param, params_of, parse_values, raw_values, recipe_overrides, unquote
from pipelines.parsing import AUTO, parse_choice, parse_classes


def _raw_field():
    # the parameters as given (strings): what runs log; not part of the config's value
    return field(default_factory=dict, repr=False, compare=False)


# No defaults here: they are the table's, and configs are built by the functions below.


@dataclass
class DataConfig:
    dataset: str
    data_dir: str | None  # folder with the official files; None = download to the cache
    classes: list[int]  # original label ids; [] = the data set's default (cifar100: 0,33,41)
    raw: dict = _raw_field()


@dataclass
class TrainConfig:
    model: str  # a name from `python -m pipelines models`
    pooling: str  # for models with a pooling option
    seed: int  # model init and shuffling; same seed + CPU = same weights
    device: str
    precision: str
    eval_every: int
    checkpoint_every: int
    val_fraction: float  # share of train held out as the validation split (0 = none, the reference notebooks')
    system_metrics: bool
    # The recipe values the user set (the table's recipe rows); the rest come from the model's recipe.
    overrides: dict = field(default_factory=dict)
    raw: dict = _raw_field()

    def recipe(self) -> dict:
        """The recipe actually used: the model's defaults overridden by what the user set."""
        return {**model_info(self.model).recipe, **self.overrides}

    def with_recipe(self, raw: dict | None = None, **values) -> TrainConfig:
        """A copy with recipe ``values`` set; ``raw`` (default: the values as text) is what runs log."""
        logged = {k: str(v) for k, v in values.items()} if raw is None else raw
        return replace(self, overrides={**self.overrides, **values}, raw={**self.raw, **logged})

    def model_options(self) -> dict:
        return {"pooling": self.pooling} if "pooling" in model_info(self.model).options else {}

    def tag(self) -> str:
        """Short run-name part: ``max-s0`` for the pooling CNN, ``cnn_reference-s0`` otherwise."""
        return f"{self.pooling if self.model_options() else self.model}-s{self.seed}"


@dataclass
class ExportConfig:
    registered_model_name: str = AUTO  # auto = <dataset>-<model>[-c<ids>]; none = log without registering
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
        values = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name not in ("raw", "overrides")}
        if isinstance(cfg, TrainConfig):
            values.update({name: cfg.overrides.get(name) for name in RECIPE_PARAMS})
        for name, value in values.items():
            if name in cfg.raw:
                out[name] = cfg.raw[name]
            elif name == "data_dir":
                out[name] = value or ""
            else:
                out[name] = _spelled(value)
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
    given = raw_values("train", raw, TRAIN_PARAMS)
    settings = [n for n in TRAIN_PARAMS if n not in RECIPE_PARAMS]
    cfg = TrainConfig(**parse_values("train", given, settings), overrides=recipe_overrides("train", given), raw=given)
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
