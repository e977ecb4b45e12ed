"""Honest metric names: per-epoch ``test_*`` on the test set, ``val_*`` on a holdout of train, and
selection (the sweep's objective) on the holdout only."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from pipelines.config import as_params, data_config, train_config, train_config_from
from pipelines.data import load_dataset, split_validation, validation_indices
from tests.conftest import ROOT
from tests.test_config import GOOD

EPOCH_KEYS = [f"{split}_{m}{q}" for split in ("val", "test") for m in ("loss", "acc") for q in ("", "_p25", "_p75")]


def _rows(a) -> set[bytes]:
    """Each image as bytes (float32), to compare images across uint8 arrays and float tensors."""
    a = a.cpu().numpy() if isinstance(a, torch.Tensor) else a
    return {r.tobytes() for r in np.ascontiguousarray(a, dtype=np.float32)}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_split_is_stratified_deterministic_and_leaves_the_test_set_alone(digits):
    ds = digits
    rest, (x_val, y_val) = split_validation(ds, 0.2, seed=3)
    kept, held = validation_indices(ds.y_train, 0.2, 3)
    assert len(held) == int(np.ceil(0.2 * len(ds.y_train))) and len(kept) + len(held) == len(ds.y_train)
    assert sorted([*kept, *held]) == list(range(len(ds.y_train)))  # a partition of the training set
    np.testing.assert_array_equal(x_val, ds.x_train[held])
    np.testing.assert_array_equal(rest.x_train, ds.x_train[kept])
    assert rest.x_test is ds.x_test and rest.y_test is ds.y_test
    assert not _rows(x_val) & _rows(rest.x_train) and not _rows(x_val) & _rows(ds.x_test)
    counts, held_counts = np.bincount(ds.y_train), np.bincount(y_val, minlength=ds.num_classes)
    assert np.all(np.abs(held_counts - 0.2 * counts) <= 1)  # stratified
    for a, b in zip(validation_indices(ds.y_train, 0.2, 3), (kept, held)):
        np.testing.assert_array_equal(a, b)  # same seed, same split
    assert not np.array_equal(validation_indices(ds.y_train, 0.2, 4)[1], held)
    same, none = split_validation(ds, 0.0, 3)
    assert same is ds and none is None
    tiny = np.array([0] * 10 + [1] * 10 + [2])  # class 2 cannot be stratified: a plain random split, same seed
    a, b = validation_indices(tiny, 0.2, 0), validation_indices(tiny, 0.2, 0)
    assert len(a[1]) == 5 and np.array_equal(a[1], b[1])


def test_val_fraction_is_parsed_spelled_like_mlflow_run_and_missing_means_none():
    params = as_params(train_config(**{**GOOD, "val_fraction": "0.2"}))
    assert params["val_fraction"] == "0.2" and train_config_from(params).val_fraction == 0.2
    old = {k: v for k, v in params.items() if k != "val_fraction"}  # a run logged before the parameter
    assert train_config_from(old).val_fraction == 0.0
    default = as_params(train_config(**GOOD))["val_fraction"]
    project = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]
    for name in ("main", "train", "gradients"):  # mlflow run logs the default first: the same spelling
        assert str(project[name]["parameters"]["val_fraction"]["default"]) == default, name
        assert "--val-fraction {val_fraction}" in " ".join(project[name]["command"].split()), name


def test_fit_trains_on_the_rest_and_validates_on_the_holdout_and_the_test_set(digits):
    from pipelines import plots
    from pipelines.trained import build_model, fit_tensors
    from pipelines.trainer import fit, validate_classifier

    ds = digits
    cfg = train_config(**{**GOOD, "epochs": "2", "batch_size": "64", "augment": "false", "val_fraction": "0.25"})
    model, _ = build_model(cfg, ds)
    data = fit_tensors(ds, cfg.val_fraction, cfg.seed, "cpu")
    rest, (x_val, _) = split_validation(ds, 0.25, cfg.seed)
    trained: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda m, args: trained.append(args[0].detach().clone()) if m.training else None)
    seen: dict[str, list[torch.Tensor]] = {}

    def recording(model, x, y, batch_size, dtype, prefix="test"):
        seen.setdefault(prefix, []).append(x.clone())
        return validate_classifier(model, x, y, batch_size, dtype, prefix)

    state = fit(model, **data, recipe=cfg.recipe(), seed=cfg.seed, progress=False, validate=recording)
    assert _rows(torch.cat(trained)) == _rows(rest.x_train)  # every kept image, and only those
    assert not _rows(torch.cat(trained)) & (_rows(x_val) | _rows(ds.x_test))
    assert len(seen["val"]) == len(seen["test"]) == 2
    for x in seen["val"]:
        assert torch.equal(x, torch.from_numpy(x_val).float())
    for x in seen["test"]:
        assert torch.equal(x, torch.from_numpy(ds.x_test).float())
    for row in state.history:
        assert set(EPOCH_KEYS) <= set(row)
    fig = plots.learning_curves(state.history)
    assert [line.get_label() for line in fig.axes[1].get_lines()] == ["train", "val", "test"]


def test_train_run_logs_val_on_the_holdout_test_on_the_test_set_and_old_runs_resume(tracking, digits):
    import mlflow

    from pipelines import train
    from pipelines.trained import configs_from_run
    from pipelines.trainer import validate_classifier

    ds = digits
    data_cfg = data_config("digits", "", "default")
    cfg = train_config(**{**GOOD, "epochs": "2", "device": "cpu", "precision": "fp32", "val_fraction": "0.2"})
    result = train.run(data_cfg, cfg, dataset=ds, experiment="val-fraction")
    client = MlflowClient()
    run = client.get_run(result.run_id)
    rest, (x_val, y_val) = split_validation(ds, 0.2, cfg.seed)
    assert run.data.params["val_fraction"] == "0.2" and run.data.params["n_train"] == str(len(rest.y_train))
    for key in (*EPOCH_KEYS, "train_loss", "train_acc"):
        assert [m.step for m in client.get_metric_history(result.run_id, key)] == [1, 2], key
    bs = cfg.recipe()["batch_size"]
    for prefix, x, y in (("val", x_val, y_val), ("test", ds.x_test, ds.y_test)):
        expected = validate_classifier(result.model, torch.from_numpy(x).float(), torch.from_numpy(y), bs, None, prefix)
        for key in (f"{prefix}_acc", f"{prefix}_loss"):
            assert run.data.metrics[key] == pytest.approx(expected[key], abs=1e-6), key
    assert configs_from_run(result.run_id)[1].val_fraction == 0.2  # resumes with the same holdout

    with mlflow.start_run(experiment_id=run.info.experiment_id) as old:  # params as runs logged them before
        mlflow.log_params({k: v for k, v in run.data.params.items() if k != "val_fraction"})
    assert configs_from_run(old.info.run_id)[1].val_fraction == 0.0


CLASSES = (0, 1, 2, 3)  # 120 training images: 2 epochs tell the sampled learning rates apart


def _mnist_with_test_set(root, garbage: bool):
    """A tiny synthetic MNIST; with ``garbage`` its test split is noise images all labelled 0."""
    from pipelines.data.mnist import FILES, IMAGES_MAGIC, LABELS_MAGIC, write_idx, write_synthetic

    clean = write_synthetic(root / "clean", per_class_train=30, per_class_test=5, classes=CLASSES, compress=False)
    if not garbage:
        return clean
    folder = shutil.copytree(clean, root / "garbage")
    images_name, labels_name = FILES["test"]
    noise = np.random.default_rng(7).integers(0, 256, size=(40, 28, 28), dtype=np.uint8)
    write_idx(folder / images_name, noise, IMAGES_MAGIC)
    write_idx(folder / labels_name, np.zeros(40, dtype=np.uint8), LABELS_MAGIC)
    return folder


def test_sweep_selects_on_the_holdout_and_never_on_the_test_set(tracking, tmp_path):
    """The same sweep on two data sets that differ only in their test split: same choices, same objective.

    With these settings the two test splits rank the finished trials differently, so a choice made
    on the test set would differ between the sweeps.
    """
    from pipelines.sweep import METRIC, plan_sweep, run_sweep

    assert METRIC == "val_acc"
    results = {}
    for garbage in (False, True):
        folder = _mnist_with_test_set(tmp_path, garbage)
        plan = plan_sweep(
            dataset="mnist",
            data_dir=str(folder),
            classes=",".join(map(str, CLASSES)),
            model="simple_cnn",
            epochs="2",
            lr="1e-3,3e-2",
            batch_sizes="16,32",
            num_samples="3",
            device="cpu",
            precision="fp32",
        )
        results[garbage] = run_sweep(plan, experiment=f"holdout-garbage-{garbage}", executor="local")
    clean, noisy = (results[g].trials.sort_values("trial").reset_index(drop=True) for g in (False, True))
    columns = ["trial", "config", "pruned", "epochs_done", "val_acc"]
    assert clean[columns].equals(noisy[columns])  # the same points sampled, pruned and scored
    best = {g: results[g].best for g in (False, True)}
    assert best[False]["val_acc"] == best[True]["val_acc"]
    top = clean.loc[~clean["pruned"] & (clean["val_acc"] == best[False]["val_acc"]), "config"]
    assert best[False]["config"] in set(top) and best[True]["config"] in set(top)  # ties go to the faster one
    client = MlflowClient()
    done = clean.loc[~clean["pruned"]].index
    assert len(done) > 1
    by_test = [f.loc[done].sort_values("test_accuracy", ascending=False)["config"].iloc[0] for f in (clean, noisy)]
    assert by_test[0] != by_test[1]  # the check above has teeth: selecting on the test set would differ
    for i in done:  # per epoch: val_acc identical, test_acc measured on the (different) test sets
        a, b = clean.loc[i, "run_id"], noisy.loc[i, "run_id"]
        assert _curve(client, a, "val_acc") == _curve(client, b, "val_acc")
        assert [step for step, _ in _curve(client, b, "test_acc")] == [1, 2]


def _curve(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_compare_reads_test_curves_and_old_runs_test_curves_under_their_old_name(tracking):
    import mlflow

    from pipelines.comparison import histories
    from tracking.queries import get_run_record

    ids = {}
    for name, params, key in (
        ("new", {"val_fraction": "0.1"}, "test_acc"),
        ("old", {"seed": "0"}, "val_acc"),  # before the rename: val_acc was measured on the test set
        ("old-holdout", {"val_fraction": "0.1"}, "val_acc"),  # an old sweep trial: its val_acc was a holdout
    ):
        with mlflow.start_run(experiment_id=mlflow.create_experiment(f"curves-{name}")) as run:
            mlflow.log_params(params)
            for epoch in (1, 2):
                mlflow.log_metric(key, 0.5 * epoch, step=epoch)
        ids[name] = run.info.run_id
    curves = histories([get_run_record(i) for i in ids.values()])
    assert curves[ids["new"]] == curves[ids["old"]] == {1: 0.5, 2: 1.0}
    assert curves[ids["old-holdout"]] == {}  # never shown as a test curve
    assert histories([get_run_record(ids["old-holdout"])], "val_acc")[ids["old-holdout"]] == {1: 0.5, 2: 1.0}
