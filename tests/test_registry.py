"""The registry hands out the right model: one kind per name, a like-with-like champion, self-describing files.

Real runs on sklearn's digits and a synthetic CIFAR-100 in the official format, against the
test tracking server; every claim is read back through ``MlflowClient`` or the downloaded file.
"""

from __future__ import annotations

import json
import subprocess
import sys

import mlflow
import numpy as np
import onnx
import pytest
from mlflow.tracking import MlflowClient

from pipelines import main
from pipelines.config import data_config, export_config, train_config_from
from tests.conftest import ROOT, module_tracking
from tracking.registry import (
    ModelKind,
    RegistryMismatch,
    VersionSpec,
    check_compatible,
    default_model_name,
    log_onnx,
)

ONE_EPOCH = {
    "epochs": "1",
    "lr": "0.05",
    "device": "cpu",
    "precision": "fp32",
    "eval_every": "1",
    "checkpoint_every": "50",
}


def test_default_names_separate_data_sets_and_class_subsets():
    assert default_model_name("cifar100", "pooling_cnn", [0, 33, 41], [0, 33, 41]) == "cifar100-pooling_cnn"
    assert default_model_name("cifar100", "pooling_cnn", [0, 33, 43], [0, 33, 41]) == "cifar100-pooling_cnn-c0-33-43"
    assert default_model_name("digits", "fcnet", list(range(10)), list(range(10))) == "digits-fcnet"
    digits = ModelKind("digits", tuple(range(10)), tuple(map(str, range(10))), (8, 8, 1))
    assert digits.describe() == "digits classes 0..9 (8x8x1)"
    assert ModelKind.from_tags(digits.tags()) == digits


def _main(name: str, experiment: str, dataset: str = "digits", data_dir=None, classes: str = "default", **train):
    raw = {"model": "pooling_cnn", "pooling": "max", "seed": "0", **ONE_EPOCH, **train}
    return main.run(
        data_config(dataset, data_dir, classes), train_config_from(raw), export_config(name, "1e-4"), experiment
    )


@pytest.fixture(scope="module")
def digits_main(mlflow_server, tmp_path_factory):
    """One `main` run on digits with the default (auto) registered name."""
    with module_tracking(mlflow_server, tmp_path_factory.mktemp("registry-ckpt")):
        yield _main("auto", "registry-main")


def test_auto_name_and_a_one_sentence_description(tracking, digits_main):
    assert digits_main.export.registered_model == "digits-pooling_cnn"
    client = MlflowClient()
    mv = client.get_model_version("digits-pooling_cnn", digits_main.export.version)
    assert client.get_model_version_by_alias("digits-pooling_cnn", "champion").version == mv.version
    text = mv.description
    assert "pooling_cnn" in text and "digits classes 0..9 (8x8x1)" in text and "test accuracy" in text
    assert "digits test split (360 images" in text and digits_main.train_run_id in text
    kind = ModelKind.from_tags(client.get_registered_model("digits-pooling_cnn").tags)
    assert kind == ModelKind("digits", tuple(range(10)), tuple(map(str, range(10))), (8, 8, 1))


def test_other_data_refused_before_training(tracking, digits_main, cifar_dir):
    """An explicit name holding digits models refuses a CIFAR-100 run: one line, exit 2, no run at all."""
    cmd = [sys.executable, "-m", "pipelines", "main", "--dataset", "cifar100", "--data-dir", str(cifar_dir)]
    cmd += ["--epochs", "1", "--registered-model-name", "digits-pooling_cnn", "--experiment", "registry-refused"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: registered model digits-pooling_cnn holds digits classes 0..9 (8x8x1); this run is cifar100 "
        "classes 0,33,41 (32x32x3): choose another --registered-model-name"
    )
    exp = MlflowClient().get_experiment_by_name("registry-refused")
    assert exp is None or not MlflowClient().search_runs([exp.experiment_id])  # nothing trained, nothing RUNNING
    with pytest.raises(RegistryMismatch, match="digits classes 0,1,2 \\(8x8x1\\)"):
        _main("digits-pooling_cnn", "registry-refused", classes="0,1,2")  # a class subset is another kind too


def test_runs_without_a_name_never_share_one(tracking, digits_main, cifar_dir):
    cifar = _main("auto", "registry-main", dataset="cifar100", data_dir=str(cifar_dir))
    subset = _main("auto", "registry-main", classes="0,1,2")
    assert cifar.export.registered_model == "cifar100-pooling_cnn"
    assert subset.export.registered_model == "digits-pooling_cnn-c0-1-2"
    client = MlflowClient()
    champion = client.get_model_version_by_alias("digits-pooling_cnn", "champion")
    assert ModelKind.from_tags(champion.tags).dataset == "digits"  # the CIFAR run never touched it


