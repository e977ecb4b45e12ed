"""Command line: ``python -m pipelines <command>`` (also installed as ``pipeline``).

Each command is an MLproject entry point. Parameters arrive as strings and are checked by
``pipelines.config`` before a run is created; a bad one prints one line and exits 2.
"""

from __future__ import annotations

import functools
import os
import sys

import click

from pipelines.config import AUTO, ConfigError, data_config, export_config, train_config
from pipelines.data import DataError

USER_ERRORS = (ConfigError, DataError)


def _fail(message: str, code: int) -> None:
    """One line on stderr; under ``mlflow run`` also end the run MLflow created FAILED with it."""
    click.echo(f"error: {message}", err=True)
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if run_id:
        try:
            from tracking.runs import fail_run

            fail_run(run_id, message)
        except Exception:  # noqa: BLE001 - the server may be what failed; the exit code still says it
            pass
    sys.exit(code)


def entry_point(fn):
    """Configure tracking, then turn user errors into one line + exit 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from tracking import TrackingError, configure

        try:
            configure()
            return fn(*args, **kwargs)
        except (*USER_ERRORS, TrackingError) as e:
            _fail(str(e), 2)
        except KeyboardInterrupt as e:
            click.echo(f"interrupted: {e}" if str(e) else "interrupted", err=True)
            sys.exit(130)

    return wrapper


def data_options(fn):
    fn = click.option(
        "--classes",
        default="default",
        show_default=True,
        help="Original label ids to keep, e.g. 0,33,41 (default: the data set's).",
    )(fn)
    fn = click.option("--data-dir", default="", help="Folder with the official files (default: download to cache).")(fn)
    return click.option("--dataset", default="cifar100", show_default=True, help="cifar100 | digits | ...")(fn)


def train_options(fn):
    opts = [
        ("--model", "pooling_cnn", "Registered model name (see `models`)."),
        ("--pooling", "max", "stride | max | avg (models with a pooling option)."),
        ("--epochs", AUTO, "Epochs; auto = the model's recipe (pooling_cnn: 500)."),
        ("--batch-size", AUTO, "Batch size; auto = recipe (128)."),
        ("--lr", AUTO, "Learning rate; auto = recipe (5e-3)."),
        ("--momentum", AUTO, "SGD momentum; auto = recipe (0.9)."),
        ("--weight-decay", AUTO, "Weight decay; auto = recipe (0)."),
        ("--optimizer", AUTO, "sgd | adam; auto = recipe."),
        ("--lr-schedule", AUTO, "none | step | linear; auto = recipe."),
        ("--augment", AUTO, "true | false; auto = recipe."),
        ("--seed", "0", "Seed for init and shuffling."),
        ("--device", AUTO, "auto | cpu | cuda | cuda:N."),
        ("--precision", AUTO, "auto | fp32 | bf16 | fp16 (auto: bf16 only where native)."),
        ("--eval-every", "1", "Epochs between test evaluations (last epoch always)."),
        ("--checkpoint-every", "50", "Epochs between checkpoints."),
    ]
    for name, default, help_ in reversed(opts):
        fn = click.option(name, default=default, show_default=True, help=help_)(fn)
    return fn


def export_options(fn):
    fn = click.option("--parity-tol", default="1e-4", show_default=True, help="Max |onnxruntime - torch|.")(fn)
    return click.option(
        "--registered-model-name",
        default="cifar100-cnn",
        show_default=True,
        help="Registry name; 'none' = do not register.",
    )(fn)


experiment_option = click.option("--experiment", default="", help="Experiment name (ignored under `mlflow run`).")


def _train_cfg(kw: dict):
    keys = (
        "model",
        "pooling",
        "epochs",
        "batch_size",
        "lr",
        "momentum",
        "weight_decay",
        "optimizer",
        "lr_schedule",
        "augment",
        "seed",
        "device",
        "precision",
        "eval_every",
        "checkpoint_every",
    )
    return train_config(*(kw[k] for k in keys))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
def cli():
    """Reproducible CNN experiments on MLflow. Tracking URI: $MLFLOW_TRACKING_URI (default sqlite:///mlflow.db)."""


@cli.command()
@data_options
@experiment_option
@entry_point
def prep(dataset, data_dir, classes, experiment):
    """Load and verify the data set; log its fingerprint, counts and arrays."""
    from pipelines import prep as step

    ds, run_id = step.run(data_config(dataset, data_dir, classes), experiment=experiment or None)
    click.echo(f"prep run {run_id}: {ds.name} {len(ds.y_train)} train / {len(ds.y_test)} test, classes {ds.class_ids}")


@cli.command()
@data_options
@train_options
@experiment_option
@click.option("--resume", "resume_run_id", default="", help="Run id of an interrupted train run to continue.")
@entry_point
def train(dataset, data_dir, classes, experiment, resume_run_id, **kw):
    """Train a model; logs per-epoch metrics, checkpoints and the state_dict."""
    from pipelines import train as step

    if resume_run_id:
        data_cfg, cfg = step.configs_from_run(resume_run_id)
    else:
        data_cfg, cfg = data_config(dataset, data_dir, classes), _train_cfg(kw)
    result = step.run(data_cfg, cfg, experiment=experiment or None, resume_run_id=resume_run_id or None)
    last = result.state.history[-1]
    click.echo(
        f"train run {result.run_id}: {result.state.epoch} epochs, val_acc {last.get('val_acc', float('nan')):.4f}"
    )


@cli.command()
@click.option("--train-run-id", required=True, help="The train run whose model to evaluate.")
@experiment_option
@entry_point
def evaluate(train_run_id, experiment):
    """Classification reports, confusion matrix, learning curves and timings of a trained model."""
    from pipelines import evaluate as step

    metrics = step.run(train_run_id, experiment=experiment or None)
    click.echo(f"test_accuracy {metrics['test_accuracy']:.4f}  train_accuracy {metrics['train_accuracy']:.4f}")


@cli.command("export_onnx")
@click.option("--train-run-id", required=True, help="The train run whose model to export.")
@click.option("--test-accuracy", default="", help="Score for the champion rule (default: from --eval-run-id).")
@click.option("--eval-run-id", default="", help="Evaluate run whose test_accuracy is the score.")
@export_options
@experiment_option
@entry_point
def export_onnx_cmd(train_run_id, test_accuracy, eval_run_id, registered_model_name, parity_tol, experiment):
    """Export to ONNX, check it, compare with onnxruntime, register; alias champion if it is better."""
    from pipelines import export_onnx as step
    from pipelines.config import parse_float
    from tracking.runs import run_data

    score = parse_float("test_accuracy", test_accuracy, allow_auto=True)
    if score is None and eval_run_id:
        score = run_data(eval_run_id)[1].get("test_accuracy")
    result = step.run(
        train_run_id,
        export_config(registered_model_name, parity_tol),
        test_accuracy=score,
        experiment=experiment or None,
    )
    click.echo(" ".join(f"{k}={v}" for k, v in result.items()))


@cli.command()
@data_options
@train_options
@export_options
@experiment_option
@entry_point
def main(dataset, data_dir, classes, registered_model_name, parity_tol, experiment, **kw):
    """prep -> train -> evaluate -> export_onnx as child runs of one parent run."""
    from pipelines import main as step

    result = step.run(
        data_config(dataset, data_dir, classes),
        _train_cfg(kw),
        export_config(registered_model_name, parity_tol),
        experiment=experiment or None,
    )
    click.echo(
        f"run {result['run_id']}: test_accuracy {result['test_accuracy']:.4f}, train {result['train_seconds']:.1f} s"
        + (
            f", registered {result['registered_model']} v{result['version']} champion={result['champion']}"
            if "registered_model" in result
            else ""
        )
    )


@cli.command()
def models():
    """List the registered models: name, data set, parameters, description."""
    from models import count_params, create_model, list_models, model_info
    from pipelines.data import default_classes

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


@cli.command()
@click.option("--port", default=5000, show_default=True, type=int)
@click.option("--backend-store-uri", default="sqlite:///mlflow.db", show_default=True)
@click.option("--artifacts-destination", default="./mlartifacts", show_default=True)
def server(port, backend_store_uri, artifacts_destination):
    """Start a local MLflow tracking server + UI on 127.0.0.1 (Ctrl-C stops it)."""
    from tracking.server import start_server, stop_server

    proc, url = start_server(backend_store_uri, artifacts_destination, port=port)
    click.echo(f"MLflow server + UI at {url}  (export MLFLOW_TRACKING_URI={url}); Ctrl-C to stop")
    try:
        proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop_server(proc)


# --- demo (issue 7) ---
from pipelines.demo import demo_command  # noqa: E402

cli.add_command(demo_command(entry_point))


if __name__ == "__main__":
    cli()
