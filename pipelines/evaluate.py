"""Entry point ``evaluate``: per-class reports (train and test), confusion matrix, curves, timings."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from sklearn.metrics import classification_report, confusion_matrix

from pipelines import plots
from pipelines.data import Dataset, split_validation
from pipelines.trained import configs_from_run, inference_latency, load_data, load_trained, predict
from tracking import experiment_id_for, tracked_run
from tracking.artifacts import download, log_data_inputs, log_figure, log_json, log_table, log_text
from tracking.queries import run_data, run_experiment_id
from tracking.runs import log_metrics, log_params, set_tags

COPIED_FROM_TRAIN = ("train_seconds", "seconds_per_epoch", "num_params")  # so one run holds every number


def report(y_true: np.ndarray, logits: np.ndarray, labels: list[str]) -> tuple[dict, str, pd.DataFrame]:
    """sklearn classification report (4 digits) as dict, text and a per-class table."""
    y_pred = logits.argmax(1)
    kw = {"labels": list(range(len(labels))), "target_names": labels, "digits": 4, "zero_division": 0}
    as_dict = classification_report(y_true, y_pred, output_dict=True, **kw)
    text = classification_report(y_true, y_pred, **kw)
    rows = [{"class": k, **v} for k, v in as_dict.items() if isinstance(v, dict)]
    return as_dict, text, pd.DataFrame(rows)


@dataclass
class EvaluateResult:
    run_id: str
    metrics: dict[str, float]  # train_/test_ accuracy, macro F1, loss, per-class F1, overfit gap, latency


def run(
    train_run_id: str,
    dataset: Dataset | None = None,
    model: nn.Module | None = None,
    history: list[dict] | None = None,
    experiment: str | None = None,
    nested: bool = False,
) -> EvaluateResult:
    """Evaluate the model of ``train_run_id`` (passed in-process by ``main``, else loaded from the run)."""
    if model is None:
        model, _ = load_trained(train_run_id)
    data_cfg, train_cfg = configs_from_run(train_run_id)
    ds = dataset or load_data(data_cfg)
    _, train_metrics, train_tags = run_data(train_run_id)
    # train_* numbers cover what the model trained on: a validation holdout is not part of it
    trained_on, _ = split_validation(ds, train_cfg.val_fraction, train_cfg.seed)
    if history is None:
        with tempfile.TemporaryDirectory() as tmp:
            history = json.loads(download(train_run_id, "history.json", tmp).read_text())
    name = train_tags.get("mlflow.runName", train_run_id).replace("train-", "")
    with tracked_run(
        f"evaluate-{name}", experiment_id_for(experiment) or run_experiment_id(train_run_id), nested=nested
    ) as run_id:
        log_params({"train_run_id": train_run_id, "dataset": ds.name, "classes": ",".join(map(str, ds.class_ids))})
        set_tags({"step": "evaluate", "train_run_id": train_run_id})
        test_set = log_data_inputs(ds)
        metrics: dict[str, float] = {}
        for split, x, y in (("train", trained_on.x_train, trained_on.y_train), ("test", ds.x_test, ds.y_test)):
            logits = predict(model, x)
            as_dict, text, table = report(y, logits, ds.labels)
            log_json(as_dict, f"reports/classification_report_{split}.json")
            log_text(text, f"reports/classification_report_{split}.txt")
            log_table(table, f"reports/classification_report_{split}_table")
            loss = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(y)).item()
            metrics.update(
                {
                    f"{split}_accuracy": as_dict["accuracy"],
                    f"{split}_macro_f1": as_dict["macro avg"]["f1-score"],
                    f"{split}_loss": loss,
                }
            )
            for cid, label in zip(ds.class_ids, ds.labels):
                metrics[f"{split}_f1_class_{cid}"] = as_dict[label]["f1-score"]
            if split == "test":
                cm = confusion_matrix(y, logits.argmax(1), labels=list(range(ds.num_classes)))
                log_json({"labels": ds.labels, "matrix": cm.tolist()}, "reports/confusion_matrix_test.json")
                log_figure(plots.confusion_matrix(cm, ds.labels, f"{name}: test"), "figures/confusion_matrix_test.png")
        metrics["overfit_gap"] = metrics["train_accuracy"] - metrics["test_accuracy"]
        metrics.update(inference_latency(model, ds.x_test))
        metrics.update({k: train_metrics[k] for k in COPIED_FROM_TRAIN if k in train_metrics})
        log_metrics({k: v for k, v in metrics.items() if not k.startswith("test_")})
        log_metrics({k: v for k, v in metrics.items() if k.startswith("test_")}, dataset=test_set)
        log_figure(plots.learning_curves(history, name), "figures/learning_curves.png")
    return EvaluateResult(run_id, metrics)
