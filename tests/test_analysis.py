"""Analysis entry points end to end on tiny trained models against the test tracking server."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from pipelines.analysis import feature_maps, gradient_flow, invariance, landscape_run
from pipelines.analysis.source import resolve_train_run
from pipelines.config import data_config, train_config
from tests.conftest import module_tracking


@pytest.fixture(scope="module")
def trained(mlflow_server, cifar_dir, tmp_path_factory):
    """A pooling_cnn and an fcnet trained 2 epochs on the synthetic CIFAR-100 (train run ids)."""
    from pipelines.train import run

    with module_tracking(mlflow_server, tmp_path_factory.mktemp("ckpt")):
        data = data_config("cifar100", str(cifar_dir), "default")
        ids = {
            name: run(
                data, train_config(model=name, epochs=2, batch_size=32, device="cpu"), experiment="analysis"
            ).run_id
            for name in ("pooling_cnn", "fcnet")
        }
    return {**ids, "data": data}


# What each analysis run must hold, by its ``step`` tag: (metric names, artifact paths).
EXPECTED: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "landscape": (
        ("loss_center", "sharpness", "grid_seconds", "points_per_second", "grid_loss_center"),
        (
            "landscape/grid.npy",
            "landscape/grid.csv",
            "landscape/curve.csv",
            "landscape/curve_1d.png",
            "landscape/contour_2d.png",
            "landscape/surface_3d.png",
        ),
    ),
    "gradients": (
        ("grad_mean_abs/1", "grad_norm/1", "grad_mean_abs/6", "grad_norm/6", "train_loss", "vanishing_layers"),
        ("gradients/gradient_flow.png", "gradients/history.json"),
    ),
    "features": (
        ("conv_layers", "act_mean/1", "dead_fraction/3"),
        (
            "features/filters_first_layer.png",
            "features/activations_first_layer.png",
            "features/maps_1.png",
            "features/maps_3.png",
        ),
    ),
    "invariance": (
        ("fc_h_accuracy", "cnn_v_agreement", "cnn_horizontal_accuracy_at_max"),
        ("invariance/shift_table.csv", "invariance/shift_table.json", "invariance/shift_invariance.png"),
    ),
}


def _check(run_id: str, source: str, step: str):
    """The ``step`` run ``run_id`` of train run ``source``: finished, with what ``EXPECTED[step]`` lists; the run."""
    metrics, artifacts = EXPECTED[step]
    client = MlflowClient()
    r = client.get_run(run_id)
    assert r.info.status == "FINISHED"
    assert r.data.tags["step"] == step and r.data.tags["source_run_id"] == source
    assert set(metrics) <= set(r.data.metrics), sorted(r.data.metrics)
    names = {a.path for folder in {p.split("/")[0] for p in artifacts} for a in client.list_artifacts(run_id, folder)}
    assert set(artifacts) <= names, sorted(names)
    return r


def test_landscape_run_and_models_uri(tracking, trained):
    src = trained["pooling_cnn"]
    client = MlflowClient()  # a registered version whose tag names the train run, as export_onnx writes it
    client.create_registered_model("analysis-cnn")
    mv = client.create_model_version("analysis-cnn", f"runs:/{src}/model", src, tags={"train_run_id": src})
    client.set_registered_model_alias("analysis-cnn", "champion", mv.version)
    assert resolve_train_run("models:/analysis-cnn@champion") == src

    result = landscape_run.landscape("models:/analysis-cnn@champion", "li", step1d=0.25, step2d=0.5, progress=False)
    rid, m = result.run_id, result.metrics
    r = _check(rid, src, "landscape")
    assert r.data.params["grid_side"] == "7" and r.data.params["curve_points"] == "13"
    assert m["grid_points"] == 49
    # li mode: α=β=0 is the trained model itself, so curve and grid agree at the centre
    assert m["loss_center"] == pytest.approx(m["grid_loss_center"], rel=1e-5)
    z = np.load(mlflow.artifacts.download_artifacts(f"runs:/{rid}/landscape/grid.npy"))
    assert z.shape == (7, 7) and np.isfinite(z).all()


def test_landscape_max_points_caps_the_axes():
    assert len(landscape_run._axis(0.005, 1.5, None)) == 601
    assert len(landscape_run._axis(0.005, 1.5, 25)) == 25
    assert len(landscape_run._axis(0.05, 1.5, 5)) == 5 and 0.0 in landscape_run._axis(0.05, 1.5, 5)


def test_gradients_run(tracking, trained):
    src = trained["pooling_cnn"]
    result = CliRunner().invoke(
        __import__("pipelines.cli", fromlist=["cli"]).cli,
        ["gradients", "--source", src, "--epochs", "2"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    rid = result.output.split("gradients run ")[1].split(":")[0]
    r = _check(rid, src, "gradients")
    assert [m.step for m in MlflowClient().get_metric_history(rid, "grad_norm/3")] == [1, 2]
    assert r.data.tags["vanishing_layers"] == "none" and r.data.tags["exploding_layers"] == "none"


def test_gradient_recorder_flags():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    rec = gradient_flow.GradientRecorder(model)
    for _ in range(2):
        (model(torch.ones(5, 4)).sum() * 1e6).backward()
    row = rec.epoch_end()
    rec.remove()
    assert rec.layers == ["0", "1"] and row["grad_norm/1"] > gradient_flow.EXPLODING
    assert rec.flags()["exploding"] == ["0", "1"] and rec.flags()["vanishing"] == []


def test_features_run(tracking, trained):
    src = trained["pooling_cnn"]
    result = feature_maps.features(src, n_images=2, max_maps=8)
    _check(result.run_id, src, "features")
    assert result.metrics["conv_layers"] == 2


def test_shift_images_zero_fill():
    x = torch.arange(16.0).reshape(1, 4, 4, 1)
    right = invariance.shift_images(x, dx=1)
    assert right[0, :, 0, 0].eq(0).all() and torch.equal(right[0, :, 1:, 0], x[0, :, :3, 0])
    down = invariance.shift_images(x, dy=2)
    assert down[0, :2].eq(0).all() and torch.equal(down[0, 2:], x[0, :2])
    assert invariance.shift_images(x, dx=4).eq(0).all()


def test_invariance_run(tracking, trained):
    fc, cnn = trained["fcnet"], trained["pooling_cnn"]
    result = invariance.invariance(fc, cnn, max_shift=8)
    rid, df = result.run_id, result.table
    _check(rid, cnn, "invariance")
    assert len(df) == 2 * 2 * 9 and (df[df["shift"] == 0]["agreement"] == 1.0).all()
    assert [m.step for m in MlflowClient().get_metric_history(rid, "fc_h_accuracy")] == list(range(9))
    assert MlflowClient().get_run(rid).data.tags["fc_run_id"] == fc
