"""What every analysis run reads and writes: the trained model it names, the experiment it lands in, its result.

A model is named by its train run id or by ``models:/name@alias`` (the registered version's
``train_run_id`` tag). Runs land in the source run's experiment unless ``experiment`` is given.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipelines.parsing import ConfigError
from tracking import TrackingError, experiment_id_for
from tracking.queries import run_experiment_id


@dataclass
class AnalysisResult:
    run_id: str
    metrics: dict[str, float]


def resolve_train_run(model_ref: str) -> str:
    """A train run id, or ``models:/name@alias`` / ``models:/name/version`` -> its ``train_run_id`` tag."""
    ref = (model_ref or "").strip()
    if not ref:
        raise ConfigError("model: give a train run id or models:/<name>@<alias>")
    if not ref.startswith("models:/"):
        return ref
    from tracking.registry import model_version_info

    info = model_version_info(ref)
    rid = info.tags.get("train_run_id")
    if not rid:
        raise TrackingError(f"{ref} (version {info.version}) has no train_run_id tag: give the train run id instead")
    return rid


def load_source(model_ref: str, device: torch.device | None = None):
    """(train run id, model in eval mode, model_config, data set) of a trained model."""
    from pipelines.trained import configs_from_run, load_data, load_trained

    rid = resolve_train_run(model_ref)
    model, config = load_trained(rid)
    ds = load_data(configs_from_run(rid)[0])
    return rid, model.to(device or "cpu").eval(), config, ds


def analysis_experiment(experiment: str | None, source_run_id: str) -> str | None:
    """The experiment id an analysis of ``source_run_id`` lands in: ``experiment`` if given, else the source's."""
    return experiment_id_for(experiment) if experiment else run_experiment_id(source_run_id)
