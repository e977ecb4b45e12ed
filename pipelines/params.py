"""The parameter table: every parameter of every entry point, declared once.

A row holds the name, the kind of value (its parser, ``--help`` metavar and one-line error),
the default as ``mlflow run`` spells it, the help text, whether it is a recipe value (``auto`` =
the model's recipe) and the entry points that take it. A name may have one row per meaning
(``checkpoint_every`` is 50 for classifiers and 10 for segmentation): within one entry point a
name has exactly one row. The CLI's options, their parsing and errors, the configs of
``pipelines.config`` and the MLproject (``python -m pipelines mlproject``, checked by
``tests/test_project.py``) all follow from this table.

Adding a hyper-parameter of the training recipe: one ``Param`` row with ``recipe=True`` (its value
when ``auto`` is the model's recipe, ``models/__init__.py``), then ``python -m pipelines mlproject``.
Parsers and kinds of values live in ``pipelines.parsing``; the MLproject file in ``pipelines.mlproject``.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import click

from models.cifar100 import POOLINGS
from pipelines.data import DATASETS, TASKS
from pipelines.parsing import (
    AUTO,
    BOOL,
    CHOICE,
    CLASSES,
    DEVICE,
    FLOAT,
    HOLDOUT,
    INT,
    INT_LIST,
    LOG_RANGE,
    MINUTES,
    MODEL,
    OPTIONAL_INT,
    PATH,
    SIZE,
    TEXT,
    VAL_FRACTION,
    Kind,
)

OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("none", "step", "linear")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SCALES = ("full", "quick")  # a study / reproduction at the reference notebooks' epochs, or 2 epochs (labelled)
EXECUTORS = ("local", "ray")
STAND_INS = ("digits", "none")  # what `reproduce` trains on when a data set is missing
RUN_ENDS = ("FINISHED", "FAILED", "KILLED")


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
    Param("val_fraction", HOLDOUT, "0.1", "Holdout of train the search optimises (> 0).", ("sweep",)),
    Param("system_metrics", BOOL(), "true", "MLflow samples CPU/memory (GPU) while the run trains.", TRAINERS),
    # registry and export
    Param("train_run_id", TEXT, None, "The train run whose model to use.", ("evaluate", "export_onnx")),
    Param(
        "test_accuracy",
        FLOAT(auto=True),
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
    Param("seeds", INT_LIST(0), "0,1,2", "One child run per configuration and seed.", ("study",)),
    Param(
        "batch_seeds",
        BOOL(auto=True),
        AUTO,
        "Local executor: train a configuration's seeds together as one batched computation, each still its own "
        "child run; auto = only on device types where that measured faster (none yet: slower on CPU).",
        ("study",),
    ),
    Param("scale", CHOICE(SCALES), "full", "full (the reference notebook's epochs) | quick (2 epochs).", ("study",)),
    Param("lr", LOG_RANGE(), "1e-4,1e-1", "Log-uniform range 'low,high' or one value.", ("sweep",)),
    Param("batch_sizes", INT_LIST(1), "32,64,128", "Choices of batch size.", ("sweep",)),
    Param("weight_decay", LOG_RANGE(allow_zero=True), "1e-6,1e-2", "Log-uniform range, or 0.", ("sweep",)),
    Param("num_samples", INT(), "8", "Trials.", ("sweep",)),
    Param("grace_period", INT(), "1", "ASHA: epochs before a trial can be stopped.", ("sweep",)),
    Param("reduction_factor", INT(2), "2", "ASHA: keep 1/rf of trials per rung.", ("sweep",)),
    Param(
        "executor",
        CHOICE(EXECUTORS),
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
        CHOICE(("reference", "li")),
        "reference",
        "reference: θ+α(d−θ), as the reference notebook | li: θ+αd1+βd2 (Li et al.).",
        ("landscape",),
    ),
    Param("seed1", INT(0), "0", "Seed of the first direction.", ("landscape",)),
    Param("seed2", INT(0), "1011", "Seed of the second direction.", ("landscape",)),
    Param("step1d", FLOAT(), "0.005", "Step of the 1-D curve.", ("landscape",)),
    Param("step2d", FLOAT(), "0.05", "Step of the 2-D grid (0.05: 61x61).", ("landscape",)),
    Param("limit", FLOAT(), "1.5", "Axes run over [-limit, limit].", ("landscape",)),
    Param("max_points", OPTIONAL_INT, "none", "Cap on curve points / grid points (none = no cap).", ("landscape",)),
    Param("n_images", INT(), "4", "Test images for the activations.", ("features",)),
    Param("max_maps", INT(), "32", "Channels shown per feature-map grid.", ("features",)),
    Param("fc_model", TEXT, None, "FC model: train run id or models:/<name>@<alias>.", ("invariance",)),
    Param("cnn_model", TEXT, None, "CNN trained on the same data: run id or models:/ URI.", ("invariance",)),
    Param("max_shift", INT(0), "8", "Largest shift in pixels (zero fill).", ("invariance",)),
    # operations (CLI only)
    Param("run_id", TEXT, None, "The run to resync.", ("resync",), argument=True, mlproject=False),
    Param(
        "status",
        CHOICE(RUN_ENDS, auto=True),
        "",
        "End a run left RUNNING with no local record of its end (a killed process).",
        ("resync",),
        mlproject=False,
    ),
    Param(
        "model_uri",
        TEXT,
        None,
        "ONNX classifier: models:/cifar100-pooling_cnn@champion or a local .onnx file.",
        ("classify",),
        mlproject=False,
    ),
    Param("top_k", INT(), "3", "Classes to print per image.", ("classify",), mlproject=False),
    Param("images", TEXT, None, "Image files (PNG/JPEG/...).", ("classify",), argument=True, nargs=-1, mlproject=False),
    # reproduction report
    Param("only", TEXT, "all", "Experiments of claims.yaml, e.g. mnist_arch,pooling.", ("reproduce",)),
    Param(
        "scale",
        CHOICE(SCALES),
        "quick",
        "full (the reference notebooks' epochs) | quick (labelled so).",
        ("reproduce",),
    ),
    Param("seeds", INT_LIST(0, auto=True), AUTO, "auto = 0,1,2 at full scale, 0 at quick scale.", ("reproduce",)),
    Param("stand_in", CHOICE(STAND_INS), "digits", "digits | none: when a data set is missing.", ("reproduce",)),
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
    """Every MLproject entry point of the table, in order of first appearance (CLI-only commands left out)."""
    return tuple(dict.fromkeys(e for p in PARAMS if p.mlproject for e in p.entry_points))


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


def recipe_overrides(entry_point: str, given: Mapping) -> dict:
    """The recipe values set in ``given`` (the entry point's recipe rows that are not ``auto``)."""
    names = [p.name for p in params_of(entry_point) if p.recipe]
    return {k: v for k, v in parse_values(entry_point, given, names).items() if v is not None}


def parsed(entry_point: str, **raw) -> dict:
    """Each keyword parsed by the entry point's row of that name: typed values, or one ``ConfigError``."""
    return parse_values(entry_point, raw, raw)


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
