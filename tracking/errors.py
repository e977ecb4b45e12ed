"""Errors a user sees as one line: the tracking server cannot be used, a run was killed, MLflow's own errors."""

from __future__ import annotations

import mlflow
from mlflow.exceptions import MlflowException

AUTH_ERRORS = ("UNAUTHENTICATED", "PERMISSION_DENIED")


class TrackingError(RuntimeError):
    """The tracking server cannot be used (user-facing, one line)."""


class RunKilled(BaseException):
    """Raised in the main thread on SIGTERM so the run can end KILLED after a checkpoint."""


def describe_mlflow_error(exc: BaseException) -> str | None:
    """One line for MLflow errors a user causes or can fix (missing run, credentials, dead server); else None."""
    if not isinstance(exc, MlflowException):
        return None
    uri = mlflow.get_tracking_uri()
    text = " ".join(str(exc.message).split())
    if exc.error_code in AUTH_ERRORS:
        return (
            f"tracking server {uri} refused the request ({exc.error_code}): "
            "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD for a user allowed to use it"
        )
    if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
        return text[:300]
    if any(s in text for s in ("Max retries exceeded", "Failed to establish", "timed out", "Connection refused")):
        return f"tracking server {uri} is unreachable; start it or fix MLFLOW_TRACKING_URI"
    return None


def one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:500]


def error_tag(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return f"interrupted: {exc}" if str(exc) else "interrupted"
    return one_line(exc)
