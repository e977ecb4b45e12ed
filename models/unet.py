"""Segmentation (SPEC S3, reference notebook ``segmentation-notes.md``): a small U-Net, ``unet_small``.

Encoder: ``depth`` blocks of (conv 3x3 - ReLU - conv 3x3 - ReLU) each followed by a 2x2
max-pool, widths ``base * 2**i``; a bottleneck block at ``base * 2**depth``.
Decoder, per level from the bottom up (the notes' order): bilinear up-sampling to the exact size
of the skip tensor (so odd H/W work: 45 -> 22 -> 11 -> 5 pools, and each up-sample lands on
11, 22, 45 again), skip connection by concatenation, a 1x1 conv that mixes the concatenated
features down to the skip's width, ReLU, conv 3x3, ReLU. Head: 1x1 conv to ``num_classes``.

Init: He (Kaiming normal, fan-in, ReLU gain; zero biases), as Ronneberger et al. initialise the
original U-Net. There is no BatchNorm, so with PyTorch's default conv init (std ~ 1/sqrt(3 fan_in))
each conv-ReLU shrinks the signal and the deep path through the bottleneck starts near silent:
the multiclass net then separates digits from background through the skips but takes many
epochs to tell which digit (measured: bench/README.md, "Notes moved from code").

Output: logits [B, num_classes, H, W] for raw NHWC 0..255 input [B, H, W, C]. Binary masks use
``num_classes=1`` (sigmoid, threshold 0.5 = logit 0); multiclass uses N channels (softmax,
per-pixel argmax). ``forward_nchw`` runs the network on an already normalised NCHW tensor in
whatever memory format it has: the channels-first vs channels-last benchmark uses it.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models import register_model
from models.layers import Normalize

# Adam 1e-3 trains the plain (no BatchNorm) U-Net; SGD 5e-3 barely moves it. Batch 8, not 32: on a
# CPU an epoch of batches of 8 costs about what one of 32 does (~8-10 s for 1000 48x48 canvases on one
# thread) and gives 4x the steps. Multiclass, test foreground mIoU (1000 canvases, seed 0): 0.16 with
# the old recipe (batch 32, 20 epochs, default init, cross-entropy); now (batch 8, 25 epochs, He init,
# cross-entropy + Dice) 0.80.
UNET_RECIPE = {"optimizer": "adam", "lr": 1e-3, "batch_size": 8, "epochs": 25, "lr_schedule": "none"}


def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.Conv2d(c_out, c_out, 3, padding=1), nn.ReLU()
    )


class Up(nn.Module):
    """Bilinear up-sampling to the skip's size, concat, 1x1 conv (mix + reduce), ReLU, 3x3 conv, ReLU."""

    def __init__(self, c_low: int, c_skip: int):
        super().__init__()
        self.mix = nn.Conv2d(c_low + c_skip, c_skip, 1)
        self.conv = nn.Conv2d(c_skip, c_skip, 3, padding=1)

    def forward(self, low: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(low, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        x = torch.cat([up, skip], dim=1)
        return F.relu(self.conv(F.relu(self.mix(x))))


class UNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, mean, std, base: int = 16, depth: int = 3):
        super().__init__()
        self.normalize = Normalize(mean, std)
        widths = [base * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        c = in_channels
        for w in widths[:-1]:
            self.down.append(_double_conv(c, w))
            c = w
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = _double_conv(c, widths[-1])
        self.up = nn.ModuleList(Up(widths[i + 1], widths[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], num_classes, 1)
        for m in self.modules():  # He init, as the U-Net paper: see the module docstring
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward_nchw(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, skip in zip(self.up, reversed(skips)):
            x = up(x, skip)
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_nchw(self.normalize(x))


@register_model(dataset="segdigits", recipe=UNET_RECIPE)
def unet_small(
    num_classes: int = 1, in_shape=(48, 48, 1), mean=(0.1,), std=(0.25,), base: int = 16, depth: int = 3
) -> UNet:
    """U-Net: conv-ReLU-maxpool encoder, bilinear up + skip concat + 1x1 conv decoder; logits [B, N, H, W].

    Params (1 input channel, base 16, depth 3, N=1): 357,985 = encoder 2,480 + 13,888 + 55,424,
    bottleneck 221,440, decoder 49,280 + 12,352 + 3,104, head 17 (multiclass N=11: 358,155).
    """
    if base < 1 or depth < 1:
        raise ValueError(f"unet_small needs base >= 1 and depth >= 1, got base={base}, depth={depth}")
    h, w = in_shape[0], in_shape[1]
    if min(h, w) < 2**depth:
        raise ValueError(f"unet_small with depth {depth} needs inputs of at least {2**depth} px, got {h}x{w}")
    return UNet(num_classes, in_shape[2], mean, std, base, depth)
