"""Kernel-size study at about 20k params (SPEC S2, notebook task 2.1): cnn_k3, cnn_k5, cnn_k7, cnn_combo.

All four are two convs at full resolution with ReLU, then global average pooling and one linear layer::

    Normalize -> Conv(C->c1, k1, same pad) -> ReLU -> Conv(c1->c2, k2, same pad) -> ReLU
      -> AdaptiveAvgPool(1) -> Flatten -> Linear(c2->k)

The widths shrink as the kernel grows so the count stays near 20k (c2 = 2*c1).
"""

from __future__ import annotations

import torch.nn as nn

from models import register_model
from models.layers import Flatten, Normalize
from models.resnets import CIFAR10_MEAN, CIFAR10_STD, S2_RECIPE


def two_conv_gap(in_ch: int, convs: tuple[tuple[int, int], tuple[int, int]], num_classes: int, mean, std):
    """Two (kernel, width) convs with 'same' padding and ReLU, global average pool, linear head."""
    (k1, c1), (k2, c2) = convs
    return nn.Sequential(
        Normalize(mean, std),
        nn.Conv2d(in_ch, c1, k1, padding=k1 // 2),
        nn.ReLU(),
        nn.Conv2d(c1, c2, k2, padding=k2 // 2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        Flatten(),
        nn.Linear(c2, num_classes),
    )


@register_model(dataset="cifar10", recipe=S2_RECIPE)
def cnn_k3(num_classes: int = 10, in_shape=(32, 32, 3), mean=CIFAR10_MEAN, std=CIFAR10_STD):
    """Kernel study, 3x3: conv 3->32, conv 32->64, GAP, fc 64->k (20,042 params for 10 classes).

    Count: 3*32*9+32 = 896; 32*64*9+64 = 18,496; 64*10+10 = 650.
    """
    return two_conv_gap(in_shape[2], ((3, 32), (3, 64)), num_classes, mean, std)


@register_model(dataset="cifar10", recipe=S2_RECIPE)
def cnn_k5(num_classes: int = 10, in_shape=(32, 32, 3), mean=CIFAR10_MEAN, std=CIFAR10_STD):
    """Kernel study, 5x5: conv 3->19, conv 19->38, GAP, fc 38->k (19,922 params for 10 classes).

    Count: 3*19*25+19 = 1,444; 19*38*25+38 = 18,088; 38*10+10 = 390.
    """
    return two_conv_gap(in_shape[2], ((5, 19), (5, 38)), num_classes, mean, std)


@register_model(dataset="cifar10", recipe=S2_RECIPE)
def cnn_k7(num_classes: int = 10, in_shape=(32, 32, 3), mean=CIFAR10_MEAN, std=CIFAR10_STD):
    """Kernel study, 7x7: conv 3->13, conv 13->26, GAP, fc 26->k (18,782 params for 10 classes).

    Count: 3*13*49+13 = 1,924; 13*26*49+26 = 16,588; 26*10+10 = 270.
    """
    return two_conv_gap(in_shape[2], ((7, 13), (7, 26)), num_classes, mean, std)


@register_model(dataset="cifar10", recipe=S2_RECIPE)
def cnn_combo(num_classes: int = 10, in_shape=(32, 32, 3), mean=CIFAR10_MEAN, std=CIFAR10_STD):
    """Kernel study, 1x1 + 3x3: conv 1x1 3->32, conv 3x3 32->64, GAP, fc 64->k (19,274 params for 10 classes).

    Count: 3*32*1+32 = 128; 32*64*9+64 = 18,496; 64*10+10 = 650. The first layer sees single pixels only,
    so the receptive field is 3x3 (vs 5x5 for cnn_k3).
    """
    return two_conv_gap(in_shape[2], ((1, 32), (3, 64)), num_classes, mean, std)
