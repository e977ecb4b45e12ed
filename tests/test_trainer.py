"""The training loop: learns, is deterministic, checkpoints safely and resumes exactly."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from models import create_model
from pipelines.device import pick_precision
from pipelines.trainer import augment_batch, fit, load_checkpoint, make_optimizer, make_scheduler

RECIPE = {
    "optimizer": "sgd",
    "lr": 5e-3,
    "momentum": 0.9,
    "weight_decay": 0.0,
    "batch_size": 16,
    "epochs": 4,
    "lr_schedule": "none",
    "augment": False,
}


@pytest.fixture(scope="module")
def tensors(cifar_dir):
    from pipelines.data import load_dataset

    ds = load_dataset("cifar100", cifar_dir)
    return tuple(torch.from_numpy(a) for a in (ds.x_train, ds.y_train, ds.x_test, ds.y_test))


def model(seed: int = 0):
    torch.manual_seed(seed)
    return create_model("pooling_cnn", num_classes=3, pooling="stride").to(memory_format=torch.channels_last)


def train(tensors, recipe=RECIPE, **kw):
    x, y, xt, yt = tensors
    m = kw.pop("net", None) or model()
    state = fit(
        m, x_train=x.float(), y_train=y, x_test=xt.float(), y_test=yt, recipe=recipe, seed=0, progress=False, **kw
    )
    return m, state


def test_learns_the_synthetic_task(tensors):
    _, state = train(tensors, {**RECIPE, "epochs": 12, "lr": 0.02})
    first, last = state.history[0], state.history[-1]
    assert last["train_loss"] < first["train_loss"]
    assert last["test_acc"] > 0.8  # chance is 1/3
    for key in ("train_loss_p25", "train_loss_p75", "train_acc", "test_loss", "test_acc_p25", "epoch_seconds", "lr"):
        assert key in last
    assert last["train_loss_p25"] <= last["train_loss_p75"]


def test_same_seed_same_weights(tensors):
    a, _ = train(tensors)
    b, _ = train(tensors)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def test_resuming_a_checkpoint_of_another_model_is_a_one_line_error(tensors, tmp_path):
    from pipelines.parsing import ConfigError

    ckpt = tmp_path / "last.pt"
    train(tensors, {**RECIPE, "epochs": 1}, checkpoint_path=ckpt)
    torch.manual_seed(0)
    other = create_model("pooling_cnn", num_classes=3, pooling="max")  # same names, other layer order
    with pytest.raises(ConfigError, match=r"does not fit this model .*Missing key.*start a new run") as e:
        train(tensors, {**RECIPE, "epochs": 2}, net=other, checkpoint_path=ckpt, resume=True)
    assert "\n" not in str(e.value)


def test_eval_every_still_evaluates_the_last_epoch(tensors):
    _, state = train(tensors, {**RECIPE, "epochs": 5}, eval_every=2)
    assert [h["epoch"] for h in state.history if "test_acc" in h] == [2, 4, 5]


def test_interrupt_checkpoints_and_resume_matches_uninterrupted(tensors, tmp_path):
    reference, ref_state = train(tensors)
    ckpt = tmp_path / "last.pt"

    def interrupt_after_two(epoch, _metrics):
        if epoch == 2:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C: the loop stops at the end of this epoch

    with pytest.raises(KeyboardInterrupt, match="after epoch 2; checkpoint saved"):
        train(tensors, checkpoint_path=ckpt, checkpoint_every=100, on_epoch=interrupt_after_two)
    blob = torch.load(ckpt, weights_only=True)
    assert blob["epoch"] == 2 and len(blob["history"]) == 2

    fresh = model(seed=123)  # different init: everything must come from the checkpoint
    resumed, state = train(tensors, checkpoint_path=ckpt, resume=True, net=fresh)
    assert state.epoch == 4 and [h["epoch"] for h in state.history] == [1, 2, 3, 4]
    for (k, va), vb in zip(reference.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(va, vb, rtol=0, atol=1e-6, msg=k)
    assert state.history[-1]["test_loss"] == pytest.approx(ref_state.history[-1]["test_loss"], abs=1e-6)


def test_checkpoint_loads_with_weights_only(tensors, tmp_path):
    ckpt = tmp_path / "c.pt"
    m, _ = train(tensors, {**RECIPE, "epochs": 2}, checkpoint_path=ckpt)
    other = model(seed=5)
    opt = make_optimizer(other, RECIPE)
    state = load_checkpoint(ckpt, other, opt, make_scheduler(opt, RECIPE), torch.Generator())
    assert state.epoch == 2
    for va, vb in zip(m.state_dict().values(), other.state_dict().values()):
        assert torch.equal(va, vb)


def test_lr_schedules():
    net = torch.nn.Linear(2, 2)
    for schedule, expected in (("step", [1.0, 1.0, 0.1, 0.01]), ("linear", [1.0, 0.8, 2 / 3, 4 / 7])):
        recipe = {**RECIPE, "lr": 1.0, "epochs": 4, "lr_schedule": schedule}
        opt = make_optimizer(net, recipe)
        sched = make_scheduler(opt, recipe)
        lrs = []
        for _ in range(4):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        assert lrs == pytest.approx(expected)


def test_augment_keeps_shape_and_pixels():
    x = torch.arange(2 * 8 * 8 * 3, dtype=torch.float32).reshape(2, 8, 8, 3)
    out = augment_batch(x, torch.Generator().manual_seed(0), max_shift=2)
    assert out.shape == x.shape
    assert set(out.unique().tolist()) <= set(x.unique().tolist()) | {0.0}  # shifted (zero fill) or flipped


def test_precision_auto_never_picks_emulated_bf16(monkeypatch):
    import pipelines.device as device

    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)
    assert pick_precision("auto", torch.device("cpu")) == "fp32"
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    assert pick_precision("auto", torch.device("cpu")) == "bf16"
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        pick_precision("fp16", torch.device("cpu"))


def test_cpu_allocator_keeps_freed_memory_unless_told_not_to(monkeypatch):
    import platform

    import pipelines.device as device

    tune = device.tune_cpu_allocator.__wrapped__  # the cached call has run already in this process
    monkeypatch.setenv(device.ALLOCATOR_ENV, "default")
    assert tune() == "default"
    monkeypatch.delenv(device.ALLOCATOR_ENV)
    expected = "retain" if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc" else "default"
    assert tune() == expected
    assert device.host_allocator(torch.device("cpu")) == expected
