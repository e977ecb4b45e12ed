"""The parameter table: every parameter of every entry point, declared once.

A row holds the name, the kind of value (its parser, ``--help`` metavar and one-line error),
the default as ``mlflow run`` spells it, the help text, whether it is a recipe value (``auto`` =
the model's recipe) and the entry points that take it. A name may have one row per meaning
(``checkpoint_every`` is 50 for classifiers and 10 for segmentation): within one entry point a
name has exactly one row. The CLI's options, their parsing and errors, the configs of
``pipelines.config`` and the MLproject (``python -m pipelines mlproject``, checked by
``tests/test_project.py``) all follow from this table.

Adding a hyper-parameter: one ``Param`` row below (plus a field on the config it belongs to, and
the regenerated MLproject).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import click

from models.cifar100 import POOLINGS
from pipelines.data import DATASETS, TASKS

AUTO = "auto"  # "use the model's recipe" (numbers) or "pick for this machine" (device/precision)
OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("none", "step", "linear")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MAX_VAL_FRACTION = 0.5


class ConfigError(ValueError):
    """A bad parameter: the message is the one line the user sees."""


# Parsers: each takes the parameter's name and the raw value, returns a typed value.


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
    from pipelines.data import num_labels

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


def parse_size(raw) -> tuple[int, int]:
    """A canvas size: ``N`` or ``HxW``, each at least 16 pixels."""
    text = str(raw).strip().lower().replace(" ", "")
    parts = text.split("x") if "x" in text else [text, text]
    try:
        h, w = (parse_int("size", p, minimum=16) for p in parts)
    except ConfigError:
        raise ConfigError(f"size must be N or HxW with N, H, W >= 16 (e.g. 48 or 45x47), got {raw!r}") from None
    return h, w


def parse_path(raw) -> str | None:
    """A folder or ``None``; a value read back from a run's params is shell-quoted (empty = ``''``)."""
    value = str(raw or "").strip().strip("'\"")
    return value if value.lower() not in ("", "none") else None


def parse_text(raw) -> str:
    return "" if raw is None else str(raw)


# Kinds: a parser with its --help spelling and MLproject type.


@dataclass(frozen=True)
class Kind:
    """How a row's value is parsed (``parse(name, raw)``), shown (``metavar``) and declared to MLflow."""

    parse: Callable[[str, object], object]
    metavar: str
    extra: str = ""  # the allowed range, shown after the help text
    mlproject_type: str = "string"
    check_early: bool = True  # False: the value is checked with others (classes needs the data set)


def INT(minimum: int = 1, auto: bool = False) -> Kind:
    return Kind(
        lambda n, v: parse_int(n, v, minimum, allow_auto=auto),
        "auto|INTEGER" if auto else "INTEGER RANGE",
        f"x>={minimum}",
        "string" if auto else "int",
    )


def FLOAT(positive: bool = True, auto: bool = False) -> Kind:
    return Kind(
        lambda n, v: parse_float(n, v, positive, allow_auto=auto),
        "auto|FLOAT" if auto else "FLOAT RANGE",
        "x>0" if positive else "x>=0",
        "string" if auto else "float",
    )


def CHOICE(choices: Iterable[str], auto: bool = False) -> Kind:
    choices = tuple(choices)
    shown = (AUTO, *choices) if auto and AUTO not in choices else choices
    return Kind(lambda n, v: parse_choice(n, v, choices, allow_auto=auto), f"[{'|'.join(shown)}]")


def BOOL(auto: bool = False) -> Kind:
    return Kind(lambda n, v: parse_bool(n, v, allow_auto=auto), "[auto|true|false]" if auto else "[true|false]")


TEXT = Kind(lambda n, v: parse_text(v), "TEXT")
PATH = Kind(lambda n, v: parse_path(v), "PATH")
DEVICE = Kind(lambda n, v: parse_device(v), "[auto|cpu|cuda|cuda:N]")
VAL_FRACTION = Kind(lambda n, v: parse_val_fraction(v), "FLOAT RANGE", "0<=x<=0.5", "float")
SIZE = Kind(lambda n, v: parse_size(v), "N|HxW")
CLASSES = Kind(lambda n, v: parse_text(v), "default|IDS", check_early=False)  # ids depend on the data set
MINUTES = Kind(lambda n, v: None if str(v).strip().lower() == "none" else parse_float(n, v), "none|FLOAT", "x>0")
MODEL = Kind(lambda n, v: parse_text(v).strip(), "MODEL", check_early=False)  # checked against the registry


