"""Parameters: parsed by their rows of the table; a bad one is one line naming it and what is allowed, exit 2,
no run created; runs log them as given."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from pipelines.cli import cli
from pipelines.config import as_params, data_config, data_config_from, train_config, train_config_from
from pipelines.parsing import ConfigError
from tests.conftest import ROOT

GOOD = dict(
    model="pooling_cnn",
    pooling="max",
    epochs="auto",
    batch_size="auto",
    lr="auto",
    momentum="auto",
    weight_decay="auto",
    optimizer="auto",
    lr_schedule="auto",
    augment="auto",
    seed="0",
    device="auto",
    precision="auto",
    eval_every="1",
    checkpoint_every="50",
)

BAD_TRAIN = [
    ({"model": "resnet9000"}, "model must be one of"),
    ({"pooling": "median"}, "pooling must be one of stride, max, avg; got 'median'"),
    ({"epochs": "0"}, "epochs must be an integer >= 1, got '0'"),
    ({"epochs": "-3"}, "epochs must be an integer >= 1"),
    ({"epochs": "abc"}, "epochs must be an integer >= 1, got 'abc'"),
    ({"epochs": "2.5"}, "epochs must be an integer"),
    ({"batch_size": "0"}, "batch_size must be an integer >= 1"),
    ({"lr": "0"}, "lr must be > 0"),
    ({"lr": "-1e-3"}, "lr must be > 0"),
    ({"lr": "fast"}, "lr must be a number, got 'fast'"),
    ({"lr": "nan"}, "lr must be a finite number"),
    ({"momentum": "-0.1"}, "momentum must be >= 0"),
    ({"optimizer": "rmsprop"}, "optimizer must be one of sgd, adam"),
    ({"device": "tpu"}, "device must be auto, cpu, cuda or cuda:N"),
    ({"precision": "fp8"}, "precision must be one of"),
    ({"seed": "-1"}, "seed must be an integer >= 0"),
    ({"augment": "maybe"}, "augment must be true or false"),
    ({"val_fraction": "0.6"}, "val_fraction must be a number in"),
    ({"val_fraction": "-0.1"}, "val_fraction must be a number in"),
    ({"val_fraction": "some"}, "val_fraction must be a number in"),
]


@pytest.mark.parametrize(("override", "message"), BAD_TRAIN)
def test_bad_train_params(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        train_config(**{**GOOD, **override})


@pytest.mark.parametrize(
    ("dataset", "classes", "message"),
    [
        ("imagenet", "default", "dataset must be one of"),
        ("cifar100", "0,100", r"classes must be ids in 0\.\.99 for cifar100; got \[100\]"),
        ("cifar100", "0,-1", r"classes must be ids in 0\.\.99"),
        ("cifar100", "0,33,33", "classes must not repeat an id"),
        ("cifar100", "0,a", "classes must be comma-separated integers"),
        ("cifar100", "5", "classes needs at least 2 ids"),
        ("digits", "3,10", r"classes must be ids in 0\.\.9 for digits"),
    ],
)
def test_bad_data_params(dataset, classes, message):
    with pytest.raises(ConfigError, match=message):
        data_config(dataset, "", classes)


def test_auto_means_recipe_and_overrides_win():
    cfg = train_config(**{**GOOD, "epochs": "7", "lr": "0.01"})
    recipe = cfg.recipe()
    assert recipe["epochs"] == 7 and recipe["lr"] == 0.01
    assert recipe["momentum"] == 0.9 and recipe["batch_size"] == 128 and recipe["optimizer"] == "sgd"
    assert train_config(**GOOD).recipe()["epochs"] == 500  # the notebook's default for the CIFAR-100 CNNs


def test_params_are_spelled_like_mlflow_run_logs_them():
    params = as_params(data_config("cifar100", "", "default"), train_config(**GOOD))
    assert params["epochs"] == "auto" and params["classes"] == "default" and params["data_dir"] == "''"
    assert params["seed"] == "0" and params["eval_every"] == "1"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--pooling", "median"], "error: pooling must be one of stride, max, avg; got 'median'"),
        (["train", "--epochs", "abc"], "error: epochs must be an integer >= 1, got 'abc'"),
        (["main", "--classes", "0,33,100"], "error: classes must be ids in 0..99 for cifar100; got [100]"),
        (["main", "--data-dir", "/nonexistent/dir"], "error: data_dir /nonexistent/dir does not exist"),
        (["train", "--model", "nope"], "error: model must be one of"),
    ],
)
def test_cli_rejects_before_any_run(tracking, args, message):
    from mlflow.tracking import MlflowClient

    client = MlflowClient()

    def count_runs() -> int:
        return len(client.search_runs([e.experiment_id for e in client.search_experiments()]))

    before = count_runs()
    result = CliRunner().invoke(cli, [*args, "--experiment", "bad-input"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]  # exactly one line
    assert result.stderr.startswith(message), result.stderr
    assert count_runs() == before


def test_cli_error_is_one_line_without_traceback_in_a_real_process(tracking):
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines", "train", "--lr", "-1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: lr must be > 0, got '-1'"


def test_values_are_logged_as_given_and_read_back_unchanged():
    cfg = train_config(**{**GOOD, "lr": "5e-3", "val_fraction": "0.10", "augment": "none"})
    params = as_params(cfg)
    assert params["lr"] == "5e-3" and params["val_fraction"] == "0.10" and params["augment"] == "none"
    assert cfg.overrides["lr"] == 0.005 and cfg.val_fraction == 0.1 and "augment" not in cfg.overrides
    again = train_config_from(params)  # a run's logged params, as --resume reads them
    assert again == cfg and as_params(again) == params
    data = data_config("cifar100", "", "0, 33,41")
    logged = as_params(data)
    assert logged["data_dir"] == "''" and logged["classes"] == "'0, 33,41'" and data.classes == [0, 33, 41]
    assert data_config_from(logged) == data and as_params(data_config_from(logged)) == logged


def test_help_shows_types_choices_and_ranges():
    out = CliRunner().invoke(cli, ["train", "--help"], terminal_width=200).output
    for shown in ("--pooling [stride|max|avg]", "--epochs auto|INTEGER", "--seed INTEGER RANGE", "[x>=0]"):
        assert shown in out, shown
    assert "--optimizer [auto|sgd|adam]" in out and "--val-fraction FLOAT RANGE" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["segment", "--size", "8"], "error: size must be N or HxW with N, H, W >= 16"),
        (["landscape", "--model", "x", "--mode", "flat"], "error: mode must be one of reference, li; got 'flat'"),
        (["demo", "--port", "-1"], "error: port must be an integer >= 0, got '-1'"),
        (["sweep", "--executor", "dask"], "error: executor must be one of local, ray; got 'dask'"),
    ],
)
def test_every_command_rejects_a_bad_value_in_one_line_before_tracking(args, message):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert result.stderr.strip() == result.stderr.strip().splitlines()[0] and result.stderr.startswith(message)


def test_the_configs_hold_exactly_the_tables_parameters():
    from dataclasses import fields

    from models import RECIPE_KEYS
    from pipelines.config import TRAIN_PARAMS, TrainConfig
    from pipelines.params import RECIPE_PARAMS

    # a recipe row needs no field: its value is kept in ``overrides`` (one row = one hyper-parameter)
    assert {f.name for f in fields(TrainConfig)} - {"raw", "overrides"} == set(TRAIN_PARAMS) - set(RECIPE_PARAMS)
    assert set(RECIPE_PARAMS) == set(RECIPE_KEYS)  # auto resolves every recipe row from the model's recipe
