"""Artifacts of the active run: JSON, text, tables, figures, files, data-set inputs."""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient


def log_json(obj, path: str) -> None:
    mlflow.log_dict(obj, path)


def log_text(text: str, path: str) -> None:
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
    if run_id:
        MlflowClient().log_artifact(run_id, str(local), artifact_dir)
    else:
        mlflow.log_artifact(str(local), artifact_dir)


def log_dataset_input(name: str, x: np.ndarray, y: np.ndarray, source: str, digest: str, context: str) -> None:
    """Record the data set as a run input (shown in the UI's Datasets column)."""
    ds = mlflow.data.from_numpy(x, targets=y, source=source, name=name, digest=digest[:32])
    mlflow.log_input(ds, context=context)


def download(run_id: str, artifact_path: str, dst: str | Path | None = None) -> Path:
    """Download one artifact (file or folder) of a run into ``dst`` (a fresh temp dir by default)."""
    dst = Path(dst or tempfile.mkdtemp(prefix="artifact-"))
    dst.mkdir(parents=True, exist_ok=True)
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=str(dst)))
