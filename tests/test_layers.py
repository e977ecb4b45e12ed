"""``models.layers``: the same functions as the reference notebook's layers (values, gradients), in a faster layout."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.common import ReferenceNormalize, make_model, reference_model  # the benchmark's reference baseline
from models.cifar100 import POOLINGS
from models.layers import Flatten, FlattenLinear, Normalize

MEAN, STD = (0.5074, 0.4867, 0.4411), (0.2011, 0.1987, 0.2025)


def test_normalize_equals_the_notebook_formula():
    x = torch.rand(5, 7, 9, 3, generator=torch.Generator().manual_seed(0)) * 255  # H != W: rows are W*C long
    got = Normalize(MEAN, STD)(x)
    torch.testing.assert_close(got, ReferenceNormalize(MEAN, STD, "cpu")(x), rtol=1e-6, atol=1e-6)
    assert got.shape == (5, 3, 7, 9)
    assert got.is_contiguous(memory_format=torch.channels_last)  # convs after it run channels_last


def test_normalize_state_dict_keeps_mean_and_std():
    assert set(Normalize(MEAN, STD).state_dict()) == {"mean", "std"}


def channels_last_input() -> torch.Tensor:
    x = torch.randn(4, 6, 3, 5, generator=torch.Generator().manual_seed(0))
    return x.contiguous(memory_format=torch.channels_last).requires_grad_()


def test_flatten_values_and_gradient_in_training():
    x = channels_last_input()
    w = torch.randn(6 * 3 * 5, 2)
    (Flatten()(x) @ w).sum().backward()
    ref = x.detach().clone().requires_grad_()
    (nn.Flatten()(ref) @ w).sum().backward()
    torch.testing.assert_close(Flatten()(x), nn.Flatten()(x))  # C,H,W order, like nn.Flatten
    torch.testing.assert_close(x.grad, ref.grad)


def test_flatten_hands_relu_a_gradient_in_its_own_layout():
    """ReLU's backward must see one layout: the slow mixed-layout path is what Flatten removes."""
    x = channels_last_input()
    seen = {}
    h = torch.relu(x)
    h.register_hook(lambda g: seen.setdefault("grad", g))
    Flatten()(h).sum().backward()
    assert seen["grad"].is_contiguous(memory_format=torch.channels_last)


def test_flatten_in_eval_and_without_grad_is_plain_flatten():
    x = channels_last_input()
    layer = Flatten().eval()
    out = layer(x)
    assert out.grad_fn is not None and "GradInChannelsLast" not in type(out.grad_fn).__name__
    with torch.no_grad():
        assert torch.equal(Flatten()(x), x.flatten(1))


def flatten_linear_pair() -> tuple[FlattenLinear, nn.Sequential]:
    """A FlattenLinear and nn.Flatten + nn.Linear with the same weights (map 6x3x5: H != W)."""
    torch.manual_seed(0)
    ours = FlattenLinear(6, 3, 5, 4)
    ref = nn.Sequential(nn.Flatten(), nn.Linear(6 * 3 * 5, 4))
    ref[1].load_state_dict(ours.state_dict())
    return ours, ref


def test_flatten_linear_is_flatten_then_linear_in_training():
    ours, ref = flatten_linear_pair()
    x = channels_last_input()
    x_ref = x.detach().clone().requires_grad_()
    out = ours(x)
    torch.testing.assert_close(out, ref(x_ref), rtol=1e-5, atol=1e-6)
    out.square().sum().backward()
    ref(x_ref).square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-6)
    assert x.grad.is_contiguous(memory_format=torch.channels_last)  # no layout change for the ReLU before it
    for (name, p), q in zip(ours.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_flatten_linear_state_dict_and_eval_path_are_nn_linear():
    ours, ref = flatten_linear_pair()
    assert set(ours.state_dict()) == {"weight", "bias"} and ours.weight.shape == (4, 6 * 3 * 5)
    x = channels_last_input()
    ours.eval()
    with torch.no_grad():
        assert torch.equal(ours(x), ref(x))  # eval / ONNX export: exactly flatten + linear
        assert torch.equal(ours(x.flatten(1)), ref(x))  # an already flat input is accepted too


@pytest.mark.parametrize("pooling", POOLINGS)
def test_pooling_cnn_is_the_notebook_network(pooling):
    """Our pooling_cnn (vectorised Normalize, max pool before its ReLU, NHWC-order FlattenLinear) computes
    the reference notebook's network (``bench.common.reference_model``: the notebook's layers, which the
    benchmark's reference loop trains, given our initial weights): same logits and same gradients."""
    ours = make_model(pooling, 0)  # channels_last, as the trainer runs it
    reference = reference_model(pooling, 0)
    x = torch.rand(16, 32, 32, 3, generator=torch.Generator().manual_seed(1)) * 255
    y = torch.randint(0, 3, (16,), generator=torch.Generator().manual_seed(2))
    logits = ours(x)
    torch.testing.assert_close(logits, reference(x), rtol=1e-4, atol=1e-5)
    F.cross_entropy(logits, y).backward()
    F.cross_entropy(reference(x), y).backward()
    for (name, p), q in zip(ours.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
