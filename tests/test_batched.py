"""Seeds trained together (``pipelines.batched.fit_seeds``) equal the same seeds trained one by one by ``fit``."""

from __future__ import annotations

import pytest
import torch

from models import create_model
from pipelines.batched import can_batch, fit_seeds
from pipelines.trainer import TrainState, fit

SEEDS = (0, 1, 2)
TOL = 1e-5  # CPU fp32: the batched step sums in another order than the single-model kernels, nothing more
RECIPE = {
    "optimizer": "sgd",
    "lr": 5e-3,
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "batch_size": 16,
    "epochs": 2,
    "lr_schedule": "step",
    "augment": False,
}


@pytest.fixture(scope="module")
def data(cifar_dir) -> dict[str, torch.Tensor]:
    """The synthetic CIFAR-100 subset as ``fit``'s tensors, with 24 training images held out as validation."""
    from pipelines.data import load_dataset

    ds = load_dataset("cifar100", cifar_dir)
    x, y = torch.from_numpy(ds.x_train).float(), torch.from_numpy(ds.y_train)
    return {
        "x_train": x[24:],
        "y_train": y[24:],
        "x_test": torch.from_numpy(ds.x_test).float(),
        "y_test": torch.from_numpy(ds.y_test),
        "x_val": x[:24],
        "y_val": y[:24],
    }


def build(name: str, seed: int, **options) -> torch.nn.Module:
    """As ``pipelines.trained.build_model`` and ``runner.place`` do: weights from the seed, channels_last."""
    torch.manual_seed(seed)
    return create_model(name, num_classes=3, **options).to(memory_format=torch.channels_last)


def one_by_one(name: str, options: dict, recipe: dict, data: dict, **kw) -> list[tuple[torch.nn.Module, TrainState]]:
    out = []
    for seed in SEEDS:
        model = build(name, seed, **options)
        out.append((model, fit(model, **data, recipe=recipe, seed=seed, progress=False, **kw)))
    return out


def together(name: str, options: dict, recipe: dict, data: dict, **kw) -> list[tuple[torch.nn.Module, TrainState]]:
    models = [build(name, seed, **options) for seed in SEEDS]
    return list(zip(models, fit_seeds(models, **data, recipe=recipe, seeds=SEEDS, **kw)))


def assert_same_training(expected: list, actual: list) -> None:
    """Same metric names per epoch, the same values within TOL (``epoch_seconds`` aside), the same final weights
    and buffers (BatchNorm running statistics included)."""
    for (want_model, want), (got_model, got) in zip(expected, actual):
        assert got.epoch == want.epoch
        assert [list(h) for h in got.history] == [list(h) for h in want.history]
        for w, g in zip(want.history, got.history):
            for key in w.keys() - {"epoch_seconds"}:
                assert g[key] == pytest.approx(w[key], abs=TOL), (key, w["epoch"])
        got_state = got_model.state_dict()
        for key, value in want_model.state_dict().items():
            torch.testing.assert_close(got_state[key], value, atol=TOL, rtol=0, msg=key)


@pytest.mark.parametrize("pooling", ["stride", "max", "avg"])
def test_pooling_cnn_seeds_together_equal_one_by_one(data, pooling):
    options = {"pooling": pooling}
    assert can_batch(build("pooling_cnn", 0, **options))
    expected = one_by_one("pooling_cnn", options, RECIPE, data)
    actual = together("pooling_cnn", options, RECIPE, data)
    assert_same_training(expected, actual)
    seeds_differ = [m.state_dict()["1.weight"] for m, _ in actual]
    assert not torch.equal(seeds_differ[0], seeds_differ[1])  # each seed its own init and shuffle


def test_augmentation_validation_split_and_eval_cadence_per_seed(data):
    recipe = {**RECIPE, "augment": True, "epochs": 3}
    expected = one_by_one("pooling_cnn", {"pooling": "avg"}, recipe, data, eval_every=2)
    actual = together("pooling_cnn", {"pooling": "avg"}, recipe, data, eval_every=2)
    assert_same_training(expected, actual)
    assert [("test_acc" in h, "val_acc" in h) for h in actual[0][1].history] == [(False,) * 2, (True,) * 2, (True,) * 2]


