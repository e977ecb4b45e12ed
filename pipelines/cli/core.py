"""The classification pipeline's steps: prep, train, evaluate, export_onnx, main; and the model list."""

from __future__ import annotations

import click

from models import count_params, create_model, list_models, model_info
from pipelines.cli.app import cli, entry_point, experiment_option, resume_option
from pipelines.config import data_config_from, export_config, train_config_from
from pipelines.data import default_classes
from pipelines.params import click_params, param
from pipelines.parsing import ConfigError


@cli.command()
@click_params("prep")
@experiment_option
@entry_point
def prep(experiment, **raw):
    """Load and verify the data set; log its fingerprint, counts and arrays."""
    from pipelines import prep as step

    r = step.run(data_config_from(raw), experiment=experiment or None)
    ds, run_id = r.dataset, r.run_id
    click.echo(f"prep run {run_id}: {ds.name} {len(ds.y_train)} train / {len(ds.y_test)} test, classes {ds.class_ids}")


@cli.command()
@click_params("train")
@experiment_option
@resume_option("train")
@entry_point
def train(experiment, resume_run_id, **raw):
    """Train a model; logs per-epoch metrics, checkpoints and the state_dict."""
    from pipelines import train as step

    if resume_run_id:
        from tracking.queries import require_run

        status = require_run(resume_run_id, step="train").info.status
        if status == "FINISHED":
            raise ConfigError(f"run {resume_run_id} is FINISHED: nothing to resume (start a new run)")
        data_cfg, cfg = step.configs_from_run(resume_run_id)
    else:
        data_cfg, cfg = data_config_from(raw), train_config_from(raw)
    result = step.run(data_cfg, cfg, experiment=experiment or None, resume_run_id=resume_run_id or None)
    last = result.state.history[-1]
    click.echo(
        f"train run {result.run_id}: {result.state.epoch} epochs, test_acc {last.get('test_acc', float('nan')):.4f}"
        + (f", val_acc {last['val_acc']:.4f}" if "val_acc" in last else "")
    )


@cli.command()
@click_params("evaluate")
@experiment_option
@entry_point
def evaluate(train_run_id, experiment):
    """Classification reports, confusion matrix, learning curves and timings of a trained model."""
    from pipelines import evaluate as step
    from tracking.queries import require_run

    require_run(train_run_id, step=("train", "trial"))  # a wrong id: one line, before any run exists
    metrics = step.run(train_run_id, experiment=experiment or None).metrics
    click.echo(f"test_accuracy {metrics['test_accuracy']:.4f}  train_accuracy {metrics['train_accuracy']:.4f}")


@cli.command("export_onnx")
@click_params("export_onnx")
@experiment_option
@entry_point
def export_onnx_cmd(train_run_id, test_accuracy, eval_run_id, registered_model_name, parity_tol, experiment):
    """Export to ONNX, check it, compare with onnxruntime, register; alias champion if it is better."""
    from pipelines import export_onnx as step
    from tracking.queries import require_run, run_data

    require_run(train_run_id, step=("train", "trial"))  # a wrong id: one line, before any run exists
    if eval_run_id:
        require_run(eval_run_id, step="evaluate")
    score = param("test_accuracy", "export_onnx").parse(test_accuracy)
    if score is None and eval_run_id:
        score = run_data(eval_run_id)[1].get("test_accuracy")
    result = step.run(
        train_run_id,
        export_config(registered_model_name, parity_tol),
        test_accuracy=score,
        experiment=experiment or None,
    )
    click.echo(" ".join(f"{k}={v}" for k, v in vars(result).items() if v is not None))


@cli.command()
@click_params("main")
@experiment_option
@entry_point
def main(registered_model_name, parity_tol, experiment, **raw):
    """prep -> train -> evaluate -> export_onnx as child runs of one parent run."""
    from pipelines import main as step

    result = step.run(
        data_config_from(raw),
        train_config_from(raw),
        export_config(registered_model_name, parity_tol),
        experiment=experiment or None,
    )
    click.echo(
        f"run {result.run_id}: test_accuracy {result.summary['test_accuracy']:.4f}, "
        f"train {result.summary['train_seconds']:.1f} s"
        + (
            f", registered {result.export.registered_model} v{result.export.version} champion={result.export.champion}"
            if result.export.registered_model
            else ""
        )
    )


@cli.command()
def models():
    """List the registered models: name, data set, parameters, description."""
    rows = []
    for name in list_models():
        info = model_info(name)
        try:
            n = count_params(create_model(name, num_classes=len(default_classes(info.dataset))))
        except Exception:  # noqa: BLE001 - a listing must not die on one model
            n = -1
        rows.append((name, info.dataset, f"{n:,}", info.description))
    widths = [max(len(r[i]) for r in rows + [("model", "dataset", "params", "")]) for i in range(3)]
    click.echo(f"{'model':<{widths[0]}}  {'dataset':<{widths[1]}}  {'params':>{widths[2]}}  description")
    for r in rows:
        click.echo(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}")
