"""Artifacts of the active run: JSON, text, tables, figures, files, data-set inputs."""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tracking.errors import TrackingError


def log_json(obj, path: str) -> None:
    if _deferred_text(lambda: json.dumps(obj, indent=2), path):
        return
    mlflow.log_dict(obj, path)


def log_text(text: str, path: str) -> None:
    if _deferred_text(lambda: text, path):
        return
    mlflow.log_text(text, path)


def log_table(df: pd.DataFrame, path: str) -> None:
    """As an MLflow table (shown in the UI's artifact view and the evaluation compare view) and CSV."""
    mlflow.log_table(df, path if path.endswith(".json") else path + ".json")
    mlflow.log_text(df.to_csv(index=False), Path(path).with_suffix(".csv").as_posix())


def log_figure(fig, path: str) -> None:
    import matplotlib.pyplot as plt

    mlflow.log_figure(fig, path)
    plt.close(fig)


def log_file(local: str | Path, artifact_dir: str | None = None, run_id: str | None = None) -> None:
    """Upload a file; while the tracking server is known to be down, keep it for ``resync`` instead."""
    from tracking.offline import defer_artifact, offline

    rid = run_id or (mlflow.active_run().info.run_id if mlflow.active_run() else None)
    if offline() and rid:
        defer_artifact(rid, local, artifact_dir)
        return
    if run_id:
        MlflowClient().log_artifact(run_id, str(local), artifact_dir)
    else:
        mlflow.log_artifact(str(local), artifact_dir)


def dataset_input(name: str, x: np.ndarray, y: np.ndarray, source: str, digest: str):
    """An ``mlflow.data`` data set of arrays (for ``log_input`` and for metrics linked to a data set)."""
    with warnings.catch_warnings():
        # a local path matches two equivalent source types; MLflow warns and picks one, which is fine
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        return mlflow.data.from_numpy(x, targets=y, source=source, name=name, digest=digest[:32])


def log_dataset_input(name: str, x: np.ndarray, y: np.ndarray, source: str, digest: str, context: str):
    """Record the data set as a run input (shown in the UI's Dataset column); returns it."""
    ds = dataset_input(name, x, y, source, digest)
    try:
        mlflow.log_input(ds, context=context)
    except MlflowException as e:
        # Runs started together race to create the same data set row of their experiment (the server's
        # select-then-insert): the loser's insert fails on the unique key, and a second call finds the row.
        if "unique" not in str(e).lower():
            raise
        mlflow.log_input(ds, context=context)
    return ds


def log_data_inputs(ds) -> object:
    """A classification data set's train and test splits as inputs of the active run; returns the test one.

    ``ds`` is a ``pipelines.data.Dataset`` (name, arrays, source, fingerprint()). The test split is
    what evaluation metrics are linked to (``log_metrics(..., dataset=...)``).
    """
    digest = ds.fingerprint()
    log_dataset_input(f"{ds.name}-train", ds.x_train, ds.y_train, ds.source, digest, "training")
    return log_dataset_input(f"{ds.name}-test", ds.x_test, ds.y_test, ds.source, digest, "evaluation")


def download(run_id: str, artifact_path: str, dst: str | Path | None = None) -> Path:
    """Download one artifact (file or folder) of a run into ``dst`` (a fresh temp dir by default).

    Every name is checked first: nothing is written outside ``dst`` (see ``safe_download``).
    """
    check_artifact_name(artifact_path)
    return safe_download(f"runs:/{run_id}/{artifact_path}", dst or tempfile.mkdtemp(prefix="artifact-"))


def _deferred_text(make_text, path: str) -> bool:
    """While the server is known to be down, keep a text artifact of the active run for ``resync``."""
    from tracking.offline import defer_text, offline

    run = mlflow.active_run()
    if not (offline() and run):
        return False
    defer_text(run.info.run_id, make_text(), path)
    return True


class UnsafeArtifactError(TrackingError):
    """An artifact name that would land outside the download folder (absolute, ``..``, drive, NUL)."""


def check_artifact_name(name: str) -> str:
    """A relative ``/``-separated artifact path that cannot leave its folder; else UnsafeArtifactError."""
    from pathlib import PurePosixPath, PureWindowsPath

    bad = (
        not name
        or "\x00" in name
        or "\\" in name
        or name.startswith("/")
        or PureWindowsPath(name).drive
        or ".." in PurePosixPath(name).parts
    )
    if bad:
        raise UnsafeArtifactError(f"refusing artifact name {name!r}: it would be written outside the target folder")
    return name


def safe_join(root: str | Path, name: str) -> Path:
    """``root / name`` for a name that comes from a server, guaranteed (after resolving links) inside ``root``."""
    check_artifact_name(name)
    root = Path(root).resolve()
    path = (root / name).resolve()
    if path != root and root not in path.parents:
        raise UnsafeArtifactError(f"refusing artifact name {name!r}: it resolves outside {root}")
    return path


def list_artifact_names(artifact_uri: str) -> list[str]:
    """Every file and folder name under ``artifact_uri`` (recursive), relative to it, as the server gives them."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    repo = get_artifact_repository(artifact_uri)
    names: list[str] = []
    todo: list[str | None] = [None]
    while todo:
        for info in repo.list_artifacts(todo.pop()):
            check_artifact_name(info.path)  # before recursing: a hostile listing never steers the walk
            names.append(info.path)
            if info.is_dir:
                todo.append(info.path)
    return names


def safe_download(artifact_uri: str, dst: str | Path) -> Path:
    """``mlflow.artifacts.download_artifacts`` that writes only inside ``dst``.

    The listing is checked before anything is written (no absolute names, no ``..``), and after
    the download every file, links resolved, must lie inside ``dst``; else UnsafeArtifactError.
    """
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    list_artifact_names(artifact_uri)
    out = Path(mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=str(dst)))
    root = dst.resolve()
    for path in [out, *(out.rglob("*") if out.is_dir() else [])]:
        real = path.resolve()
        if real != root and root not in real.parents:
            raise UnsafeArtifactError(f"downloaded {path} resolves to {real}, outside {root}")
    return out