def test_batchnorm_running_statistics_per_seed(data):
    recipe = {**RECIPE, "lr": 1e-3, "batch_size": 32}
    options = {"in_shape": (32, 32, 3), "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
    expected = one_by_one("resnet_like", options, recipe, data)
    actual = together("resnet_like", options, recipe, data)
    assert_same_training(expected, actual)
    running = [m.state_dict()["3.bn1.running_mean"] for m, _ in actual]
    assert not torch.equal(running[0], running[1])


# Adam's step is lr-sized even where a gradient is rounding noise: at 1e-3 the seeds' drift reaches ~TOL on fcnet
# (bench/README.md, "Seeds together"), at 1e-4 it stays well inside.
@pytest.mark.parametrize("optimizer, lr", [("sgd", 1e-3), ("adam", 1e-4)])
def test_fully_connected_model_with_each_optimizer(data, optimizer, lr):
    recipe = {**RECIPE, "optimizer": optimizer, "lr": lr, "batch_size": 32, "lr_schedule": "none"}
    options = {"in_shape": (32, 32, 3), "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
    assert_same_training(one_by_one("fcnet", options, recipe, data), together("fcnet", options, recipe, data))


def test_epoch_hook_sees_every_seed_and_time_is_shared(data):
    seen: list[tuple[int, int]] = []
    models = [build("pooling_cnn", seed, pooling="stride") for seed in SEEDS]
    states = fit_seeds(
        models, **data, recipe=RECIPE, seeds=SEEDS, on_epoch=lambda k, epoch, metrics: seen.append((k, epoch))
    )
    assert seen == [(0, 1), (1, 1), (2, 1), (0, 2), (1, 2), (2, 2)]
    assert len({s.train_seconds for s in states}) == 1  # the batched epochs' time, divided evenly


@pytest.mark.parametrize(
    "name, options, precision, reason",
    [
        ("keras_cnn", {}, "fp32", "applies constraints"),
        ("deep_fcnet", {"in_shape": (32, 32, 3)}, "fp32", "Dropout"),
        ("pooling_cnn", {}, "fp16", "GradScaler"),
    ],
)
def test_what_cannot_be_batched_is_refused(data, name, options, precision, reason):
    models = [build(name, seed, **options) for seed in SEEDS]
    assert not can_batch(models[0], precision)
    with pytest.raises(ValueError, match=f"{reason}.*one by one"):
        fit_seeds(models, **data, recipe=RECIPE, seeds=SEEDS, precision=precision)


def test_models_of_different_architectures_or_counts_are_refused(data):
    models = [build("pooling_cnn", 0, pooling="stride"), build("pooling_cnn", 1, pooling="max")]
    with pytest.raises(ValueError, match="one architecture"):
        fit_seeds(models, **data, recipe=RECIPE, seeds=(0, 1))
    with pytest.raises(ValueError, match="one model per seed"):
        fit_seeds(models[:1], **data, recipe=RECIPE, seeds=(0, 1))


def test_each_seed_checkpoint_is_the_one_fit_writes(data, tmp_path):
    """Weights, the seed's slice of the optimizer state, scheduler and both generators: ``fit`` resumes it."""
    recipe = {**RECIPE, "augment": True}
    for seed in SEEDS:
        fit(
            build("pooling_cnn", seed, pooling="avg"),
            **data,
            recipe=recipe,
            seed=seed,
            progress=False,
            checkpoint_path=tmp_path / f"alone-{seed}.pt",
            checkpoint_every=1,
        )
    models = [build("pooling_cnn", seed, pooling="avg") for seed in SEEDS]
    paths = [tmp_path / f"together-{seed}.pt" for seed in SEEDS]
    fit_seeds(models, **data, recipe=recipe, seeds=SEEDS, checkpoint_paths=paths, checkpoint_every=1)
    for seed, path in zip(SEEDS, paths):
        want = torch.load(tmp_path / f"alone-{seed}.pt", weights_only=True)
        got = torch.load(path, weights_only=True)
        assert got.keys() == want.keys() and got["epoch"] == want["epoch"] == 2
        for key in ("generator", "aug_generator", "aug_device"):
            assert got[key] == want[key] if isinstance(want[key], str) else torch.equal(got[key], want[key]), key
        assert got["scheduler"] == want["scheduler"]
        assert got["optimizer"]["param_groups"] == want["optimizer"]["param_groups"]
        torch.testing.assert_close(got["model"], want["model"], atol=TOL, rtol=0)
        # momentum: a running sum of the gradients, which are larger than the weights (same rounding, relatively)
        torch.testing.assert_close(got["optimizer"]["state"], want["optimizer"]["state"], atol=10 * TOL, rtol=0)


# ---- a study with its seeds together: the same child runs as one by one ----

STUDY_CONFIGS = "pooling_cnn:pooling=stride;fcnet:optimizer=sgd,lr=0.01"


def _children(client, experiment: str, parent_id: str) -> dict[str, object]:
    exp_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([exp_id], f"tags.mlflow.parentRunId = '{parent_id}' and tags.step = 'trial'")
    return {r.info.run_name: r for r in runs}


def _own(metrics: dict[str, float]) -> set[str]:
    """The metric names a trial logs itself: MLflow's system metrics come only once a run is open long enough."""
    return {k for k in metrics if not k.startswith("system/")}


def _artifacts(client, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for item in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return out


def test_study_with_seeds_together_logs_the_same_children(tracking):
    from mlflow.tracking import MlflowClient

    from pipelines.study import plan_study, run_study

    client = MlflowClient()
    plan = plan_study("together", configs=STUDY_CONFIGS, seeds="0,1", epochs="2", dataset="digits", precision="fp32")
    children = {}
    for choice in ("false", "true"):
        r = run_study(plan, experiment=f"together-{choice}", registered_model_name="none", batch_seeds=choice)
        assert client.get_run(r.run_id).data.tags["seeds_together"] == choice
        children[choice] = _children(client, f"together-{choice}", r.run_id)
    one_by_one, together = children["false"], children["true"]
    assert sorted(together) == sorted(one_by_one) == sorted(t.run_name for t in plan.trials)
    for name, want in one_by_one.items():
        got = together[name]
        assert got.info.status == "FINISHED"
        assert got.data.params == want.data.params
        assert _own(got.data.metrics) == _own(want.data.metrics)
        assert got.data.metrics["test_accuracy"] == pytest.approx(want.data.metrics["test_accuracy"], abs=TOL)
        assert {k: v for k, v in got.data.tags.items() if k != "mlflow.parentRunId"}.keys() == want.data.tags.keys() - {
            "mlflow.parentRunId"
        }
        assert _artifacts(client, got.info.run_id) == _artifacts(client, want.info.run_id)
        history = client.get_metric_history(got.info.run_id, "test_acc")
        assert [m.step for m in history] == [1, 2]
        grandchildren = client.search_runs([got.info.experiment_id], f"tags.mlflow.parentRunId = '{got.info.run_id}'")
        assert len(grandchildren) == 1  # the evaluate step, under its own trial


def test_a_crash_in_training_together_ends_every_seed_failed(tracking, monkeypatch):
    from mlflow.tracking import MlflowClient

    import pipelines.batched as batched
    from pipelines.study import plan_study, run_study

    real = batched.fit_seeds

    def crash_after_first_epoch(*args, on_epoch, **kw):
        def hook(k, epoch, metrics):
            on_epoch(k, epoch, metrics)
            if k == 1:
                raise RuntimeError("simulated crash")

        return real(*args, on_epoch=hook, **kw)

    monkeypatch.setattr(batched, "fit_seeds", crash_after_first_epoch)
    plan = plan_study("crash", configs="pooling_cnn:pooling=stride", seeds="0,1", epochs="2", dataset="digits")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_study(plan, experiment="together-crash", registered_model_name="none", batch_seeds="true")
    client = MlflowClient()
    exp_id = client.get_experiment_by_name("together-crash").experiment_id
    trials = client.search_runs([exp_id], "tags.step = 'trial'")
    assert sorted(r.info.run_name for r in trials) == ["pooling_cnn:pooling=stride-s0", "pooling_cnn:pooling=stride-s1"]
    assert {r.info.status for r in trials} == {"FAILED"}
    assert all("simulated crash" in r.data.tags["error"] for r in trials)
