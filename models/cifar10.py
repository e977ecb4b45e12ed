"""CIFAR-10 models of the CNN-vs-FC study (SPEC S2, notebook task 1.2): deep_fcnet, resnet_cifar, resnet_cifar_reg.

The reference notebooks give no layer list or parameter counts for these; the designs follow their author's
code (FC 3072-2048-1024-512-256-10 with dropout 0.5; a 3-block ResNet with bias-free convs).
"""

from __future__ import annotations

import math

import torch.nn as nn

from models import register_model
from models.layers import Flatten, Normalize
from models.resnets import CIFAR10_MEAN, CIFAR10_STD, S2_RECIPE, BasicBlock

RESNET_RECIPE = {**S2_RECIPE, "weight_decay": 1e-4}


@register_model(dataset="cifar10", recipe=S2_RECIPE)
def deep_fcnet(num_classes: int = 10, in_shape=(32, 32, 3), mean=CIFAR10_MEAN, std=CIFAR10_STD):
    """Deep FC 3072->2048->1024->512->256->k, ReLU, dropout 0.5 after the first three (9,050,378 params).

    Count: 3072*2048+2048 = 6,293,504; 2048*1024+1024 = 2,098,176; 1024*512+512 = 524,800;
    512*256+256 = 131,328; 256*10+10 = 2,570.
    """
    return nn.Sequential(
        Normalize(mean, std),
        Flatten(),
        nn.Linear(math.prod(in_shape), 2048),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(2048, 1024),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(1024, 512),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(512, 256),
        nn.ReLU(),
        nn.Linear(256, num_classes),
    )


def _resnet_cifar(num_classes: int, in_shape, mean, std, dropout: float, head_dropout: float) -> nn.Sequential:
    head: list[nn.Module] = [nn.Dropout(head_dropout)] if head_dropout > 0 else []
    return nn.Sequential(
        Normalize(mean, std),
        nn.Conv2d(in_shape[2], 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        BasicBlock(32, 64, stride=2, bias=False, dropout=dropout),
        BasicBlock(64, 128, stride=2, bias=False, dropout=dropout),
        BasicBlock(128, 128, stride=2, bias=False, dropout=dropout),
        nn.AdaptiveAvgPool2d(1),
        Flatten(),
        *head,
        nn.Linear(128, num_classes),
    )


@register_model(dataset="cifar10", recipe=RESNET_RECIPE)
def resnet_cifar(num_classes: int = 10, in_shape=(32, 32, 3), mean=CIFAR10_MEAN, std=CIFAR10_STD):
    """ResNet: conv-BN 3->32, 3 basic blocks 32->64->128->128 (stride 2 each), avg pool, fc (602,154 params).

    Convs have no bias (each is followed by BN); every block has a 1x1 conv + BN projection (stride 2).
    Count: stem 864 + 64; block 32->64 57,728; block 64->128 230,144; block 128->128 312,064; fc 1,290.
    """
    return _resnet_cifar(num_classes, in_shape, mean, std, dropout=0.0, head_dropout=0.0)


@register_model(dataset="cifar10", recipe={**RESNET_RECIPE, "augment": True})
def resnet_cifar_reg(num_classes: int = 10, in_shape=(32, 32, 3), mean=CIFAR10_MEAN, std=CIFAR10_STD):
    """resnet_cifar + Dropout2d 0.3 inside each block and Dropout 0.5 before fc; train with aug (602,154 params).

    Same layers and count as resnet_cifar (dropout has no parameters); the recipe adds weight decay 1e-4
    and augmentation (random shifts, horizontal flips).
    """
    return _resnet_cifar(num_classes, in_shape, mean, std, dropout=0.3, head_dropout=0.5)
