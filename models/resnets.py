"""Residual blocks shared by the S2 families, and the residual-block study (SPEC S2, notebook task 3.2).

The three study models share one skeleton and differ only in the block::

    Normalize -> Conv(C->16, 3x3, bias) -> ReLU
      -> block(16->32, stride 2) -> block(32->64, stride 2) -> block(64->128, stride 2)
      -> AdaptiveAvgPool(1) -> Flatten -> Linear(128->k)

Stem 3*16*9+16 = 448 and head 128*k+k (1,290 for k=10) are common; the blocks give the rest.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from models import register_model
from models.layers import Flatten, Normalize

# The S2 reference notebook's recipe (cnn-vs-fc-architecture-studies.md): Adam 1e-3, batch 128, 10 epochs.
S2_RECIPE = {"optimizer": "adam", "lr": 1e-3, "batch_size": 128, "epochs": 10, "momentum": 0.0}
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def _shortcut(in_ch: int, out_ch: int, stride: int, bias: bool) -> nn.Module:
    """Identity when shapes match, else 1x1 conv (stride) + BN (projection shortcut)."""
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=bias), nn.BatchNorm2d(out_ch))


class BasicBlock(nn.Module):
    """Basic residual block: conv3x3(stride)-BN-ReLU-[Dropout2d]-conv3x3-BN, + shortcut, ReLU.

    ``mid_ch`` (default ``out_ch``) is the width between the two convs; a wide block sets it to
    ``widen * out_ch``. ``bias`` applies to all three convs (main path and projection shortcut).
    Params (bias=True, mid=out): 9*in*out+out + 2*out + 9*out*out+out + 2*out [+ in*out+out + 2*out].
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        stride: int = 1,
        bias: bool = True,
        dropout: float = 0.0,
        mid_ch: int | None = None,
    ):
        super().__init__()
        mid_ch = mid_ch or out_ch
        self.conv1 = nn.Conv2d(in_ch, mid_ch, 3, stride=stride, padding=1, bias=bias)
        self.bn1 = nn.BatchNorm2d(mid_ch)
        self.drop = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(mid_ch, out_ch, 3, padding=1, bias=bias)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = _shortcut(in_ch, out_ch, stride, bias)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.drop(self.relu(self.bn1(self.conv1(x))))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class BottleneckBlock(nn.Module):
    """Bottleneck block: 1x1 (in->out/ratio) - 3x3 (stride) - 1x1 (->out), each BN, no conv bias; + shortcut, ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, ratio: int = 4):
        super().__init__()
        mid = out_ch // ratio
        self.conv1 = nn.Conv2d(in_ch, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.shortcut = _shortcut(in_ch, out_ch, stride, bias=False)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


def _study_resnet(blocks: list[nn.Module], num_classes: int, in_shape, mean, std) -> nn.Sequential:
    return nn.Sequential(
        Normalize(mean, std),
        nn.Conv2d(in_shape[2], 16, 3, padding=1),
        nn.ReLU(),
        *blocks,
        nn.AdaptiveAvgPool2d(1),
        Flatten(),
        nn.Linear(128, num_classes),
    )


@register_model(dataset="cifar10", recipe=S2_RECIPE)
def basic_resnet(num_classes: int = 10, in_shape=(32, 32, 3), mean=CIFAR10_MEAN, std=CIFAR10_STD):
    """Residual study: 3 basic blocks 16->32->64->128, stride 2 each (304,810 params for 10 classes).

    Block = conv3x3-BN-ReLU-conv3x3-BN + (1x1 conv + BN) projection, all convs with bias.
    Count: stem 448 + block 16->32 14,624 + block 32->64 57,920 + block 64->128 230,528 + fc 1,290 = 304,810.
    """
    chans = [16, 32, 64, 128]
    blocks = [BasicBlock(a, b, stride=2) for a, b in zip(chans[:-1], chans[1:], strict=True)]
    return _study_resnet(blocks, num_classes, in_shape, mean, std)


@register_model(dataset="cifar10", recipe=S2_RECIPE)
def bottleneck_resnet(num_classes: int = 10, in_shape=(32, 32, 3), mean=CIFAR10_MEAN, std=CIFAR10_STD):
    """Residual study: 3 bottleneck blocks (1x1-3x3-1x1, width out/4) 16->32->64->128 (33,770 params for 10 classes).

    Convs without bias (each followed by BN); the stride-2 is on the 3x3; projection = 1x1 conv + BN.
    Count: stem 448 + block 16->32 (mid 8) 1,632 + block 32->64 (mid 16) 6,208 + block 64->128 (mid 32) 24,192
    + fc 1,290 = 33,770.
    """
    chans = [16, 32, 64, 128]
    blocks = [BottleneckBlock(a, b, stride=2) for a, b in zip(chans[:-1], chans[1:], strict=True)]
    return _study_resnet(blocks, num_classes, in_shape, mean, std)


@register_model(dataset="cifar10", recipe=S2_RECIPE)
def wide_resnet(num_classes: int = 10, in_shape=(32, 32, 3), mean=CIFAR10_MEAN, std=CIFAR10_STD):
    """Residual study: 3 wide blocks (inner width x3) 16->32->64->128, stride 2 (886,762 params for 10 classes).

    Wide block = conv3x3(in->3*out)-BN-ReLU-conv3x3(3*out->out)-BN + (1x1 conv + BN) projection, convs with bias.
    Count: stem 448 + block 16->32 42,464 + block 32->64 168,896 + block 64->128 673,664 + fc 1,290 = 886,762.
    """
    chans = [16, 32, 64, 128]
    blocks = [BasicBlock(a, b, stride=2, mid_ch=3 * b) for a, b in zip(chans[:-1], chans[1:], strict=True)]
    return _study_resnet(blocks, num_classes, in_shape, mean, std)
