"""The ``segment`` entry point's config, built from raw values through the parameter table."""

from __future__ import annotations

from dataclasses import dataclass, field

from models import list_models, model_info
from pipelines.data.segmentation import NAME as SEGDIGITS
from pipelines.data.segmentation import SegDataset
from pipelines.device import pick_device, pick_precision
from pipelines.params import params_of, parse_values, raw_values, recipe_overrides
from pipelines.parsing import AUTO, ConfigError, parse_choice

SEGMENT_PARAMS = params_of("segment")
OPTION_NAMES = tuple(p.name for p in SEGMENT_PARAMS)
RECIPE_NAMES = tuple(p.name for p in SEGMENT_PARAMS if p.recipe)


@dataclass
class SegmentConfig:
    # No defaults here: they are the table's (``segment_config`` builds every config).
    task: str  # binary | multiclass
    data_dir: str | None  # None = generated segdigits
    n_train: int  # generated canvases
    n_test: int
    size: tuple[int, int]  # generated canvas H, W in pixels
    max_digits: int
    data_seed: int
    model: str
    base: int  # channels of the first U-Net level
    depth: int  # U-Net levels
    seed: int  # init + shuffling
    device: str
    precision: str
    eval_every: int
    checkpoint_every: int
    registered_model_name: str  # auto, a name, or "" = do not register
    parity_tol: float
    overrides: dict = field(default_factory=dict)  # recipe keys the user set (others: the model's recipe)
    raw: dict = field(default_factory=dict)  # every parameter as given (strings): what the run logs

    def recipe(self) -> dict:
        recipe = {**model_info(self.model).recipe, **self.overrides}
        recipe["augment"] = False  # flips/shifts would have to move the masks too: not done here
        return recipe

    def model_options(self) -> dict:
        return {"base": self.base, "depth": self.depth}

    def registered_name(self, ds: SegDataset) -> str | None:
        if self.registered_model_name == AUTO:
            return f"{ds.name}-{self.model}-{self.task}"
        return self.registered_model_name or None


def segment_config(**raw) -> SegmentConfig:
    """Parse the parameters (strings or values; missing ones take the table's defaults)."""
    unknown = sorted(set(raw) - set(OPTION_NAMES))
    if unknown:
        raise ConfigError(f"unknown segment parameter(s) {unknown}; known: {', '.join(OPTION_NAMES)}")
    given = raw_values("segment", raw)
    plain = [n for n in OPTION_NAMES if n not in RECIPE_NAMES and n != "registered_model_name"]
    values = parse_values("segment", given, plain)
    seg_models = [m for m in list_models() if model_info(m).dataset == SEGDIGITS]
    parse_choice("model", given["model"], seg_models)
    # kept as spelled (auto or a name); none or empty = do not register
    name = given["registered_model_name"].strip().strip("'\"")
    cfg = SegmentConfig(**values, registered_model_name="" if name.lower() in ("", "none") else name, raw=given)
    cfg.overrides = recipe_overrides("segment", given)
    if cfg.data_dir is None and min(cfg.size) < 2**cfg.depth:
        raise ConfigError(f"depth {cfg.depth} needs a size of at least {2**cfg.depth} px, got {cfg.size}")
    try:  # a device or precision this machine does not have: fail now, before any run exists
        pick_precision(cfg.precision, pick_device(cfg.device))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return cfg


def config_from_run(run_id: str) -> SegmentConfig:
    """The config a segment run was started with (its raw params), for ``--resume``."""
    from tracking.queries import run_data

    params = run_data(run_id)[0]
    if "task" not in params or "model" not in params:
        raise ConfigError(f"run {run_id} is not a segment run (no task/model params)")
    return segment_config(**{k: params[k] for k in OPTION_NAMES if k in params})
