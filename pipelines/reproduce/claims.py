"""The reference notebooks' claims (``claims.yaml``) as checked objects: experiments to run, value
claims (one number each) and ordering claims (which configuration is above which) to compare."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from pipelines.data import DATASETS, default_classes
from pipelines.parsing import ConfigError, parse_choice, parse_classes

CLAIMS_FILE = Path(__file__).with_name("claims.yaml")
ACCURACY_METRICS = ("test_accuracy", "train_accuracy")
TIME_METRICS = ("train_seconds", "inference_seconds")
METRICS = (*ACCURACY_METRICS, "num_params", *TIME_METRICS)
# Image shape per data set as the notebooks use it: parameter counts are checked on it without loading data.
IMAGE_SHAPES = {"cifar100": (32, 32, 3), "cifar10": (32, 32, 3), "mnist": (28, 28, 1)}
# Ordering claims: which configuration is above which on a study summary column.
ORDER_METRICS = ("test_accuracy", "train_accuracy", "overfit_gap", "train_seconds")
ORDER_KINDS = ("highest", "lowest", "greater", "less", "descending")
# real_copies.<dataset>.subset: what the copy holds, when it is a subset of the full data set
# (accuracies on it are not compared with the notebooks' full-data values); every other key is a file.
SUBSET_KEY = "subset"


@dataclass(frozen=True)
class Experiment:
    name: str  # also the study name (rows of its comparison table = configs)
    notebook: str
    dataset: str
    classes: str  # "0,33,43" or "default"
    epochs: int  # --scale full: the notebook's
    quick_epochs: int  # --scale quick
    recipe: dict[str, str]  # the same for every config
    configs: dict[str, dict[str, str]]  # label -> {"model": ..., options}
    hardware: str  # what the notebook ran on
    tolerance: float  # the former fixed accuracy tolerance; verdicts now use pipelines.reproduce.stats
    reference_test_images: int | None = None  # the notebook's test-set size (its binomial error)

    def num_classes(self) -> int:
        ids = parse_classes(self.classes, self.dataset)
        return len(ids) if ids else len(default_classes(self.dataset))

    def variant_options(self, label: str) -> tuple[str, dict[str, str]]:
        """(model, options) of one config: the recipe, then what the config sets."""
        spec = dict(self.configs[label])
        model = spec.pop("model")
        return model, {**self.recipe, **spec}


@dataclass(frozen=True)
class Claim:
    experiment: str
    config: str
    metric: str
    reference: float  # the notebook's value
    source: str  # notebook file and section
    tolerance: float | None = None  # overrides the experiment's
    comparable: bool = True
    why: str = ""  # why not comparable
    reference_test_images: int | None = None  # the notebook's test-set size; the experiment's unless set

    @property
    def id(self) -> str:
        return f"{self.experiment}.{self.config}.{self.metric}"


@dataclass(frozen=True)
class Ordering:
    """A qualitative conclusion of a notebook: which configuration is above which on a metric.

    kinds: ``highest`` / ``lowest`` (configs[0] against every other config of the experiment),
    ``greater`` / ``less`` (configs[0] against configs[1], or against ``value`` when given),
    ``descending`` (each of configs above the next).
    """

    experiment: str
    name: str
    kind: str
    metric: str
    configs: tuple[str, ...]
    source: str  # notebook file and section
    statement: str  # the conclusion in a few words
    value: float | None = None  # greater/less than this constant instead of a second config
    comparable: bool = True
    why: str = ""  # why not comparable

    @property
    def id(self) -> str:
        return f"{self.experiment}.{self.name}"

    def pairs(self, all_configs: list[str]) -> list[tuple[str | float, str | float]]:
        """(above, below) pairs that make up the claim; a float is the constant ``value``."""
        c = self.configs
        if self.kind == "highest":
            return [(c[0], o) for o in all_configs if o != c[0]]
        if self.kind == "lowest":
            return [(o, c[0]) for o in all_configs if o != c[0]]
        if self.kind == "descending":
            return list(zip(c, c[1:]))
        other = self.value if self.value is not None else c[1]
        return [(c[0], other)] if self.kind == "greater" else [(other, c[0])]


@dataclass(frozen=True)
class Claims:
    experiments: dict[str, Experiment]
    claims: list[Claim]
    # dataset -> file name -> sha256, plus SUBSET_KEY -> description where the copy is a subset
    real_copies: dict[str, dict[str, str]] = field(default_factory=dict)
    orderings: list[Ordering] = field(default_factory=list)

    def select(self, only: str) -> Claims:
        """Keep the experiments named in ``only`` (comma-separated; ``all`` or empty = every one)."""
        names = [n.strip() for n in str(only or "").split(",") if n.strip()]
        if not names or names == ["all"]:
            return self
        for n in names:
            parse_choice("only", n, list(self.experiments))
        return Claims(
            {n: e for n, e in self.experiments.items() if n in names},
            [c for c in self.claims if c.experiment in names],
            self.real_copies,
            [o for o in self.orderings if o.experiment in names],
        )


def _experiment(name: str, raw: dict) -> Experiment:
    from pipelines.trials import make_train_cfg

    try:
        classes = raw.get("classes", "default")
        exp = Experiment(
            name=name,
            notebook=str(raw["notebook"]),
            dataset=parse_choice(f"{name}.dataset", raw["dataset"], DATASETS),
            classes=",".join(map(str, classes)) if isinstance(classes, list) else str(classes),
            epochs=int(raw["epochs"]),
            quick_epochs=int(raw["quick_epochs"]),
            recipe={k: str(v) for k, v in (raw.get("recipe") or {}).items()},
            configs={label: {k: str(v) for k, v in spec.items()} for label, spec in raw["configs"].items()},
            hardware=str(raw["hardware"]),
            tolerance=float(raw["tolerance"]),
            reference_test_images=int(raw["reference_test_images"]) if "reference_test_images" in raw else None,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ConfigError(f"claims: experiment {name!r} is malformed ({type(e).__name__}: {e})") from None
    parse_classes(exp.classes, exp.dataset)
    for label in exp.configs:
        model, options = exp.variant_options(label)
        make_train_cfg(model, **options)  # unknown model/option/value -> ConfigError naming it
    return exp


def _ordering(raw: dict, experiments: dict[str, Experiment]) -> Ordering:
    try:
        value = raw.get("value")
        o = Ordering(
            **{**raw, "configs": tuple(raw.get("configs") or ()), "value": None if value is None else float(value)}
        )
    except (TypeError, ValueError) as e:
        raise ConfigError(f"claims: ordering {raw.get('name')!r} is malformed ({e})") from None
    exp = experiments.get(o.experiment)
    if exp is None or any(c not in exp.configs for c in o.configs):
        raise ConfigError(f"claims: ordering {o.id} names an unknown experiment or config")
    if not o.comparable:
        return o  # listed with the reason only; its kind/metric need not be measurable
    wanted = {"highest": 1, "lowest": 1, "greater": 1 if o.value is not None else 2, "descending": None}
    wanted["less"] = wanted["greater"]
    if o.kind not in ORDER_KINDS or o.metric not in ORDER_METRICS:
        raise ConfigError(f"claims: ordering {o.id}: kind must be one of {ORDER_KINDS}, metric one of {ORDER_METRICS}")
    n = wanted[o.kind]
    if (n is not None and len(o.configs) != n) or (n is None and len(o.configs) < 2) or len(exp.configs) < 2:
        raise ConfigError(f"claims: ordering {o.id}: wrong number of configs for {o.kind!r}")
    return o


def load_claims(path: str | Path = CLAIMS_FILE) -> Claims:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"claims file {path}: {e}") from None
    experiments = {name: _experiment(name, spec) for name, spec in raw["experiments"].items()}
    claims = []
    for item in raw["claims"]:
        c = Claim(**item)
        exp = experiments.get(c.experiment)
        if exp is None or c.config not in exp.configs or c.metric not in METRICS:
            raise ConfigError(f"claims: {c.id} names an unknown experiment, config or metric")
        if c.reference_test_images is None and exp.reference_test_images:
            c = replace(c, reference_test_images=exp.reference_test_images)
        claims.append(c)
    orderings = [_ordering(item, experiments) for item in raw.get("orderings") or []]
    ids = [c.id for c in claims] + [o.id for o in orderings]
    if len(set(ids)) != len(ids):
        raise ConfigError("claims: a claim is listed twice")
    real_copies = {name: {k: str(v) for k, v in spec.items()} for name, spec in (raw.get("real_copies") or {}).items()}
    return Claims(experiments, claims, real_copies, orderings)
