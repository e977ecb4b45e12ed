"""Loss landscape: the direction is the reference notebook's ``generate_theta``; the fast path equals a plain loop."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from models import create_model
from pipelines.analysis.landscape import (
    loss_curve,
    loss_grid,
    perturbed_parameters,
    point_coefficients,
    random_direction,
    reference_alphas,
    reference_grid_axis,
    summarize,
    trainable_parameters,
)


def reference_generate_theta(model: nn.Module, seed=None):
    """The reference notebook's ``generate_theta``, verbatim but for the model argument (and no state_dict reload)."""
    model.eval()
    if seed is not None:
        np.random.seed(seed)
    params = []
    with torch.no_grad():
        for w in model.parameters():
            params.append(w.detach().cpu().numpy())
    params_n = np.concatenate([p.flatten() for p in params]).size
    random_theta_flat = np.random.normal(size=params_n)
    random_theta = []
    offset = 0
    for p in params:
        p_weights = p.flatten().size
        random_theta.append(random_theta_flat[offset : offset + p_weights].reshape(*p.shape))
        # normalization
        rank = random_theta[-1].shape.__len__()
        if rank == 4:  # convolution
            norm_r = np.sqrt((random_theta[-1] ** 2).sum(axis=-1).sum(axis=-1))
            norm_p = np.sqrt((p**2).sum(axis=-1).sum(axis=-1))
            norm = (norm_p / norm_r).reshape(*norm_p.shape, 1, 1)
        elif rank == 2:  # fully connected
            norm_r = np.sqrt((random_theta[-1] ** 2).sum(axis=-1))
            norm_p = np.sqrt((p**2).sum(axis=-1))
            norm = (norm_p / norm_r).reshape(-1, 1)
        elif rank == 1:  # bias
            norm_r = np.sqrt((random_theta[-1] ** 2).sum())
            norm_p = np.sqrt((p**2).sum())
            norm = norm_p / norm_r
        random_theta[-1] = random_theta[-1] * norm
        offset += p_weights
    assert offset == params_n, "Not all params are utilized. Expected %d, found %d" % (params_n, offset)  # noqa: UP031
    return random_theta


@pytest.fixture(scope="module")
def tiny():
    """A small max-pool CNN (16x16 inputs) with a few SGD steps so the landscape is not flat, and 24 images."""
    torch.manual_seed(0)
    model = create_model("pooling_cnn", num_classes=3, in_shape=(16, 16, 3), pooling="max")
    g = torch.Generator().manual_seed(1)
    x = torch.rand(24, 16, 16, 3, generator=g) * 255
    y = torch.arange(24) % 3
    x[y == 1, ..., 0] *= 0.3  # something to learn
    opt = torch.optim.SGD(model.parameters(), lr=5e-3, momentum=0.9)
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), x, y


