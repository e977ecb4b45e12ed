"""Custom layers with learnable parameters (SPEC S2, notebook task 3.1), and cnn_custom / cnn_standard.

Each layer's forward is written here with plain torch ops; backward comes from autograd
(checked against finite differences with ``torch.autograd.gradcheck`` in the tests).

- ``WSConv2d``: conv with scaled weight standardisation and a learnable per-filter gain.
- ``CBAM``: channel attention (shared MLP on avg- and max-pooled maps) then spatial attention.
- ``LearnableSwish``: x * sigmoid(beta * x) with a learnable beta per channel.
- ``MixedPool2d``: learnable per-channel mix of max and average pooling.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from models import register_model
from models.layers import Flatten, Normalize
from models.resnets import CIFAR10_MEAN, CIFAR10_STD, S2_RECIPE


class WSConv2d(nn.Module):
    """Conv2d whose weight is standardised per output filter, then scaled by a learnable gain.

    w_hat = gain * (w - mean(w)) / sqrt((var(w) + eps) * fan_in), mean/var over (in, kh, kw) of each
    filter (Qiao et al. 2019; the 1/sqrt(fan_in) keeps activations variance-preserving without BN, as
    in Brock et al. 2021). Parameters: weight, gain (one per filter, init 1), bias (init 0).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0, eps: float = 1e-5):
        super().__init__()
        self.stride, self.padding, self.eps = stride, padding, eps
        self.weight = nn.Parameter(torch.empty(out_ch, in_ch, kernel_size, kernel_size))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.gain = nn.Parameter(torch.ones(out_ch))
        self.bias = nn.Parameter(torch.zeros(out_ch))

    def standardized_weight(self) -> torch.Tensor:
        w = self.weight
        fan_in = w[0].numel()
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        var = w.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
        return self.gain.view(-1, 1, 1, 1) * (w - mean) * torch.rsqrt((var + self.eps) * fan_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.standardized_weight(), self.bias, self.stride, self.padding)


class CBAM(nn.Module):
    """Convolutional block attention (Woo et al. 2018): channel gate, then spatial gate.

    Channel: sigmoid(MLP(avgpool(x)) + MLP(maxpool(x))), MLP = Linear(C->C/r)-ReLU-Linear(C/r->C).
    Spatial: sigmoid(conv7x7([mean over C, max over C])), one bias-free 2->1 conv.
    """

    def __init__(self, channels: int, reduction: int = 8, spatial_kernel: int = 7):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)
        self.spatial = nn.Conv2d(2, 1, spatial_kernel, padding=spatial_kernel // 2, bias=False)

    def _mlp(self, v: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(v)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channel = torch.sigmoid(self._mlp(x.mean(dim=(2, 3))) + self._mlp(x.amax(dim=(2, 3))))
        x = x * channel[:, :, None, None]
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(pooled))


class LearnableSwish(nn.Module):
    """Swish with a learnable slope per channel: x * sigmoid(beta_c * x), beta init 1 (beta -> 0: x/2, large: ReLU)."""

    def __init__(self, channels: int, init: float = 1.0):
        super().__init__()
        self.beta = nn.Parameter(torch.full((channels,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beta = self.beta.view(1, -1, *([1] * (x.dim() - 2)))
        return x * torch.sigmoid(beta * x)


class MixedPool2d(nn.Module):
    """Learnable per-channel mix of max and average pooling: s*max + (1-s)*avg, s = sigmoid(logit), init 0.5."""

    def __init__(self, channels: int, kernel_size: int = 2, stride: int | None = None):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride or kernel_size
        self.logit = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.logit).view(1, -1, 1, 1)
        mx = F.max_pool2d(x, self.kernel_size, self.stride)
        avg = F.avg_pool2d(x, self.kernel_size, self.stride)
        return s * mx + (1 - s) * avg


@register_model(dataset="cifar10", recipe=S2_RECIPE)
def cnn_custom(num_classes: int = 10, in_shape=(32, 32, 3), mean=CIFAR10_MEAN, std=CIFAR10_STD):
    """CNN of custom layers: WS-conv + learnable Swish + CBAM + mixed pooling, 32/64/128 (100,614 params).

    WSConv(C->32) -> Swish -> MixedPool 2 -> WSConv(32->64) -> Swish -> CBAM(64) -> MixedPool 2
    -> WSConv(64->128) -> Swish -> CBAM(128) -> GAP -> Linear(128->k). Compare with cnn_standard, the same
    net built from nn.Conv2d / ReLU / MaxPool2d without attention.
    Count: convs 928 + 18,560 + 73,984 (weight + bias + gain); swish 32 + 64 + 128; pools 32 + 64;
    CBAM(64) 1,096 + 98; CBAM(128) 4,240 + 98; fc 1,290.
    """
    c = in_shape[2]
    return nn.Sequential(
        Normalize(mean, std),
        WSConv2d(c, 32, 3, padding=1),
        LearnableSwish(32),
        MixedPool2d(32),
        WSConv2d(32, 64, 3, padding=1),
        LearnableSwish(64),
        CBAM(64),
        MixedPool2d(64),
        WSConv2d(64, 128, 3, padding=1),
        LearnableSwish(128),
        CBAM(128),
        nn.AdaptiveAvgPool2d(1),
        Flatten(),
        nn.Linear(128, num_classes),
    )


@register_model(dataset="cifar10", recipe=S2_RECIPE)
def cnn_standard(num_classes: int = 10, in_shape=(32, 32, 3), mean=CIFAR10_MEAN, std=CIFAR10_STD):
    """Standard twin of cnn_custom: Conv-ReLU-MaxPool 32/64, Conv-ReLU 128, GAP, fc (94,538 params).

    Count: 896 + 18,496 + 73,856 + 1,290 (10 classes).
    """
    c = in_shape[2]
    return nn.Sequential(
        Normalize(mean, std),
        nn.Conv2d(c, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        Flatten(),
        nn.Linear(128, num_classes),
    )