@dataclass(frozen=True)
class Param:
    name: str
    kind: Kind
    default: str | None  # as `mlflow run` logs it; None = required
    help: str
    entry_points: tuple[str, ...]
    recipe: bool = False  # auto = the model's recipe (models/__init__.py)
    argument: bool = False  # a positional argument of the CLI command, not --name
    nargs: int = 1
    mlproject: bool = True  # False: a CLI-only option

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def parse(self, raw):
        """The typed value of ``raw`` (``None`` or missing = the default)."""
        return self.kind.parse(self.name, self.default if raw is None else raw)


# Entry points that take the same group of parameters.
TRAINERS = ("main", "train", "gradients")
DATA = ("main", "prep", "train", "gradients")
SEGMENT = ("segment",)
RECIPE_ENTRY_POINTS = (*TRAINERS, "segment")

PARAMS: tuple[Param, ...] = (
    # data
    Param("dataset", CHOICE(DATASETS), "cifar100", "cifar100 | cifar10 | mnist | digits (offline).", DATA),
    Param("dataset", CHOICE(DATASETS), "digits", "Data set of every trial.", ("sweep",)),
    Param("dataset", TEXT, "", "Default: the study's data set; digits runs any study offline.", ("study",)),
    Param(
        "data_dir",
        PATH,
        "",
        "Folder with the official files (default: download to cache).",
        (*DATA, "sweep", "study"),
    ),
    Param("data_dir", PATH, "", "Folder with cifar-100-python/, cifar-10-batches-py/, mnist/.", ("reproduce",)),
    Param(
        "data_dir",
        PATH,
        "",
        "Folder of images/*.png + masks/*.png (see pipelines/data/segmentation.py); empty = generated.",
        SEGMENT,
    ),
    Param(
        "classes",
        CLASSES,
        "default",
        "Original label ids to keep, e.g. 0,33,41 (default: the data set's).",
        (*DATA, "sweep", "study"),
    ),
    # segmentation data and model
    Param("task", CHOICE(TASKS), "binary", "binary | multiclass.", SEGMENT),
    Param("n_train", INT(), "1000", "Generated training canvases (ignored with --data-dir).", SEGMENT),
    Param("n_test", INT(), "200", "Generated test canvases (ignored with --data-dir).", SEGMENT),
    Param("size", SIZE, "48", "Generated canvas size, N or HxW, e.g. 48 or 45x47 (ignored with --data-dir).", SEGMENT),
    Param("max_digits", INT(), "3", "Most digits per generated canvas.", SEGMENT),
    Param(
        "data_seed", INT(0), "0", "Seed of the generated data (and of the 80/20 split of an unsplit folder).", SEGMENT
    ),
    # model
    Param("model", MODEL, "pooling_cnn", "Registered model name (see `models`).", (*TRAINERS, "sweep")),
    Param("model", MODEL, "unet_small", "Registered segmentation model.", SEGMENT),
    Param(
        "model", TEXT, None, "Train run id or models:/<name>@<alias> (a CNN for features).", ("landscape", "features")
    ),
    Param("pooling", CHOICE(POOLINGS), "max", "Pooling, for models with a pooling option.", (*TRAINERS, "sweep")),
    Param("base", INT(), "16", "U-Net width of the first level (doubles per level).", SEGMENT),
    Param("depth", INT(), "3", "U-Net levels (max-pools).", SEGMENT),
    # recipe: auto = the model's (models/__init__.py)
    Param("epochs", INT(auto=True), AUTO, "Passes over the training set.", RECIPE_ENTRY_POINTS, recipe=True),
    Param("epochs", INT(auto=True), AUTO, "Epochs per trial (ASHA's max_t); auto = recipe.", ("sweep",)),
    Param("epochs", INT(auto=True), AUTO, "Epochs of every child; auto = the study's.", ("study",)),
    Param("batch_size", INT(auto=True), AUTO, "Images per step.", RECIPE_ENTRY_POINTS, recipe=True),
    Param("lr", FLOAT(auto=True), AUTO, "Learning rate.", RECIPE_ENTRY_POINTS, recipe=True),
    Param("momentum", FLOAT(False, auto=True), AUTO, "SGD momentum.", RECIPE_ENTRY_POINTS, recipe=True),
    Param("weight_decay", FLOAT(False, auto=True), AUTO, "L2 penalty.", RECIPE_ENTRY_POINTS, recipe=True),
    Param("optimizer", CHOICE(OPTIMIZERS, auto=True), AUTO, "Optimizer.", (*RECIPE_ENTRY_POINTS, "sweep"), recipe=True),
    Param(
        "lr_schedule",
        CHOICE(LR_SCHEDULES, auto=True),
        AUTO,
        "Learning-rate schedule.",
        RECIPE_ENTRY_POINTS,
        recipe=True,
    ),
    Param("augment", BOOL(auto=True), AUTO, "Random shifts + flips on device tensors.", TRAINERS, recipe=True),
    # training run
    Param(
        "seed", INT(0), "0", "Seed for init and shuffling; same seed on CPU = same weights.", (*RECIPE_ENTRY_POINTS,)
    ),
    Param("seed", INT(0), "0", "Sampler seed and training seed.", ("sweep",)),
    Param(
        "device",
        DEVICE,
        AUTO,
        "CUDA when available, else CPU.",
        (*RECIPE_ENTRY_POINTS, "sweep", "study", "reproduce", "landscape"),
    ),
    Param(
        "precision",
        CHOICE(PRECISIONS),
        AUTO,
        "auto: bf16 only where the hardware does it natively, else fp32.",
        (*RECIPE_ENTRY_POINTS, "sweep", "study", "reproduce"),
    ),
    Param("eval_every", INT(), "1", "Epochs between test evaluations (the last epoch always).", RECIPE_ENTRY_POINTS),
    Param("checkpoint_every", INT(), "50", "Epochs between checkpoints (also at the end and on Ctrl-C).", TRAINERS),
    Param("checkpoint_every", INT(), "10", "Epochs between checkpoints (also at the end and on Ctrl-C).", SEGMENT),
    Param(
        "val_fraction",
        VAL_FRACTION,
        "0.0",
        "Share of train held out (stratified, by seed) as the validation split: val_* metrics, never trained on.",
        TRAINERS,
    ),
    Param("val_fraction", VAL_FRACTION, "0.1", "Holdout of train the search optimises (> 0).", ("sweep",)),
    Param("system_metrics", BOOL(), "true", "MLflow samples CPU/memory (GPU) while the run trains.", TRAINERS),
    # registry and export
    Param("train_run_id", TEXT, None, "The train run whose model to use.", ("evaluate", "export_onnx")),
    Param(
        "test_accuracy",
        TEXT,
        "",
        "Score for the champion rule (default: from --eval-run-id).",
        ("export_onnx",),
        mlproject=False,
    ),
    Param("eval_run_id", TEXT, "", "Evaluate run whose test_accuracy decides the champion alias.", ("export_onnx",)),
    Param(
        "registered_model_name",
        TEXT,
        AUTO,
        "Registry name; auto = <dataset>-<model> (+ -c<ids> for non-default classes); none = do not register.",
        ("main", "export_onnx"),
    ),
    Param(
        "registered_model_name",
        TEXT,
        AUTO,
        "auto = <dataset>-<model>-<task>; none = log the ONNX model without registering.",
        SEGMENT,
    ),
    Param(
        "registered_model_name",
        TEXT,
        AUTO,
        "Registry name for champion/challenger; auto = <dataset>-<study> (+ -c<ids>); none = do not register.",
        ("study",),
    ),
    Param(
        "parity_tol",
        FLOAT(),
        "0.0001",
        "Max |onnxruntime - torch|, else the export fails.",
        ("main", "export_onnx", "segment"),
    ),
    # demo
    Param(
        "cnn_uri", TEXT, "models:/cifar100-pooling_cnn@champion", "CNN (models:/name@alias or .onnx file).", ("demo",)
    ),
    Param("fc_uri", TEXT, "models:/cifar100-fcnet@champion", "FC model trained on the same classes.", ("demo",)),
    Param("out", TEXT, "out/demo", "Folder to write the page and models into.", ("demo",)),
    Param("port", INT(0), "8000", "Port on 127.0.0.1 (0 = any free port).", ("demo",)),
    # studies and sweeps
    Param(
        "name",
        TEXT,
        "pooling",
        "pooling | mnist_arch | cifar10_arch | kernel | depth | custom | residual | keras (any name with --configs).",
        ("study",),
        argument=True,
    ),
    Param("configs", TEXT, "", "Instead of the table's: 'model[:key=value,...];...' (name is then free).", ("study",)),
    Param("seeds", TEXT, "0,1,2", "One child run per configuration and seed.", ("study",)),
    Param("scale", TEXT, "full", "full (the reference notebook's epochs) | quick (2 epochs).", ("study",)),
    Param("lr", TEXT, "1e-4,1e-1", "Log-uniform range 'low,high' or one value.", ("sweep",)),
    Param("batch_sizes", TEXT, "32,64,128", "Choices of batch size.", ("sweep",)),
    Param("weight_decay", TEXT, "1e-6,1e-2", "Log-uniform range, or 0.", ("sweep",)),
    Param("num_samples", INT(), "8", "Trials.", ("sweep",)),
    Param("grace_period", INT(), "1", "ASHA: epochs before a trial can be stopped.", ("sweep",)),
    Param("reduction_factor", INT(), "2", "ASHA: keep 1/rf of trials per rung.", ("sweep",)),
    Param(
        "executor",
        CHOICE(("local", "ray")),
        "local",
        "local (serial, in-process) | ray (Ray Tune trials).",
        ("study", "sweep"),
    ),
    Param("ray_address", TEXT, "", "Existing Ray cluster (e.g. ray://head:10001); default: local.", ("study", "sweep")),
    Param(
        "max_concurrent",
        INT(auto=True),
        AUTO,
        "Ray trials at once; auto = one per CPU (never more than the CPUs).",
        ("study", "sweep"),
    ),
    Param(
        "runs",
        TEXT,
        None,
        "Run ids, study/sweep parent ids or experiment names.",
        ("compare",),
        argument=True,
        nargs=-1,
    ),
    # analyses
    Param("source", TEXT, "", "Train run id / models:/ URI whose configuration to repeat.", ("gradients",)),
    Param(
        "mode",
        CHOICE(("seed", "li")),
        "seed",
        "seed: θ+α(d−θ), as the reference notebook | li: θ+αd1+βd2 (Li et al.).",
        ("landscape",),
    ),
    Param("seed1", INT(0), "0", "Seed of the first direction.", ("landscape",)),
    Param("seed2", INT(0), "1011", "Seed of the second direction.", ("landscape",)),
    Param("step1d", FLOAT(), "0.005", "Step of the 1-D curve.", ("landscape",)),
    Param("step2d", FLOAT(), "0.05", "Step of the 2-D grid (0.05: 61x61).", ("landscape",)),
    Param("limit", FLOAT(), "1.5", "Axes run over [-limit, limit].", ("landscape",)),
    Param("max_points", TEXT, "none", "Cap on curve points / grid points (none = no cap).", ("landscape",)),
    Param("n_images", INT(), "4", "Test images for the activations.", ("features",)),
    Param("max_maps", INT(), "32", "Channels shown per feature-map grid.", ("features",)),
    Param("fc_model", TEXT, None, "FC model: train run id or models:/<name>@<alias>.", ("invariance",)),
    Param("cnn_model", TEXT, None, "CNN trained on the same data: run id or models:/ URI.", ("invariance",)),
    Param("max_shift", INT(0), "8", "Largest shift in pixels (zero fill).", ("invariance",)),
    # reproduction report
    Param("only", TEXT, "all", "Experiments of claims.yaml, e.g. mnist_arch,pooling.", ("reproduce",)),
    Param("scale", TEXT, "quick", "full (the reference notebooks' epochs) | quick (labelled so).", ("reproduce",)),
    Param("seeds", TEXT, AUTO, "auto = 0,1,2 at full scale, 0 at quick scale.", ("reproduce",)),
    Param("stand_in", TEXT, "digits", "digits | none: when a data set is missing.", ("reproduce",)),
    Param("out", TEXT, "", "Report folder (default: reports/reproduce-<scale>).", ("reproduce",)),
    Param("plan", BOOL(), "false", "Print what would run (trials, reuse, estimated time) and stop.", ("reproduce",)),
    Param(
        "max_minutes",
        MINUTES,
        "none",
        "Run only the experiments that fit in this many minutes by the estimate, cheapest first.",
        ("reproduce",),
    ),
)


