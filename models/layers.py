"""Layers shared by model families: the same functions as the reference notebooks' layers, laid out for speed."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


class Normalize(nn.Module):
    """Raw NHWC pixels (0..255) -> normalised NCHW, inside the model so ONNX takes raw pixels.

    The reference notebooks' ``(x / 255 - mean) / std`` is one multiply-add here, over rows of W*C
    values: a per-channel constant broadcast over an innermost axis of 3 does not vectorise
    (bench/README.md, "Notes moved from code"); results differ by float rounding only.
    The permute of a contiguous NHWC tensor is already channels_last in memory, so convs that
    follow run in channels_last without a copy.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        # buffers (not parameters): move with .to(device), saved in the state_dict, never trained
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, h, w, c = x.shape
        scale = (1.0 / (255.0 * self.std)).repeat(w)  # [W*C]: one value per (column, channel)
        shift = (-self.mean / self.std).repeat(w)
        x = torch.addcmul(shift, x.reshape(n, h, w * c), scale).view(n, h, w, c)
        return x.permute(0, 3, 1, 2)


def _channels_last_map(x: torch.Tensor) -> bool:
    """A [N, C, H, W] tensor stored channels_last (NHWC in memory), not also plain contiguous."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


class _GradInChannelsLast(torch.autograd.Function):
    """Flatten a channels_last [N, C, H, W] tensor; hand its gradient back channels_last too."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.shape = x.shape
        return x.flatten(1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.reshape(ctx.shape).contiguous(memory_format=torch.channels_last)


class Flatten(nn.Flatten):
    """``nn.Flatten`` (same values, C,H,W order) whose gradient keeps a channels_last input's layout.

    Plain flatten hands a channels_last activation an NCHW gradient; ReLU/pool backward over two
    layouts takes a slow strided path, and pool backward goes through extra copies (bench/README.md).
    Only in training: eval and ONNX export see ``nn.Flatten``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.requires_grad and (self.start_dim, self.end_dim) == (1, -1) and _channels_last_map(x):
            return _GradInChannelsLast.apply(x)
        return super().forward(x)


class FlattenLinear(nn.Linear):
    """``nn.Flatten`` then ``nn.Linear`` over a [C, H, W] map, in one module: same weights, same function.

    The weight's columns are in the reference notebooks' flattened C,H,W order. In training on a channels_last map,
    C,H,W flattening copies the activations forward and their gradient backward (an 8x8x64 map at
    batch 128: 2 MB each way); here the product runs in the NHWC order the memory already has, with
    the weight's columns permuted to match (a [out, C*H*W] copy, 12K values for 3 classes), so the
    gradient comes back channels_last as well (bench/README.md). Eval and ONNX export see exactly
    flatten + linear.
    """

    def __init__(self, channels: int, height: int, width: int, out_features: int, bias: bool = True):
        super().__init__(channels * height * width, out_features, bias)
        self.map_shape = (channels, height, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and _channels_last_map(x):
            c, h, w = self.map_shape
            weight = self.weight.view(-1, c, h, w).permute(0, 2, 3, 1).reshape(self.out_features, -1)
            return F.linear(x.permute(0, 2, 3, 1).reshape(len(x), -1), weight, self.bias)
        return super().forward(x.flatten(1))

    def extra_repr(self) -> str:
        return f"map_shape={self.map_shape}, " + super().extra_repr()
