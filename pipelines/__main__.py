"""Command line: ``python -m pipelines <command>`` (also installed as ``pipeline``).

Each command is an MLproject entry point. Parameters arrive as strings and are checked by
``pipelines.config`` before a run is created; a bad one prints one line and exits 2.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys

import click

from pipelines.config import AUTO, ConfigError, data_config, export_config, train_config_from
from pipelines.data import DataError

USER_ERRORS = (ConfigError, DataError)


def _fail(message: str, code: int) -> None:
    """One line on stderr; under ``mlflow run`` also end the run MLflow created FAILED with it."""
    message = " ".join(str(message).split())  # some library messages span lines: the user sees one
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
        from mlflow.exceptions import MlflowException

        from tracking import RunKilled, TrackingError, configure
        from tracking.runs import STARTED, describe_mlflow_error

        STARTED.clear()  # only runs this command starts are linked
        try:
            configure()
            result = fn(*args, **kwargs)
            _print_link()
            return result
        except (*USER_ERRORS, TrackingError) as e:
            _fail(str(e), 2)
        except MlflowException as e:  # a missing run/model, credentials, a dead server: one line; else traceback
            message = describe_mlflow_error(e)
            if message is None:
                raise
            _fail(message, 2)
        except KeyboardInterrupt as e:
            click.echo(f"interrupted: {e}" if str(e) else "interrupted", err=True)
            sys.exit(130)
        except RunKilled as e:  # SIGTERM outside the training loop (which stops at an epoch end instead)
            click.echo(f"killed: {e}", err=True)
            sys.exit(143)

    return wrapper


def _print_link() -> None:
    """The MLflow UI page (training view) of the first run this command started, on stderr."""
    from tracking.runs import STARTED, run_url

    if STARTED:  # a link is a convenience: failing to make one leaves the command's result standing
        with contextlib.suppress(Exception):
            click.echo(f"view: {run_url(STARTED[0])}", err=True)


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
        ("--val-fraction", "0.0", "Share of train held out as the validation split (val_* metrics), 0..0.5."),
        ("--system-metrics", "true", "true | false: MLflow samples CPU/memory (GPU) while training."),
    ]
    for name, default, help_ in reversed(opts):
        fn = click.option(name, default=default, show_default=True, help=help_)(fn)
    return fn


def export_options(fn):
    fn = click.option("--parity-tol", default="1e-4", show_default=True, help="Max |onnxruntime - torch|.")(fn)
    return click.option(
        "--registered-model-name",
        default="auto",
        show_default=True,
        help="Registry name; auto = <dataset>-<model> (+ -c<ids> for non-default classes); none = do not register.",
    )(fn)


experiment_option = click.option("--experiment", default="", help="Experiment name (ignored under `mlflow run`).")
device_option = click.option("--device", default=AUTO, show_default=True, help="auto | cpu | cuda | cuda:N.")
precision_option = click.option("--precision", default=AUTO, show_default=True, help="auto | fp32 | bf16 | fp16.")


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
        from tracking.runs import require_run

        status = require_run(resume_run_id, step="train").info.status
        if status == "FINISHED":
            raise ConfigError(f"run {resume_run_id} is FINISHED: nothing to resume (start a new run)")
        data_cfg, cfg = step.configs_from_run(resume_run_id)
    else:
        data_cfg, cfg = data_config(dataset, data_dir, classes), train_config_from(kw)
    result = step.run(data_cfg, cfg, experiment=experiment or None, resume_run_id=resume_run_id or None)
    last = result.state.history[-1]
    click.echo(
        f"train run {result.run_id}: {result.state.epoch} epochs, test_acc {last.get('test_acc', float('nan')):.4f}"
        + (f", val_acc {last['val_acc']:.4f}" if "val_acc" in last else "")
    )


@cli.command()
@click.option("--train-run-id", required=True, help="The train run whose model to evaluate.")
@experiment_option
@entry_point
def evaluate(train_run_id, experiment):
    """Classification reports, confusion matrix, learning curves and timings of a trained model."""
    from pipelines import evaluate as step
    from tracking.runs import require_run

    require_run(train_run_id, step=("train", "trial"))  # a wrong id: one line, before any run exists
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
    from tracking.runs import require_run, run_data

    require_run(train_run_id, step=("train", "trial"))  # a wrong id: one line, before any run exists
    if eval_run_id:
        require_run(eval_run_id, step="evaluate")
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
        train_config_from(kw),
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
    from tracking.runs import TrackingError
    from tracking.server import start_server, stop_server
    from tracking.store import ensure_store

    try:
        ensure_store(backend_store_uri)  # created or migrated once, under the store's lock
    except TrackingError as e:
        _fail(str(e), 2)

    proc, url = start_server(backend_store_uri, artifacts_destination, port=port)
    click.echo(
        f"MLflow server + UI at {url}/#/experiments?workflowType=machine_learning  "
        f"(export MLFLOW_TRACKING_URI={url}); Ctrl-C to stop"
    )
    try:
        proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop_server(proc)


# --- demo (issue 7) ---
from pipelines.demo import demo_command  # noqa: E402

cli.add_command(demo_command(entry_point))


# --- segment (issue 9) ---
def _segment_options(fn):
    from pipelines.segment import OPTIONS

    for name, default, help_ in reversed(OPTIONS):
        fn = click.option("--" + name.replace("_", "-"), name, default=default, show_default=True, help=help_)(fn)
    return fn


@cli.command()
@_segment_options
@experiment_option
@click.option("--resume", "resume_run_id", default="", help="Run id of an interrupted segment run to continue.")
@entry_point
def segment(experiment, resume_run_id, **kw):
    """Segmentation: U-Net on generated digit masks or a folder of PNGs; IoU/Dice per class, figure, ONNX."""
    from pipelines import segment as step

    cfg = step.config_from_run(resume_run_id) if resume_run_id else step.segment_config(**kw)
    r = step.run(cfg, experiment=experiment or None, resume_run_id=resume_run_id or None)
    click.echo(
        f"segment run {r['run_id']}: test mIoU {r['test_miou']:.4f} (foreground {r['test_miou_fg']:.4f}), "
        f"mDice {r['test_mdice']:.4f}, pixel acc {r['test_pixel_acc']:.4f}, onnx diff {r['onnx_max_abs_diff']:.2g}"
        + (f", registered {r['registered_model']} v{r['version']}" if "registered_model" in r else "")
    )


# --- end segment (issue 9) ---


# --- studies (issue 5) ---
def _executor_options(fn):
    fn = click.option(
        "--max-concurrent",
        default=AUTO,
        show_default=True,
        help="Ray trials at once; auto = one per CPU (never more than the CPUs).",
    )(fn)
    fn = click.option(
        "--ray-address", default="", help="Existing Ray cluster (e.g. ray://head:10001); default: local."
    )(fn)
    return click.option(
        "--executor", default="local", show_default=True, help="local (serial, in-process) | ray (Ray Tune trials)."
    )(fn)


def _refs(raw: tuple[str, ...]) -> list[str]:
    return [p for item in raw for p in item.replace(",", " ").split() if p]


@cli.command()
@click.argument("name")
@click.option("--configs", default="", help="Instead of the table's: 'model[:key=value,...];...' (name is then free).")
@click.option("--seeds", default="0,1,2", show_default=True, help="One child run per configuration and seed.")
@click.option("--scale", default="full", show_default=True, help="full (the seed's epochs) | quick (2 epochs).")
@click.option("--epochs", default=AUTO, show_default=True, help="Epochs of every child; auto = the study's.")
@click.option("--dataset", default="", help="Default: the study's data set; digits runs any study offline.")
@click.option("--data-dir", default="", help="Folder with the official files (default: download to cache).")
@click.option("--classes", default="default", show_default=True, help="Original label ids to keep.")
@device_option
@precision_option
@click.option(
    "--registered-model-name",
    default=AUTO,
    show_default=True,
    help="Registry name for champion/challenger; auto = <dataset>-<study> (+ -c<ids>); none = do not register.",
)
@_executor_options
@experiment_option
@entry_point
def study(name, configs, seeds, scale, epochs, dataset, data_dir, classes, device, precision, **kw):
    """A seed's comparison: a child run per (configuration, seed), table + figures, champion registered.

    NAME: pooling, mnist_arch, cifar10_arch, kernel, depth, custom, residual, keras (or any name with --configs).
    Re-running skips children that already FINISHED with the same params.
    """
    from pipelines import study as step
    from pipelines.config import parse_int

    plan = step.plan_study(name, configs, seeds, scale, epochs, dataset, data_dir, classes, device, precision)
    r = step.run_study(
        plan,
        experiment=kw["experiment"] or None,
        registered_model_name=kw["registered_model_name"],
        executor=kw["executor"],
        ray_address=kw["ray_address"] or None,
        max_concurrent=parse_int("max_concurrent", kw["max_concurrent"], allow_auto=True),
    )
    click.echo(r["text"])
    reused = sum(t["reused"] for t in r["trials"])
    click.echo(
        f"study run {r['run_id']}: champion {r['champion']}"
        + (f", challenger {r['challenger']}" if r["challenger"] else "")
        + (f"; registered {', '.join(f'{k}={v}' for k, v in r['registered'].items())}" if r["registered"] else "")
        + f"; {len(r['trials'])} trials ({reused} reused), {r['seconds']:.1f} s"
    )


@cli.command()
@click.argument("refs", nargs=-1)
@click.option("--log/--no-log", default=True, show_default=True, help="Also record table and figures as a run.")
@experiment_option
@entry_point
def compare(refs, log, experiment):
    """Compare finished runs: REFS are run ids, study/sweep parent ids or experiment names."""
    from pipelines import compare as step

    r = step.run(_refs(refs), experiment=experiment or None, log=log)
    click.echo(r["text"])
    if r["run_id"]:
        click.echo(f"compare run {r['run_id']}: {len(r['run_ids'])} runs")


@cli.command()
@data_options
@click.option("--model", default="pooling_cnn", show_default=True, help="Registered model name (see `models`).")
@click.option("--pooling", default="max", show_default=True, help="stride | max | avg (models with a pooling option).")
@click.option("--epochs", default=AUTO, show_default=True, help="Epochs per trial (ASHA's max_t); auto = recipe.")
@click.option("--optimizer", default=AUTO, show_default=True, help="sgd | adam; auto = recipe.")
@click.option("--lr", default="1e-4,1e-1", show_default=True, help="Log-uniform range 'low,high' or one value.")
@click.option("--batch-sizes", default="32,64,128", show_default=True, help="Choices of batch size.")
@click.option("--weight-decay", default="1e-6,1e-2", show_default=True, help="Log-uniform range, or 0.")
@click.option("--num-samples", default="8", show_default=True, help="Trials.")
@click.option("--seed", default="0", show_default=True, help="Sampler seed and training seed.")
@click.option("--grace-period", default="1", show_default=True, help="ASHA: epochs before a trial can be stopped.")
@click.option("--reduction-factor", default="2", show_default=True, help="ASHA: keep 1/rf of trials per rung.")
@click.option("--val-fraction", default="0.1", show_default=True, help="Holdout of train the search optimises.")
@device_option
@precision_option
@_executor_options
@experiment_option
@entry_point
def sweep(executor, ray_address, max_concurrent, experiment, **kw):
    """Hyper-parameter sweep (lr, batch size, weight decay): Optuna TPE + ASHA, trials on Ray or in-process."""
    from pipelines import sweep as step
    from pipelines.config import parse_int

    plan = step.plan_sweep(**kw)
    r = step.run_sweep(
        plan,
        experiment=experiment or None,
        executor=executor,
        ray_address=ray_address or None,
        max_concurrent=parse_int("max_concurrent", max_concurrent, allow_auto=True),
    )
    click.echo(r["text"])
    best = r["best"]
    click.echo(
        f"sweep run {r['run_id']}: "
        + (
            f"best {best['config']} val_acc {best['val_acc']:.4f} test_accuracy {best['test_accuracy']:.4f}"
            if best
            else "no trial completed"
        )
        + f", {r['seconds']:.1f} s"
    )


# --- end studies (issue 5) ---


# --- reliability (issue 8) ---
@cli.command()
@click.argument("run_id")
@click.option(
    "--status",
    default="",
    help="End a run left RUNNING with no local record of its end (a killed process): FINISHED | FAILED | KILLED.",
)
@entry_point
def resync(run_id, status):
    """Upload what a run kept locally while the tracking server was down (metrics, files, its end)."""
    from pipelines.config import parse_choice
    from tracking.metrics import resync as resync_metrics
    from tracking.runs import load_pending, local_run_dir, replay_pending, require_run, set_run_status

    status = parse_choice("status", status, ("FINISHED", "FAILED", "KILLED"), allow_auto=True) if status else None
    run = require_run(run_id)
    folder = local_run_dir(run_id)
    metrics_file = folder / "metrics.jsonl"
    if not metrics_file.is_file() and load_pending(run_id) is None and not status:
        raise ConfigError(f"nothing to resync for run {run_id}: no {metrics_file} and no pending.json")
    sent = resync_metrics(run_id, metrics_file) if metrics_file.is_file() else 0
    done = replay_pending(run_id, end=True)
    final = done["status"] or run.info.status
    if status and not done["status"] and run.info.status == "RUNNING":
        set_run_status(run_id, status, f"ended by resync as {status}" if status != "FINISHED" else None)
        final = status
    click.echo(
        f"resync run {run_id}: {sent} metric values from {metrics_file.name}, {done['metrics']} final values, "
        f"{done['artifacts']} files, status {final}"
    )


@cli.command()
@click.option(
    "--model-uri", required=True, help="ONNX classifier: models:/cifar100-pooling_cnn@champion or a local .onnx file."
)
@click.option("--top-k", default="3", show_default=True, help="Classes to print per image.")
@click.option("--resize/--no-resize", default=True, show_default=True, help="Resize images to the model's input.")
@click.argument("images", nargs=-1)
@entry_point
def classify(model_uri, top_k, resize, images):
    """Top-k classes of IMAGES (PNG/JPEG/...) from a registered ONNX model, via onnxruntime (no run is created)."""
    from pipelines.classify import classify as predict
    from pipelines.classify import format_prediction
    from pipelines.config import parse_int

    k = parse_int("top_k", top_k)
    for pred in predict(model_uri, list(images), k, resize):
        if pred.resized:
            size = f"{pred.size[0]}x{pred.size[1]}"
            click.echo(f"note: {pred.path} is {size}, centre-cropped and area-averaged to the model's input", err=True)
        click.echo(format_prediction(pred))


# --- end reliability (issue 8) ---


# --- postgres (issue 10) ---
@cli.command("server-postgres", context_settings={"ignore_unknown_options": True})
@click.option("--port", default=5000, show_default=True, type=int)
@click.option("--host", default="127.0.0.1", show_default=True, help="0.0.0.0 serves the team (use --app-name).")
@click.option(
    "--backend-store-uri",
    default="",
    help="postgresql+psycopg://USER[:PASS]@HOST:PORT/DB; default $PIPELINE_PG_URI, else from $PGHOST (127.0.0.1), "
    "$PGPORT (5432), $PGUSER (mlflow), $PGPASSWORD, $PGDATABASE (mlflow).",
)
@click.option("--artifacts-destination", default="./mlartifacts", show_default=True, help="Folder or s3://... URI.")
@click.option("--app-name", default="", help="basic-auth: users and passwords (MLFLOW_TRACKING_USERNAME/PASSWORD).")
@click.option("--log-file", default="", help="Server output (default: this terminal).")
@click.argument("mlflow_args", nargs=-1, type=click.UNPROCESSED)
def server_postgres(port, host, backend_store_uri, artifacts_destination, app_name, log_file, mlflow_args):
    """Tracking server + UI on a PostgreSQL backend with proxied artifacts; creates the database if missing.

    Arguments after `--` go to `mlflow server` unchanged (e.g. -- --allowed-hosts mlflow.lab:5000).
    """
    from pathlib import Path

    from tracking.postgres import PostgresError, ensure_database, pg_uri_from_env, redact, split_password
    from tracking.server import start_server, stop_server

    uri = backend_store_uri or pg_uri_from_env()
    try:
        created = ensure_database(uri)
        bare_uri, password = split_password(uri)  # the password travels as PGPASSWORD, not on a command line
    except PostgresError as e:
        _fail(str(e), 2)
    extra = (*(("--app-name", app_name) if app_name else ()), *mlflow_args)
    log = Path(log_file) if log_file else (Path("/dev/stderr") if Path("/dev/stderr").exists() else None)
    env = {"PGPASSWORD": password} if password else {}
    try:
        proc, url = start_server(bare_uri, artifacts_destination, host, port, extra, env, log, timeout_s=180)
    except RuntimeError as e:
        _fail(str(e), 1)
    click.echo(
        f"MLflow server + UI at {url}/#/experiments?workflowType=machine_learning on {redact(uri)}"
        f"{' (database created)' if created else ''}, artifacts in "
        f"{artifacts_destination}  (export MLFLOW_TRACKING_URI={url}); Ctrl-C to stop"
    )
    try:
        proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop_server(proc)


# --- end postgres (issue 10) ---


# --- analysis (issue 6) ---
@cli.command()
@click.option("--model", "model_ref", required=True, help="Train run id or models:/<name>@<alias>.")
@click.option("--mode", default="seed", show_default=True, help="seed: θ+α(d−θ) | li: θ+αd1+βd2 (Li et al.).")
@click.option("--seed1", default="0", show_default=True, help="Seed of the first direction.")
@click.option("--seed2", default="1011", show_default=True, help="Seed of the second direction.")
@click.option("--step1d", default="0.005", show_default=True, help="Step of the 1-D curve.")
@click.option("--step2d", default="0.05", show_default=True, help="Step of the 2-D grid (0.05: 61x61).")
@click.option("--limit", default="1.5", show_default=True, help="Axes run over [-limit, limit].")
@click.option("--max-points", default="none", show_default=True, help="Cap on curve points / grid points.")
@device_option
@experiment_option
@entry_point
def landscape(model_ref, mode, seed1, seed2, step1d, step2d, limit, max_points, device, experiment):
    """Loss landscape (1-D curve, 2-D contour, 3-D surface) of a trained model on its test split."""
    from pipelines.analysis import runs
    from pipelines.config import parse_choice, parse_device, parse_float, parse_int

    cap = None if str(max_points).strip().lower() in ("", "none", "0") else parse_int("max_points", max_points, 3)
    rid, m = runs.landscape(
        model_ref,
        parse_choice("mode", mode, ("seed", "li")),
        parse_int("seed1", seed1, 0),
        parse_int("seed2", seed2, 0),
        parse_float("step1d", step1d),
        parse_float("step2d", step2d),
        parse_float("limit", limit),
        cap,
        parse_device(device),
        experiment or None,
    )
    click.echo(
        f"landscape run {rid}: loss_center {m['loss_center']:.4f}, sharpness {m.get('sharpness', float('nan')):.4f}, "
        f"{m['grid_points']} grid points in {m['grid_seconds']:.1f} s ({m['points_per_second']:.1f}/s)"
    )


@cli.command()
@data_options
@train_options
@click.option("--source", default="", help="Train run id / models:/ URI whose configuration to repeat.")
@experiment_option
@entry_point
def gradients(dataset, data_dir, classes, source, experiment, **kw):
    """Train with per-layer gradient statistics per epoch (gradient flow); flags vanishing/exploding layers."""
    from pipelines.analysis import runs
    from pipelines.config import parse_int
    from pipelines.train import configs_from_run

    if source:
        source = runs.resolve_train_run(source)
        data_cfg, cfg = configs_from_run(source)
        if str(kw["epochs"]).strip().lower() != AUTO:
            cfg.epochs = parse_int("epochs", kw["epochs"])
    else:
        data_cfg, cfg = data_config(dataset, data_dir, classes), train_config_from(kw)
    rid, flags = runs.gradients(data_cfg, cfg, source or None, experiment or None)
    click.echo(f"gradients run {rid}: " + "; ".join(f"{k} {','.join(v) or 'none'}" for k, v in flags.items()))


@cli.command()
@click.option("--model", "model_ref", required=True, help="Train run id or models:/<name>@<alias> (a CNN).")
@click.option("--n-images", default="4", show_default=True, help="Test images for the activations.")
@click.option("--max-maps", default="32", show_default=True, help="Channels shown per feature-map grid.")
@experiment_option
@entry_point
def features(model_ref, n_images, max_maps, experiment):
    """First-layer filters and activations, and the feature maps after every conv layer, as image grids."""
    from pipelines.analysis import runs
    from pipelines.config import parse_int

    rid, m = runs.features(
        model_ref, parse_int("n_images", n_images), parse_int("max_maps", max_maps), experiment or None
    )
    click.echo(f"features run {rid}: {int(m['conv_layers'])} conv layers")


@cli.command()
@click.option("--fc-model", "fc_ref", required=True, help="FC model: train run id or models:/<name>@<alias>.")
@click.option("--cnn-model", "cnn_ref", required=True, help="CNN trained on the same data: run id or models:/ URI.")
@click.option("--max-shift", default="8", show_default=True, help="Largest shift in pixels (zero fill).")
@experiment_option
@entry_point
def invariance(fc_ref, cnn_ref, max_shift, experiment):
    """Test accuracy and prediction agreement of an FC model and a CNN under horizontal/vertical shifts."""
    from pipelines.analysis import runs
    from pipelines.config import parse_int

    rid, df = runs.invariance(fc_ref, cnn_ref, parse_int("max_shift", max_shift, 0), experiment or None)
    last = df[df["shift"] == df["shift"].max()]
    click.echo(
        f"invariance run {rid}: at the largest shift "
        + ", ".join(f"{r.model} {r.axis} acc {r.accuracy:.3f} agree {r.agreement:.3f}" for r in last.itertuples())
    )


# --- end analysis (issue 6) ---


# --- reproduce (issue 12) ---


@cli.command()
@click.option("--only", default="all", show_default=True, help="Experiments of claims.yaml, e.g. mnist_arch,pooling.")
@click.option("--scale", default="quick", show_default=True, help="full (the seeds' epochs) | quick (labelled so).")
@click.option("--seeds", default=AUTO, show_default=True, help="auto = 0,1,2 at full scale, 0 at quick scale.")
@click.option("--data-dir", default="", help="Folder with cifar-100-python/, cifar-10-batches-py/, mnist/.")
@click.option("--stand-in", default="digits", show_default=True, help="digits | none: when a data set is missing.")
@click.option("--out", default="", help="Report folder (default: reports/reproduce-<scale>).")
@device_option
@precision_option
@experiment_option
@entry_point
def reproduce(only, scale, seeds, data_dir, stand_in, out, device, precision, experiment):
    """Re-run the seed experiments and write a report: each seed claim beside our value, with a verdict.

    Parameter counts are checked without training; finished trials with the same params are reused.
    """
    from pipelines.reproduce import run as step

    r = step.run(only, scale, seeds, data_dir, stand_in, out, experiment or None, device, precision)
    click.echo(f"reproduce run {r['run_id']}: " + ", ".join(f"{k} {v}" for k, v in r["counts"].items()))
    click.echo(f"report: {r['out_dir'] / 'report.html'} and report.md")


# --- end reproduce (issue 12) ---


@cli.command("init-store")
@entry_point
def init_store():
    """Create or migrate the sqlite tracking store once, under a file lock; repair one left half-migrated.

    `make setup` and `make run` call it: `mlflow run` opens the store before any of our code runs,
    and concurrent first uses of a fresh store break it. Other tracking URIs: only checked.
    """
    from tracking.runs import tracking_uri
    from tracking.store import ensure_store

    uri = tracking_uri()
    click.echo(f"tracking store {uri}: {ensure_store(uri)}")


if __name__ == "__main__":
    cli()
