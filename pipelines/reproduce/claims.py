"""The seed claims (``claims.yaml``) as checked objects: experiments to run and claims to compare."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipelines.config import ConfigError, parse_choice, parse_classes
from pipelines.data import DATASETS, default_classes

CLAIMS_FILE = Path(__file__).with_name("claims.yaml")
ACCURACY_METRICS = ("test_accuracy", "train_accuracy")
TIME_METRICS = ("train_seconds", "inference_seconds")
METRICS = (*ACCURACY_METRICS, "num_params", *TIME_METRICS)
# Image shape per data set as the seeds use it: parameter counts are checked on it without loading data.
IMAGE_SHAPES = {"cifar100": (32, 32, 3), "cifar10": (32, 32, 3), "mnist": (28, 28, 1)}


@dataclass(frozen=True)
class Experiment:
    name: str  # also the study name (rows of its comparison table = configs)
    seed_file: str
    dataset: str
    classes: str  # "0,33,43" or "default"
    epochs: int  # --scale full: the seed's
    quick_epochs: int  # --scale quick
    recipe: dict[str, str]  # the same for every config
    configs: dict[str, dict[str, str]]  # label -> {"model": ..., options}
    hardware: str  # what the seed ran on
    tolerance: float  # accuracy: |ours - seed| <= tolerance is "reproduced"

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
    seed: float  # the seed's value
    source: str  # seed file and section
    tolerance: float | None = None  # overrides the experiment's
    comparable: bool = True
    why: str = ""  # why not comparable

    @property
    def id(self) -> str:
        return f"{self.experiment}.{self.config}.{self.metric}"


@dataclass(frozen=True)
class Claims:
    experiments: dict[str, Experiment]
    claims: list[Claim]
    real_copies: dict[str, dict[str, str]] = field(default_factory=dict)  # dataset -> file name -> sha256

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
        )


def _experiment(name: str, raw: dict) -> Experiment:
    from pipelines.study import make_train_cfg

    try:
        classes = raw.get("classes", "default")
        exp = Experiment(
            name=name,
            seed_file=str(raw["seed_file"]),
            dataset=parse_choice(f"{name}.dataset", raw["dataset"], DATASETS),
            classes=",".join(map(str, classes)) if isinstance(classes, list) else str(classes),
            epochs=int(raw["epochs"]),
            quick_epochs=int(raw["quick_epochs"]),
            recipe={k: str(v) for k, v in (raw.get("recipe") or {}).items()},
            configs={label: {k: str(v) for k, v in spec.items()} for label, spec in raw["configs"].items()},
            hardware=str(raw["hardware"]),
            tolerance=float(raw["tolerance"]),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ConfigError(f"claims: experiment {name!r} is malformed ({type(e).__name__}: {e})") from None
    parse_classes(exp.classes, exp.dataset)
    for label in exp.configs:
        model, options = exp.variant_options(label)
        make_train_cfg(model, **options)  # unknown model/option/value -> ConfigError naming it
    return exp


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
        claims.append(c)
    ids = [c.id for c in claims]
    if len(set(ids)) != len(ids):
        raise ConfigError("claims: a claim is listed twice")
    return Claims(experiments, claims, raw.get("real_copies") or {})
