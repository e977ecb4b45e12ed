"""The CIFAR-100 subset CNNs of the lab-2 reference notebooks (SPEC S1)."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn

from models import register_model
from models.layers import Flatten, FlattenLinear, Normalize

POOLINGS = ("stride", "max", "avg")


def _side_after(in_shape: Sequence[int], factor: int, model: str) -> tuple[int, int]:
    h, w = in_shape[0] // factor, in_shape[1] // factor
    if h < 1 or w < 1:
        raise ValueError(f"{model} needs inputs of at least {factor}x{factor} pixels, got {in_shape[:2]}")
    return h, w


@register_model(dataset="cifar100")
def cnn_reference(
    num_classes: int = 3, in_shape=(32, 32, 3), mean=(0.5074, 0.4867, 0.4411), std=(0.2011, 0.1987, 0.2025)
):
    """The reference notebooks' first CNN: conv 5x5/4 -> conv 3x3 -> avgpool 4 -> linear (21,699 params, 3 classes)."""
    h, w = _side_after(in_shape, 16, "cnn_reference")  # stride 4, then pool 4
    return nn.Sequential(
        Normalize(mean, std),
        nn.Conv2d(in_shape[2], 32, 5, stride=4, padding=2),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(4),
        Flatten(),
        nn.Linear(64 * h * w, num_classes),
    )


@register_model(dataset="cifar100")
def pooling_cnn(
    num_classes: int = 3,
    in_shape=(32, 32, 3),
    mean=(0.5074, 0.4867, 0.4411),
    std=(0.2011, 0.1987, 0.2025),
    pooling: str = "max",
):
    """Pooling study CNN: downsample x4 by conv stride, max or avg pool (33,219 params for 3 classes)."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}; got {pooling!r}")
    h, w = _side_after(in_shape, 4, "pooling_cnn")
    stride = 4 if pooling == "stride" else 1
    layers = [
        Normalize(mean, std),
        nn.Conv2d(in_shape[2], 32, 5, stride=stride, padding=2),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1),
    ]
    if pooling == "max":
        # max(relu(x)) == relu(max(x)), gradients included: the reference notebook's ReLU -> MaxPool, with the
        # ReLU (forward and backward) over 16x fewer values (2 MB instead of 32 MB per batch)
        layers += [nn.MaxPool2d(4), nn.ReLU()]
    elif pooling == "avg":
        layers += [nn.ReLU(), nn.AvgPool2d(4)]
    else:
        layers.append(nn.ReLU())
    layers.append(FlattenLinear(64, h, w, num_classes))
    return nn.Sequential(*layers)