def params_of(entry_point: str) -> tuple[Param, ...]:
    """The rows an entry point takes, in table order."""
    return tuple(p for p in PARAMS if entry_point in p.entry_points)


def param(name: str, entry_point: str) -> Param:
    (row,) = (p for p in params_of(entry_point) if p.name == name)
    return row


def entry_points() -> tuple[str, ...]:
    """Every entry point of the table, in order of first appearance."""
    return tuple(dict.fromkeys(e for p in PARAMS for e in p.entry_points))


RECIPE_PARAMS = tuple(p.name for p in params_of("train") if p.recipe)


def unquote(raw) -> str:
    """A raw value as given: values read back from a run's params are shell-quoted as `mlflow run` logs them."""
    text = "" if raw is None else str(raw)
    if text[:1] in ("'", '"'):
        try:
            parts = shlex.split(text)
        except ValueError:
            return text
        return parts[0] if len(parts) == 1 else "" if not parts else text
    return text


def raw_values(entry_point: str, raw: Mapping, names: Iterable[str] | None = None) -> dict[str, str]:
    """The raw strings of ``names`` (default: all the entry point's), the table's default where missing."""
    wanted = set(names) if names is not None else None
    out = {}
    for p in params_of(entry_point):
        if wanted is not None and p.name not in wanted:
            continue
        value = raw.get(p.name)
        if isinstance(value, bool):
            value = str(value).lower()
        out[p.name] = (p.default or "") if value is None else unquote(value)
    return out


