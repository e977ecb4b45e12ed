"""U-Net shapes, generated data, the PNG folder format, IoU/Dice, and ``segment`` end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from models import count_params, create_model, model_info
from pipelines.data import DataError
from pipelines.data import segmentation as segdata
from pipelines.parsing import ConfigError
from pipelines.segmentation_config import config_from_run, segment_config
from pipelines.segmentation_metrics import (
    confusion,
    dice_loss,
    multiclass_dice_loss,
    predict_mask,
    seg_loss,
    segmentation_scores,
)
from tests.conftest import crash_after_epoch

TINY = {"n_train": 12, "n_test": 4, "size": (24, 20), "max_digits": 2, "seed": 3}
TINY_LEARN, TINY_LEARN_EPOCHS = 96, 40  # canvases, epochs of the multiclass learning test (~15 s, 1 thread)


# ---------------------------------------------------------------- model


def test_unet_is_registered_for_segdigits():
    info = model_info("unet_small")
    assert info.dataset == "segdigits" and set(info.options) == {"base", "depth"}
    assert info.recipe["optimizer"] == "adam"
    assert count_params(create_model("unet_small")) == 357_985  # breakdown in the builder's docstring


@pytest.mark.parametrize(("h", "w", "classes"), [(21, 19, 1), (45, 47, 11), (16, 17, 11), (33, 32, 1)])
def test_unet_output_shape_for_odd_sizes(h, w, classes):
    torch.manual_seed(0)
    model = create_model("unet_small", num_classes=classes, in_shape=(h, w, 1), mean=(0.1,), std=(0.2,), base=4)
    x = torch.rand(2, h, w, 1) * 255
    out = model(x)
    assert out.shape == (2, classes, h, w)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} gets no gradient"


def test_unet_rejects_inputs_smaller_than_its_depth():
    with pytest.raises(ValueError, match="at least 16 px"):
        create_model("unet_small", in_shape=(12, 40, 1), depth=4)


# ---------------------------------------------------------------- generated data


def test_generated_data_is_deterministic_and_well_formed():
    a = segdata.generate(**TINY)
    b = segdata.generate(**TINY)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    c = segdata.generate(**{**TINY, "seed": 4})
    assert not np.array_equal(a["x_train"], c["x_train"])
    assert a["x_train"].shape == (12, 24, 20, 1) and a["x_train"].dtype == np.uint8
    assert a["y_train"].shape == (12, 24, 20) and a["y_test"].shape == (4, 24, 20)
    assert a["y_train"].max() <= 10
    assert all(m.any() for m in a["y_train"]), "every canvas shows a digit"
    fg = a["y_train"] > 0  # digit pixels are brighter than the background on average
    assert a["x_train"][..., 0][fg].mean() > a["x_train"][..., 0][~fg].mean() + 60


def test_generated_data_is_cached_and_tasks_share_canvases(monkeypatch):
    multi = segdata.load_generated("multiclass", **TINY)
    path = segdata.cache_path(TINY["n_train"], TINY["n_test"], TINY["size"], TINY["max_digits"], TINY["seed"])
    assert path.exists() and path.suffix == ".npz"
    monkeypatch.setattr(segdata, "generate", lambda *a, **k: pytest.fail("cache not used"))
    binary = segdata.load_generated("binary", **TINY)
    np.testing.assert_array_equal(binary.x_train, multi.x_train)
    np.testing.assert_array_equal(binary.y_test, multi.y_test > 0)
    assert binary.class_names == ["background", "digit"] and binary.out_channels == 1
    assert multi.num_classes == multi.out_channels == 11
    assert binary.fingerprint() != multi.fingerprint()


# ---------------------------------------------------------------- folder format


def test_folder_round_trip(tmp_path):
    ds = segdata.load_generated("multiclass", **TINY)
    segdata.write_folder(ds, tmp_path / "set")
    back = segdata.load_folder(tmp_path / "set", "multiclass")
    np.testing.assert_array_equal(back.x_train, ds.x_train)
    np.testing.assert_array_equal(back.y_train, ds.y_train)
    np.testing.assert_array_equal(back.y_test, ds.y_test)
    assert back.class_names == ds.class_names and back.mean == pytest.approx(ds.mean)
    binary = segdata.load_folder(tmp_path / "set", "binary")
    np.testing.assert_array_equal(binary.y_train, ds.y_train > 0)


def test_unsplit_rgb_folder_with_0_255_masks(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)).save(tmp_path / "images" / f"p{i}.png")
        Image.fromarray(((rng.random((9, 11)) > 0.5) * 255).astype(np.uint8)).save(tmp_path / "masks" / f"p{i}.png")
    ds = segdata.load_folder(tmp_path, "binary", seed=1)
    assert ds.x_train.shape == (8, 9, 11, 3) and ds.x_test.shape == (2, 9, 11, 3)
    assert set(np.unique(ds.y_train)) == {0, 1}
    again = segdata.load_folder(tmp_path, "binary", seed=1)
    np.testing.assert_array_equal(again.x_test, ds.x_test)

    (tmp_path / "masks" / "p3.png").unlink()
    with pytest.raises(DataError, match="no mask for 1 image"):
        segdata.load_folder(tmp_path, "binary")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "masks" / "p3.png")
    with pytest.raises(DataError, match="p3.png: image is 11x9 but its mask 5x5"):
        segdata.load_folder(tmp_path, "binary")
    with pytest.raises(DataError, match="expected folders images/ and masks/"):
        segdata.load_folder(tmp_path / "images", "binary")


# ---------------------------------------------------------------- metrics and losses


def test_iou_dice_pixel_accuracy_by_hand():
    true = torch.tensor([[[0, 1], [1, 1]]])
    pred = torch.tensor([[[0, 1], [0, 1]]])
    cm = confusion(pred, true, 3).numpy()
    np.testing.assert_array_equal(cm, [[1, 0, 0], [1, 2, 0], [0, 0, 0]])
    s = segmentation_scores(cm)
    # class 0: TP 1, FP 1, FN 0 -> IoU 1/2, Dice 2/3; class 1: TP 2, FP 0, FN 1 -> IoU 2/3, Dice 4/5
    np.testing.assert_allclose(s["iou"][:2], [1 / 2, 2 / 3])
    np.testing.assert_allclose(s["dice"][:2], [2 / 3, 4 / 5])
    assert math.isnan(s["iou"][2]) and math.isnan(s["dice"][2])  # class 2 absent everywhere: undefined
    assert s["pixel_acc"] == pytest.approx(3 / 4)
    assert s["miou"] == pytest.approx((1 / 2 + 2 / 3) / 2) and s["miou_fg"] == pytest.approx(2 / 3)
    assert s["mdice"] == pytest.approx((2 / 3 + 4 / 5) / 2)

    perfect = segmentation_scores(confusion(true, true, 2).numpy())
    assert perfect["miou"] == perfect["mdice"] == perfect["pixel_acc"] == 1.0
    disjoint = segmentation_scores(confusion(1 - true, true, 2).numpy())
    assert disjoint["miou"] == disjoint["pixel_acc"] == 0.0


def test_losses_and_mask_decoding():
    target = torch.tensor([[[0, 1], [1, 0]]])
    assert dice_loss(target.float(), target.float()) == pytest.approx(0.0)
    assert dice_loss(1 - target.float(), target.float()) > 0.7
    sure = (target.float() * 2 - 1)[:, None] * 20  # logit +-20: right with certainty
    assert seg_loss(sure, target, "binary") < 1e-3
    assert torch.equal(predict_mask(sure, "binary"), target)
    logits = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 20
    assert seg_loss(logits, target, "multiclass") < 1e-3
    assert torch.equal(predict_mask(logits, "multiclass"), target)


def test_multiclass_dice_ignores_background_and_punishes_missing_foreground():
    target = torch.tensor([[[0, 0, 0, 0], [0, 1, 1, 0], [0, 2, 2, 0]]])
    onehot = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float()
    assert multiclass_dice_loss(onehot, target) == pytest.approx(0.0)
    all_background = torch.zeros_like(onehot)
    all_background[:, 0] = 1
    # classes 1 and 2: no overlap, 2 true pixels each -> 1 - 1 / (2 + 1) each (eps 1)
    assert multiclass_dice_loss(all_background, target) == pytest.approx(2 / 3)
    swapped = onehot[:, [0, 2, 1]]  # digits found but their classes swapped: 1 - 1 / (2 + 2 + 1) each
    assert multiclass_dice_loss(swapped, target) == pytest.approx(4 / 5)
    wrong_background = onehot.clone()
    wrong_background[:, 0, 0, 0], wrong_background[:, 1, 0, 0] = 0, 1  # one background pixel called 1
    # class 1 only: 1 - (2 * 2 + 1) / (3 + 2 + 1); background itself is not scored
    assert multiclass_dice_loss(wrong_background, target) == pytest.approx((1 - 5 / 6) / 2)


# ---------------------------------------------------------------- config and CLI


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"task": "panoptic"}, "task must be one of binary, multiclass; got 'panoptic'"),
        ({"size": "8"}, "size must be N or HxW"),
        ({"size": "16", "depth": "5"}, "depth 5 needs a size of at least 32 px"),
        ({"epochs": "two"}, "epochs must be an integer"),
        ({"model": "cnn_reference"}, "model must be one of unet_small"),
        ({"precision": "fp16", "device": "cpu"}, "fp16 needs CUDA"),
        ({"colour": "red"}, "unknown segment parameter"),
    ],
)
def test_bad_parameters_fail_with_one_line(kw, message):
    with pytest.raises(ConfigError, match=message):
        segment_config(**kw)


def test_config_defaults_and_recipe():
    cfg = segment_config(size="45x47", lr="3e-3")
    assert cfg.size == (45, 47) and cfg.task == "binary"
    recipe = cfg.recipe()
    assert recipe["lr"] == 3e-3 and recipe["optimizer"] == "adam" and recipe["augment"] is False
    assert recipe["batch_size"] == 8 and recipe["epochs"] == 25  # unet_small's recipe (models/unet.py)
    assert cfg.raw["lr"] == "3e-3"  # logged as given (mlflow run's spelling)


def test_cli_rejects_bad_task_before_any_run(tracking):
    from click.testing import CliRunner
    from mlflow.tracking import MlflowClient

    from pipelines.cli import cli

    def count_runs() -> int:
        client = MlflowClient()
        return len(client.search_runs([e.experiment_id for e in client.search_experiments()]))

    before = count_runs()
    result = CliRunner().invoke(cli, ["segment", "--task", "instance"])
    assert result.exit_code == 2
    assert "task must be one of binary, multiclass" in result.output
    assert count_runs() == before


# ---------------------------------------------------------------- end to end


@pytest.mark.e2e
def test_segment_end_to_end(tracking, tmp_path):
    from mlflow.tracking import MlflowClient

    from pipelines import segment
    from pipelines.trained import load_trained

    cfg = segment_config(
        task="multiclass",
        n_train=24,
        n_test=6,
        size="21x19",  # odd sizes all the way through the U-Net and the ONNX export
        base=4,
        depth=2,
        epochs=2,
        batch_size=8,
        registered_model_name="seg-test-multiclass",
    )
    result = segment.run(cfg, experiment="segment-tests", progress=False)
    client = MlflowClient()
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    m = run.data.metrics
    for key in ("test_miou", "test_mdice", "test_pixel_acc", "train_miou", "test_iou_class_0", "test_dice_class_0"):
        assert key in m and 0.0 <= m[key] <= 1.0, key
    assert m["onnx_max_abs_diff"] < 1e-4 and m["onnx_parity_batch"] == 6  # batch 6: export saw batch 2
    assert [h.step for h in client.get_metric_history(run.info.run_id, "test_epoch_miou")] == [1, 2]
    assert run.data.params["task"] == "multiclass" and run.data.params["data.in_shape"] == "21x19x1"
    assert run.data.tags["step"] == "segment" and result.registered_model == "seg-test-multiclass"
    artifacts = {f.path for d in ("figures", "reports", "model") for f in client.list_artifacts(run.info.run_id, d)}
    assert {
        "figures/predictions_test.png",
        "figures/learning_curves.png",
        "reports/segmentation_report_test.json",
        "reports/segmentation_report_test.csv",
        "model/state_dict.pt",
        "model/model_config.json",
    } <= artifacts
    model, config = load_trained(run.info.run_id)  # weights_only reload through the train step's helper
    assert config["task"] == "multiclass" and config["num_classes"] == 11
    x = torch.from_numpy(segment.load_data(cfg).x_test[:2]).float()
    assert model(x).shape == (2, 11, 21, 19)


# ---------------------------------------------------------------- learning and resuming


def _all_background_foreground_miou(y: torch.Tensor) -> float:
    return segmentation_scores(confusion(torch.zeros_like(y), y, 11).numpy())["miou_fg"]


def test_multiclass_training_beats_all_background_on_foreground_iou():
    """480 steps on a tiny generated set: the digits get their classes, not just 'not background'.

    The trivial all-background predictor scores 0 on every digit class (its pixel accuracy is high).
    Measured (1 thread): foreground mIoU 0.73 train / 0.21 test, every digit class above 0. The old
    recipe (default init, cross-entropy, batch 32) stays on its plateau here.
    """
    from pipelines.segmentation_metrics import evaluate_tensors, mask_hooks
    from pipelines.trainer import fit

    ds = segdata.load_generated("multiclass", n_train=TINY_LEARN, n_test=32, size=(32, 32), max_digits=2, seed=0)
    torch.manual_seed(0)
    model = create_model("unet_small", num_classes=11, in_shape=ds.in_shape, mean=ds.mean, std=ds.std, depth=2)
    x, y = torch.from_numpy(ds.x_train).float(), torch.from_numpy(ds.y_train).long()
    xt, yt = torch.from_numpy(ds.x_test).float(), torch.from_numpy(ds.y_test).long()
    recipe = {**segment_config(task="multiclass").recipe(), "epochs": TINY_LEARN_EPOCHS}
    data = {"x_train": x, "y_train": y, "x_test": xt, "y_test": yt}
    fit(model, **data, recipe=recipe, seed=0, progress=False, eval_every=100, **mask_hooks("multiclass", 11))
    # (split, floor of the foreground mIoU, IoU that 80 % of the digit classes present must pass)
    for split, xs, ys, floor, per_class in (("train", x, y, 0.5, 0.2), ("test", xt, yt, 0.1, 0.0)):
        assert _all_background_foreground_miou(ys) == 0.0
        _, cm, _ = evaluate_tensors(model, xs, ys, "multiclass", 11, 64)
        scores = segmentation_scores(cm.numpy())
        digits = scores["iou"][1:][~np.isnan(scores["iou"][1:])]
        assert len(digits) == 10 and scores["miou_fg"] > floor, (split, scores["iou"])
        assert (digits > per_class).mean() >= 0.8, (split, scores["iou"])  # most digits, not one or two


def test_segment_resume_continues_exactly_like_an_uninterrupted_run(tracking, monkeypatch):
    """A crash after epoch 2 (checkpoint of epoch 1), then ``--resume``: same weights and metrics as never stopping."""
    import uuid

    from mlflow.tracking import MlflowClient

    from pipelines import segment
    from pipelines.trained import checkpoint_dir, load_trained

    raw = {
        "task": "multiclass",
        "n_train": 20,
        "n_test": 6,
        "size": "20",
        "base": 4,
        "depth": 2,
        "epochs": 4,
        "batch_size": 8,  # 3 batches per epoch: the shuffle order matters
        "checkpoint_every": 1,
        "registered_model_name": "none",
    }
    import pipelines.runner as runner

    real_fit = runner.fit
    crashing_fit = crash_after_epoch(real_fit, 2, "power cut at epoch 2")
    client = MlflowClient()
    name = f"segment-resume-{uuid.uuid4().hex[:8]}"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same thread count for everything compared
    try:
        monkeypatch.setattr(runner, "fit", crashing_fit)
        with pytest.raises(RuntimeError, match="power cut"):
            segment.run(segment_config(**raw), experiment=name, progress=False)
        (crashed,) = client.search_runs([client.get_experiment_by_name(name).experiment_id])
        rid = crashed.info.run_id
        assert crashed.info.status == "FAILED"
        assert torch.load(checkpoint_dir(rid) / "last.pt", weights_only=True)["epoch"] == 1

        monkeypatch.setattr(runner, "fit", real_fit)
        resumed = segment.run(config_from_run(rid), resume_run_id=rid, progress=False)
        reference = segment.run(segment_config(**raw), experiment=f"{name}-reference", progress=False)
    finally:
        torch.set_num_threads(threads)
    assert resumed.run_id == rid and client.get_run(rid).info.status == "FINISHED"
    for key in ("train_loss", "test_epoch_miou"):
        assert sorted(m.step for m in client.get_metric_history(rid, key)) == [1, 2, 3, 4], key  # none twice
    a, b = load_trained(rid)[0].state_dict(), load_trained(reference.run_id)[0].state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    for key in ("test_miou", "test_eval_loss", "train_miou"):
        assert resumed.metrics[key] == pytest.approx(reference.metrics[key], abs=1e-6), key