def _identity_onnx(shape=(8, 8, 1)) -> onnx.ModelProto:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["output"])],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, *shape])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [None, *shape])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_champion_compares_only_scores_on_the_same_test_split(tracking):
    kind = ModelKind("toy", (0, 1), ("a", "b"), (8, 8, 1))
    x = np.zeros((2, 8, 8, 1), np.float32)
    exp = mlflow.create_experiment("registry-rule")
    results = []
    for score, split in ((0.5, "A"), (0.9, "B"), (0.4, "A"), (0.6, "A")):
        spec = VersionSpec(kind, score, "test_accuracy", split * 64, f"toy scored {score} on {split}")
        with mlflow.start_run(experiment_id=exp):
            results.append(log_onnx(_identity_onnx(), x, x, "toy-rule", spec, {}).registered)
    assert [r.is_champion for r in results] == [True, False, False, True]
    assert "another test split" in results[1].reason  # 0.9 on split B is not comparable with 0.5 on A
    mv = MlflowClient().get_model_version_by_alias("toy-rule", "champion")
    assert mv.version == results[3].version and mv.tags["score"] == "0.600000"
    with pytest.raises(RegistryMismatch, match="holds toy classes 0,1 \\(8x8x1\\); this run is toy classes 0,1 "):
        check_compatible("toy-rule", ModelKind("toy", (0, 1), ("a", "b"), (16, 16, 1)))


def test_downloaded_file_and_mlmodel_describe_the_model(tracking, digits_main, tmp_path):
    from pipelines.modelcard import read

    name = digits_main.export.registered_model
    out = tmp_path / "out"
    dl = subprocess.run(
        [sys.executable, "-m", "mlflow", "artifacts", "download", "-u", f"models:/{name}@champion", "-d", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dl.returncode == 0, dl.stderr[-2000:]
    card = read(out / "model.onnx")
    assert card.class_ids == list(range(10)) and card.class_names == [str(i) for i in range(10)]
    assert card.input_shape == [8, 8, 1] and card.input_layout == "NHWC" and card.dataset == "digits"
    assert card.train_run_id == digits_main.train_run_id and len(card.test_fingerprint) == 64
    assert card.preprocessing.startswith("center-crop-box-v1")
    import yaml

    mlmodel = yaml.safe_load((out / "MLmodel").read_text())
    assert mlmodel["metadata"]["train_run_id"] == card.train_run_id
    assert json.loads(mlmodel["metadata"]["class_ids"]) == card.class_ids


def test_logged_model_has_linked_test_metrics_and_runs_have_dataset_inputs(tracking, digits_main):
    client = MlflowClient()
    parent = client.get_run(digits_main.run_id)
    model = mlflow.get_logged_model(digits_main.export.model_id)
    metrics = {m.key: m for m in model.metrics}
    assert metrics["test_accuracy"].value == pytest.approx(digits_main.summary["test_accuracy"])
    assert metrics["test_accuracy"].dataset_name == "digits-test"
    found = mlflow.search_logged_models(experiment_ids=[parent.info.experiment_id], output_format="list")
    assert digits_main.export.model_id in {m.model_id for m in found}
    assert digits_main.export.model_id in {i.model_id for i in parent.inputs.model_inputs}  # parent links the model
    assert model.source_run_id == parent.info.run_id and model.name == "digits-pooling_cnn"  # listed under `main`
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'", max_results=10
    )
    for run in [parent, *(r for r in children if r.data.tags["step"] in ("train", "evaluate", "export_onnx"))]:
        names = {d.dataset.name for d in run.inputs.dataset_inputs}
        assert {"digits-train", "digits-test"} <= names, run.data.tags["step"]


def test_environment_is_tags_and_experiments_are_model_development(tracking, digits_main):
    client = MlflowClient()
    parent = client.get_run(digits_main.run_id)
    assert parent.data.tags["env.torch"].startswith("2.13") and parent.data.tags["env.git_commit"]
    assert not [k for k in parent.data.params if k.startswith("env.")]  # params are hyper-parameters only
    exp = client.get_experiment(parent.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"


def test_commands_print_a_link_to_the_training_view(tracking):
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines", "prep", "--dataset", "digits", "--experiment", "registry-link"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    exp = MlflowClient().get_experiment_by_name("registry-link")
    (run,) = MlflowClient().search_runs([exp.experiment_id])
    link = f"{tracking}/#/experiments/{exp.experiment_id}/runs/{run.info.run_id}?workflowType=machine_learning"
    assert f"view: {link}" in proc.stderr