def parse_values(entry_point: str, raw: Mapping, names: Iterable[str]) -> dict:
    """Typed values of ``names``, parsed by their rows (missing = the default)."""
    return {n: param(n, entry_point).parse(raw.get(n)) for n in names}


# Click: options generated from the rows.


class TableType(click.ParamType):
    """A row's kind as a click type: checks the value with the row's parser and passes the raw string on.

    The raw string is what runs log (``mlflow run`` logs ``-P`` values as given), so commands get
    it unchanged and build their configs through ``pipelines.config``. A bad value raises
    ``ConfigError``, not click's ``BadParameter``: the CLI's command class turns it into the
    project's one line (and ends the run ``mlflow run`` created FAILED).
    """

    def __init__(self, row: Param):
        self.row = row
        self.name = row.kind.metavar

    def get_metavar(self, param, ctx) -> str:
        return self.row.kind.metavar

    def convert(self, value, param, ctx):
        if value is None or (isinstance(value, tuple)):
            return value
        raw = str(value)
        if self.row.kind.check_early:
            self.row.parse(raw)
        return raw


def click_params(entry_point: str, skip: Iterable[str] = ()) -> Callable:
    """Decorator adding the entry point's rows as click arguments and options (``skip``: added by hand)."""
    skipped = set(skip)

    def decorate(fn):
        for row in reversed(params_of(entry_point)):
            if row.name in skipped:
                continue
            if row.argument:
                metavar = row.name.upper() + ("..." if row.nargs == -1 else "")
                fn = click.argument(
                    row.name, nargs=row.nargs, type=TableType(row), required=row.nargs == 1, metavar=metavar
                )(fn)
                continue
            extra = f"  [{row.kind.extra}]" if row.kind.extra else ""
            fn = click.option(
                row.flag,
                row.name,
                type=TableType(row),
                default=row.default,
                required=row.default is None,
                show_default=row.default not in (None, ""),
                help=row.help + (" auto = the model's recipe." if row.recipe else "") + extra,
            )(fn)
        return fn

    return decorate


