"""Entry point ``prep``: load (download/verify) the data set, log what it is, save it as an artifact."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.config import DataConfig, as_params
from pipelines.data import Dataset
from pipelines.trained import load_data
from tracking import experiment_id_for, tracked_run
from tracking.artifacts import log_data_inputs, log_file, log_json
from tracking.runs import log_metrics, log_params, set_tags

DATASET_ARTIFACT = "data/dataset.npz"


@dataclass
class PrepResult:
    run_id: str
    dataset: Dataset


def run(
    cfg: DataConfig,
    dataset: Dataset | None = None,
    experiment: str | None = None,
    nested: bool = False,
    save_arrays: bool = True,
) -> PrepResult:
    """Log the data set's identity (fingerprint, counts, source) as a run."""
    ds = dataset or load_data(cfg)  # loaded before the run starts: bad data never creates a run
    fingerprint = ds.fingerprint()
    with tracked_run(f"prep-{ds.name}", experiment_id_for(experiment), nested=nested) as run_id:
        log_params(
            {
                **as_params(cfg),
                "classes_used": ",".join(map(str, ds.class_ids)),
                "source": ds.source,
                "fingerprint_sha256": fingerprint,
                "in_shape": "x".join(map(str, ds.in_shape)),
            }
        )
        set_tags({"step": "prep", "dataset": ds.name})
        counts = {"n_train": len(ds.y_train), "n_test": len(ds.y_test)}
        for split, y in (("train", ds.y_train), ("test", ds.y_test)):
            for k, name in enumerate(ds.class_names):
                counts[f"{split}_count_{ds.class_ids[k]}_{name}"] = int((y == k).sum())
        log_metrics(counts)
        log_json(
            {
                "name": ds.name,
                "class_ids": ds.class_ids,
                "class_names": ds.class_names,
                "mean": ds.mean,
                "std": ds.std,
                "source": ds.source,
                "fingerprint_sha256": fingerprint,
                "warnings": ds.warnings,
                "counts": counts,
            },
            "data/dataset.json",
        )
        log_data_inputs(ds)
        if save_arrays:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "dataset.npz"
                np.savez_compressed(path, x_train=ds.x_train, y_train=ds.y_train, x_test=ds.x_test, y_test=ds.y_test)
                log_file(path, "data")
    return PrepResult(run_id, ds)
