"""MNIST models of the CNN-vs-FC study (SPEC S2, notebook task 1.1): fcnet, simple_cnn, resnet_like."""

from __future__ import annotations

import math

import torch.nn as nn

from models import register_model
from models.layers import Flatten, Normalize
from models.resnets import S2_RECIPE, BasicBlock

MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)


@register_model(dataset="mnist", recipe=S2_RECIPE)
def fcnet(num_classes: int = 10, in_shape=(28, 28, 1), mean=MNIST_MEAN, std=MNIST_STD):
    """Fully connected 784->512->256->128->k with ReLU (567,434 params for 10 classes).

    Count: 784*512+512 = 401,920; 512*256+256 = 131,328; 256*128+128 = 32,896; 128*10+10 = 1,290.
    """
    return nn.Sequential(
        Normalize(mean, std),
        Flatten(),
        nn.Linear(math.prod(in_shape), 512),
        nn.ReLU(),
        nn.Linear(512, 256),
        nn.ReLU(),
        nn.Linear(256, 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )


@register_model(dataset="mnist", recipe=S2_RECIPE)
def simple_cnn(num_classes: int = 10, in_shape=(28, 28, 1), mean=MNIST_MEAN, std=MNIST_STD):
    """3 conv (32/64/128, 3x3 pad 1) each + ReLU + MaxPool 2, fc 1152->128->k (241,546 params for 10 classes).

    28 -> 14 -> 7 -> 3 px, so the flatten is 128*3*3 = 1152.
    Count: conv 320 + 18,496 + 73,856; fc 1152*128+128 = 147,584; 128*10+10 = 1,290.
    """
    h, w = in_shape[0] // 8, in_shape[1] // 8
    if h < 1 or w < 1:
        raise ValueError(f"simple_cnn needs inputs of at least 8x8 pixels, got {tuple(in_shape[:2])}")
    layers: list[nn.Module] = [Normalize(mean, std)]
    c = in_shape[2]
    for out in (32, 64, 128):
        layers += [nn.Conv2d(c, out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        c = out
    layers += [Flatten(), nn.Linear(128 * h * w, 128), nn.ReLU(), nn.Linear(128, num_classes)]
    return nn.Sequential(*layers)


@register_model(dataset="mnist", recipe=S2_RECIPE)
def resnet_like(num_classes: int = 10, in_shape=(28, 28, 1), mean=MNIST_MEAN, std=MNIST_STD):
    """Conv 1->32 + 2 residual blocks (32->64, 64->128, BN, 1x1 shortcut), avg pool, fc 128->k (290,058 params).

    Layers: conv3x3 1->32 (bias, no BN) -> ReLU -> BasicBlock(32->64, stride 2) -> BasicBlock(64->128, stride 2)
    -> AdaptiveAvgPool(1) -> Linear(128->k). A block is conv3x3-BN-ReLU-conv3x3-BN plus a projection shortcut
    (1x1 conv + BN), then ReLU; all convs carry a bias (that is what the notebook's 290,058 implies).
    Count: stem 320; block 32->64: 18,496 + 128 + 36,928 + 128 + 2,112 + 128 = 57,920;
    block 64->128: 73,856 + 256 + 147,584 + 256 + 8,320 + 256 = 230,528; fc 1,290. Total 290,058.
    The notebook does not fix the strides (they do not change the count); stride 2 keeps the 128-channel maps at 7x7.
    """
    return nn.Sequential(
        Normalize(mean, std),
        nn.Conv2d(in_shape[2], 32, 3, padding=1),
        nn.ReLU(),
        BasicBlock(32, 64, stride=2),
        BasicBlock(64, 128, stride=2),
        nn.AdaptiveAvgPool2d(1),
        Flatten(),
        nn.Linear(128, num_classes),
    )