def mlproject_block(entry_point: str) -> dict:
    """The MLproject ``parameters`` and ``command`` of an entry point, from its rows."""
    rows = [p for p in params_of(entry_point) if p.mlproject]
    parameters = {}
    for p in rows:
        spec = {"type": p.kind.mlproject_type}
        if p.default is not None:
            spec["default"] = _yaml_default(p)
        parameters[p.name] = spec
    words = ["python -m pipelines", entry_point]
    words += [f"{{{p.name}}}" for p in rows if p.argument]
    words += [f"{p.flag} {{{p.name}}}" for p in rows if not p.argument]
    return {"parameters": parameters, "command": " ".join(words)}


def _yaml_default(p: Param):
    if p.kind.mlproject_type == "int":
        return int(p.default)
    if p.kind.mlproject_type == "float":
        return float(p.default)
    return p.default


# The MLproject's entry points, in the file's order, and what each does (its comment there).
ENTRY_POINTS = {
    "main": "prep -> train -> evaluate -> export_onnx as child runs of one parent run.",
    "prep": "Load and verify the data set; log its fingerprint, counts and arrays.",
    "train": "Train a model; per-epoch metrics, checkpoints, state_dict.",
    "evaluate": "Classification reports, confusion matrix, learning curves, timings.",
    "export_onnx": "ONNX export, onnxruntime parity, registry; the eval run's test_accuracy decides champion.",
    "demo": "The browser demo: a CNN and an FC model side by side.",
    "segment": "U-Net on generated digit masks (or data_dir = images/ + masks/ PNGs), one run.",
    "study": "A reference notebook's comparison: one parent run, a child per (configuration, seed).",
    "compare": "The comparison table and figures of runs that exist.",
    "sweep": "lr / batch size / weight decay search: Optuna TPE + ASHA, trials as child runs.",
    "landscape": "Loss landscape of a trained model; each analysis is a run of its own, tagged source_run_id.",
    "gradients": "Training with per-layer gradient statistics (gradient flow).",
    "features": "First-layer filters, activations and feature maps of a trained CNN.",
    "invariance": "An FC model vs a CNN under 0..8 px shifts.",
    "reproduce": "Every claim of the reference notebooks beside our value, in one report.",
}

