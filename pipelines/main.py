"""Entry point ``main``: prep -> train -> evaluate -> export_onnx as child runs of one parent run.

The steps run in-process (``start_run(nested=True)``), not as nested ``mlflow.run`` calls:
the data set and the trained model pass between steps as objects (no re-load, no extra
interpreter start per step), and a failure in any step unwinds through the parent's
``tracked_run`` so parent and child both end FAILED with the error. Each step is still its own
entry point that takes the previous step's run id.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from pipelines import registration
from pipelines.config import DataConfig, ExportConfig, TrainConfig, as_params
from pipelines.trained import SUMMARY, load_data
from tracking import experiment_id_for, tracked_run
from tracking.artifacts import log_data_inputs
from tracking.runs import log_metrics, log_params, set_tags

if TYPE_CHECKING:
    from pipelines.export_onnx import ExportResult

LINKS = ("registered_model", "version", "champion", "model_id")  # export results the parent tags


@dataclass
class MainResult:
    run_id: str  # the parent run
    train_run_id: str
    summary: dict[str, float]  # the SUMMARY metrics, as the parent logs them
    export: ExportResult  # the logged (and registered) ONNX model


def run(
    data_cfg: DataConfig, train_cfg: TrainConfig, export_cfg: ExportConfig, experiment: str | None = None
) -> MainResult:
    from pipelines import evaluate, export_onnx, prep, train  # the steps main chains, each its own entry point

    ds = load_data(data_cfg)  # bad data fails here, before any run exists
    registration.check(registration.registered_name(export_cfg.registered_model_name, ds, train_cfg.model), ds)
    exp_id = experiment_id_for(experiment)
    recipe = train_cfg.recipe()
    with tracked_run(f"main-{train_cfg.tag()}", exp_id) as parent_id:
        log_params({**as_params(data_cfg, train_cfg, export_cfg), **{f"recipe.{k}": v for k, v in recipe.items()}})
        set_tags({"step": "main", "model": train_cfg.model, "dataset": ds.name})
        test_set = log_data_inputs(ds)
        prepared = prep.run(data_cfg, dataset=ds, nested=True, experiment=None)
        trained = train.run(data_cfg, train_cfg, dataset=ds, nested=True)
        metrics = evaluate.run(
            trained.run_id, dataset=ds, model=trained.model, history=trained.state.history, nested=True
        ).metrics
        exported = export_onnx.run(
            trained.run_id,
            export_cfg,
            dataset=ds,
            model=trained.model,
            test_accuracy=metrics["test_accuracy"],
            nested=True,
            test_metrics=metrics,
        )
        links = {k: v for k, v in asdict(exported).items() if k in LINKS and v is not None}
        summary = {k: v for k, v in {**metrics, **asdict(exported)}.items() if k in SUMMARY}
        # test numbers linked to the exported model and the test split: the parent run lists both
        log_metrics({k: v for k, v in summary.items() if not k.startswith("test_")})
        log_metrics({k: v for k, v in summary.items() if k.startswith("test_")}, None, exported.model_id, test_set)
        set_tags(
            {
                "prep_run_id": prepared.run_id,
                "train_run_id": trained.run_id,
                **{k: str(v) for k, v in links.items()},
            }
        )
        set_tags(
            {
                "mlflow.note.content": (
                    f"{train_cfg.model} ({train_cfg.tag()}) on {ds.name} classes {ds.class_ids}: "
                    f"test accuracy {metrics['test_accuracy']:.4f}, train {metrics['train_accuracy']:.4f} "
                    f"(gap {metrics['overfit_gap']:.4f}), {metrics['train_seconds']:.1f} s training."
                )
            }
        )
    return MainResult(parent_id, trained.run_id, summary, exported)
