"""Operations around the pipeline: servers, resync, classify, init-store, the demo; and segmentation."""

from __future__ import annotations

from pathlib import Path

import click

from pipelines.cli.app import Command, _fail, cli, entry_point, experiment_option, resume_option
from pipelines.params import click_params, param
from pipelines.parsing import ConfigError
from pipelines.segmentation_config import config_from_run, segment_config


@cli.command("demo", cls=Command)
@click_params("demo")
@click.option("--serve/--no-serve", default=True, show_default=True, help="Serve the folder, or write it and exit.")
@entry_point
def demo(cnn_uri, fc_uri, out, port, serve):
    """Browser demo: both models side by side in onnxruntime-web; open an image, shift it, compare."""
    from pipelines.demo import build, make_server, url_of
    from tracking.errors import RunKilled

    port = param("port", "demo").parse(port)
    folder = build(cnn_uri, fc_uri, out)
    click.echo(f"demo written to {folder}")
    if not serve:
        return
    server = make_server(folder, port)
    click.echo(f"serving {folder} at {url_of(server)}  (127.0.0.1 only; Ctrl-C to stop)")
    try:
        server.serve_forever()
    except (KeyboardInterrupt, RunKilled):
        click.echo("stopped")
    finally:
        server.server_close()


@cli.command()
@click_params("segment")
@experiment_option
@resume_option("segment")
@entry_point
def segment(experiment, resume_run_id, **raw):
    """Segmentation: U-Net on generated digit masks or a folder of PNGs; IoU/Dice per class, figure, ONNX."""
    from pipelines import segment as step

    cfg = config_from_run(resume_run_id) if resume_run_id else segment_config(**raw)
    r = step.run(cfg, experiment=experiment or None, resume_run_id=resume_run_id or None)
    click.echo(
        f"segment run {r.run_id}: test mIoU {r.metrics['test_miou']:.4f} (foreground {r.metrics['test_miou_fg']:.4f}), "
        f"mDice {r.metrics['test_mdice']:.4f}, pixel acc {r.metrics['test_pixel_acc']:.4f}, "
        f"onnx diff {r.metrics['onnx_max_abs_diff']:.2g}"
        + (f", registered {r.registered_model} v{r.version}" if r.registered_model else "")
    )


@cli.command()
@click.option("--port", default=5000, show_default=True, type=int)
@click.option("--backend-store-uri", default="sqlite:///mlflow.db", show_default=True)
@click.option("--artifacts-destination", default="./mlartifacts", show_default=True)
def server(port, backend_store_uri, artifacts_destination):
    """Start a local MLflow tracking server + UI on 127.0.0.1 (Ctrl-C stops it)."""
    from tracking.errors import TrackingError
    from tracking.server import start_server
    from tracking.store import ensure_store

    try:
        ensure_store(backend_store_uri)  # created or migrated once, under the store's lock
    except TrackingError as e:
        _fail(str(e), 2)

    proc, url = start_server(backend_store_uri, artifacts_destination, port=port)
    _serve_until_stopped(proc, url)


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
    from tracking.postgres import PostgresError, ensure_database, pg_uri_from_env, redact, split_password
    from tracking.server import start_server

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
    where = f" on {redact(uri)}{' (database created)' if created else ''}, artifacts in {artifacts_destination}"
    _serve_until_stopped(proc, url, where)


def _serve_until_stopped(proc, url: str, where: str = "") -> None:
    """The banner (a link that opens the UI's model-training view), then wait for Ctrl-C and stop the server."""
    from tracking.runs import ui_url
    from tracking.server import stop_server

    click.echo(f"MLflow server + UI at {ui_url(base=url)}{where}  (export MLFLOW_TRACKING_URI={url}); Ctrl-C to stop")
    try:
        proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop_server(proc)


@cli.command()
@click_params("resync")
@entry_point
def resync(run_id, status):
    """Upload what a run kept locally while the tracking server was down (metrics, files, its end)."""
    from tracking.metrics import resync as resync_metrics
    from tracking.offline import load_pending, local_run_dir, replay_pending
    from tracking.queries import require_run, set_run_status

    status = param("status", "resync").parse(status)
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
@click_params("classify")
@click.option("--resize/--no-resize", default=True, show_default=True, help="Resize images to the model's input.")
@entry_point
def classify(model_uri, top_k, resize, images):
    """Top-k classes of IMAGES (PNG/JPEG/...) from a registered ONNX model, via onnxruntime (no run is created)."""
    from pipelines.classify import classify as predict
    from pipelines.classify import format_prediction

    k = param("top_k", "classify").parse(top_k)
    for pred in predict(model_uri, list(images), k, resize):
        if pred.resized:
            size = f"{pred.size[0]}x{pred.size[1]}"
            click.echo(f"note: {pred.path} is {size}, centre-cropped and area-averaged to the model's input", err=True)
        click.echo(format_prediction(pred))


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


@cli.command()
@click.option("--check", is_flag=True, help="Only say whether the MLproject matches the table (exit 1 if not).")
def mlproject(check):
    """Write the MLproject from the parameter table (pipelines/params.py)."""
    from pipelines.mlproject import render_mlproject

    path = Path(__file__).resolve().parents[2] / "MLproject"
    text = render_mlproject()
    if check:
        same = path.read_text() == text
        click.echo(f"{path}: {'matches the parameter table' if same else 'differs: run python -m pipelines mlproject'}")
        raise SystemExit(0 if same else 1)
    path.write_text(text)
    click.echo(f"wrote {path}")