class Wrapped(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def reference_loss(model: nn.Module, x, y, params: dict[str, torch.Tensor]) -> float:
    """The straightforward way: load the perturbed state_dict into a copy and run the model."""
    m = copy.deepcopy(model).eval()
    state = m.state_dict()
    state.update(params)
    m.load_state_dict(state)
    with torch.no_grad():
        return F.cross_entropy(m(x), y).item()


@pytest.mark.parametrize("name", ["cnn_reference", "pooling_cnn"])
def test_direction_is_the_notebooks_generate_theta(name):
    model = create_model(name, num_classes=3)
    state_before = np.random.get_state()[1].copy()
    d = random_direction(model, seed=1011)
    assert np.array_equal(np.random.get_state()[1], state_before)  # the global RNG is left alone
    expected = reference_generate_theta(model, seed=1011)
    names = [n for n, _ in model.named_parameters()]
    assert list(d) == names  # parameters() order; the Normalize buffers are not there
    for n, e in zip(names, expected, strict=True):
        assert d[n].dtype == torch.float32
        assert torch.equal(d[n], torch.from_numpy(e).float()), n
    # the direction has the parameter's slice norms: per 2-D conv kernel, per fc row, whole bias
    p = dict(model.named_parameters())
    conv = next(n for n in names if p[n].dim() == 4)
    torch.testing.assert_close(d[conv].norm(dim=(2, 3)), p[conv].detach().norm(dim=(2, 3)))
    # Li et al.'s filter-wise variant: per output filter over all its input channels
    f = random_direction(model, seed=1011, normalization="filter")
    torch.testing.assert_close(f[conv].flatten(1).norm(dim=1), p[conv].detach().flatten(1).norm(dim=1))


def test_fast_grid_equals_state_dict_loop(tiny):
    model, x, y = tiny
    theta = trainable_parameters(model)
    d1, d2 = random_direction(model, 0), random_direction(model, 1011)
    alphas, betas = np.array([-0.45, 0.0, 0.3]), np.array([-0.2, 0.0, 0.6])
    for mode in ("reference", "li"):
        expected = np.array(
            [
                [reference_loss(model, x, y, perturbed_parameters(theta, d1, a, mode, d2, b)) for b in betas]
                for a in alphas
            ]
        )
        for method, chunk, batch in (("auto", 4, None), ("grouped", 2, 10), ("vmap", 4, 7)):
            z = loss_grid(
                model, x, y, alphas, betas, d1, d2, mode, chunk=chunk, progress=False, batch=batch, method=method
            )
            assert z.shape == (3, 3)
            np.testing.assert_allclose(z, expected, rtol=0, atol=1e-5, err_msg=f"{mode} {method}")
        curve = loss_curve(model, x, y, alphas, d1, mode, chunk=2, progress=False)
        np.testing.assert_allclose(
            curve, [reference_loss(model, x, y, perturbed_parameters(theta, d1, a, mode)) for a in alphas], atol=1e-5
        )
    # a model that is not an nn.Sequential goes through vmap over the whole model (no first-layer hoist)
    w1, w2 = ({f"net.{n}": t for n, t in d.items()} for d in (d1, d2))
    z = loss_grid(Wrapped(model), x, y, alphas, betas, w1, w2, "li", chunk=3, progress=False)
    np.testing.assert_allclose(z, expected, rtol=0, atol=1e-5)  # `expected` of the last mode, "li"
    # the reference notebook's 2-D point is the coefficient form used by the fast path
    c0, c1, c2 = point_coefficients("reference", 0.3, -0.2)
    assert (c0, c1, c2) == pytest.approx((1.2 * 0.7, 1.2 * 0.3, -0.2))


def test_centre_is_the_unperturbed_loss(tiny):
    model, x, y = tiny
    x8 = x.to(torch.uint8)  # uint8 NHWC images, as the data sets hold them
    with torch.no_grad():
        plain = F.cross_entropy(model(x), y).item()
        plain8 = F.cross_entropy(model(x8.float()), y).item()
    d1, d2 = random_direction(model, 0), random_direction(model, 1)
    model.train()  # the landscape runs in eval mode and gives the mode back
    for mode in ("reference", "li"):
        alphas = reference_alphas()[::20]  # every 20th of the reference notebook's 600 points, 0.0 included
        stats = summarize(alphas, loss_curve(model, x8, y.numpy(), alphas, d1, mode, chunk=32, progress=False))
        assert stats["loss_center"] == pytest.approx(plain8, abs=1e-5)
        assert stats["loss_min"] <= stats["loss_center"]
        z = loss_grid(model, x, y, [0.0], [0.0], d1, d2, mode, progress=False)
        assert z[0, 0] == pytest.approx(plain, abs=1e-5)
    assert model.training
    model.eval()


def test_axes_and_summary():
    assert np.array_equal(reference_grid_axis(), np.arange(-150, 151, 5) / 100)
    assert len(reference_alphas()) == 600 and reference_alphas()[0] == -1.5
    a = np.linspace(-1, 1, 201)
    s = summarize(a, 1 + a**2)
    assert s["loss_center"] == pytest.approx(1) and s["sharpness"] == pytest.approx(0.25, abs=1e-3)
    assert s["alpha_at_min"] == pytest.approx(0)
    assert np.isnan(summarize([0.0, 0.1], [1.0, 2.0])["loss_increase_minus"])
