"""The click group, the ``entry_point`` wrapper and the options every command shares.

Commands import their step modules (and so torch/MLflow-heavy code) inside the function: the
CLI's start-up (``--help``, a rejected parameter) then costs only the parameter table.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys

import click

from pipelines.data import DataError
from pipelines.parsing import ConfigError

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
        from tracking.errors import describe_mlflow_error
        from tracking.runs import STARTED

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


class Command(click.Command):
    """A command whose table-typed parameters report a bad value as the project's one line.

    ``pipelines.params.TableType`` raises ``ConfigError`` rather than click's ``BadParameter``, so
    the value is rejected with ``error: <name> must be ...`` and exit 2, and under ``mlflow run``
    the run MLflow created ends FAILED with that line, as for errors found later.
    """

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except ConfigError as e:
            _fail(str(e), 2)


class Group(click.Group):
    command_class = Command


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
def cli():
    """Reproducible CNN experiments on MLflow. Tracking URI: $MLFLOW_TRACKING_URI (default sqlite:///mlflow.db)."""


experiment_option = click.option("--experiment", default="", help="Experiment name (ignored under `mlflow run`).")


def resume_option(step: str):
    return click.option(
        "--resume", "resume_run_id", default="", help=f"Run id of an interrupted {step} run to continue."
    )
