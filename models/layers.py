"""Layers shared by model families."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn


class Normalize(nn.Module):
    """Raw NHWC pixels (0..255) -> normalised NCHW, inside the model so ONNX takes raw pixels.

    The permute of a contiguous NHWC tensor is already channels_last in memory, so convs
    that follow can run in channels_last without a copy.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        # buffers (not parameters): move with .to(device), saved in the state_dict, never trained
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x / 255.0 - self.mean) / self.std
        return x.permute(0, 3, 1, 2)