MLPROJECT_HEADER = """\
# Generated from the parameter table (pipelines/params.py) by `python -m pipelines mlproject`:
# edit the table, then regenerate. MLflow does not check types, so every value is parsed again
# (and rejected with one line) by the CLI. "auto" = the model's recipe.
name: mlflow-cnn-pipeline

# `mlflow run .` builds a virtualenv from python_env.yaml (pyenv provides python 3.11; `--env-manager uv` reads
# it too). MLflow takes one env field only, and a conda_env project would make virtualenv/uv read conda.yaml
# instead; conda users: `conda env create -f conda.yaml`, activate it, then `mlflow run . --env-manager local`.
python_env: python_env.yaml

entry_points:
"""


def _yaml_scalar(value) -> str:
    import json

    import yaml

    if not isinstance(value, str):
        return repr(value)
    plain = value and value == value.strip() and not any(c in value for c in "#{}[],&*!|>'\"%@`") and ": " not in value
    return value if plain and yaml.safe_load(value) == value else json.dumps(value)


def _fold(words: list[str], indent: str, width: int = 112) -> list[str]:
    lines, line = [], ""
    for w in words:
        if line and len(indent) + len(line) + 1 + len(w) > width:
            lines.append(indent + line)
            line = w
        else:
            line = f"{line} {w}" if line else w
    return [*lines, indent + line]


def render_mlproject() -> str:
    """The whole MLproject file, from the table."""
    out = [MLPROJECT_HEADER]
    for name, what in ENTRY_POINTS.items():
        block = mlproject_block(name)
        out.append(f"  # {what}\n  {name}:\n    parameters:\n")
        rows = {p.name: p for p in params_of(name)}
        for key, spec in block["parameters"].items():
            fields = f"type: {spec['type']}" + (
                f", default: {_yaml_scalar(spec['default'])}" if "default" in spec else ""
            )
            note = rows[key].help + (" auto = the model's recipe." if rows[key].recipe else "")
            out.append(f"      {key}: {{{fields}}}  # {note}\n")
        words = []
        for part in re.split(r" (?=--)", block["command"]):
            words.append(part)
        command = _fold(words, "      ")
        out.append("    command: >-\n" + "\n".join(command) + "\n\n")
    return "".join(out).rstrip("\n") + "\n"
