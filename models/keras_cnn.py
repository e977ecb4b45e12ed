"""Keras-style CIFAR-10 CNN with max-norm constraints (SPEC S4, notebook keras-cifar10-cnn.md)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from models import register_model
from models.layers import Flatten, Normalize
from models.resnets import CIFAR10_MEAN, CIFAR10_STD


class MaxNormSequential(nn.Sequential):
    """nn.Sequential whose layers at ``max_norm_layers`` keep every unit's incoming weight norm <= ``max_norm``.

    Keras ``MaxNorm`` semantics: per output unit (Linear row, conv filter over (in, kh, kw)), w is scaled by
    ``max_norm / (norm + 1e-7)`` where the norm exceeds ``max_norm``; biases are not constrained.
    The trainer calls ``apply_constraints()`` after every optimizer step.
    """

    def __init__(self, *layers: nn.Module, max_norm_layers: Sequence[int] = (), max_norm: float = 3.0):
        super().__init__(*layers)
        self.max_norm_layers = tuple(max_norm_layers)
        self.max_norm = float(max_norm)

    @torch.no_grad()
    def apply_constraints(self) -> None:
        for i in self.max_norm_layers:
            w = self[i].weight
            w.copy_(torch.renorm(w, p=2, dim=0, maxnorm=self.max_norm))


@register_model(
    dataset="cifar10",
    recipe={"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "batch_size": 32, "epochs": 25, "lr_schedule": "linear"},
)
def keras_cnn(num_classes: int = 10, in_shape=(32, 32, 3), mean=CIFAR10_MEAN, std=CIFAR10_STD):
    """Keras notebook CNN: conv 32/64/128 'same', 2 max-pools, dense 512, dropout, max-norm 3 (4,293,194 params).

    Conv 32 3x3 -> Dropout 0.2 -> Conv 64 3x3 (max-norm 3) -> MaxPool 2 -> Conv 128 3x3 -> MaxPool 2 -> Dropout 0.2
    -> Flatten -> Dense 512 (max-norm 3) -> Dropout 0.5 -> Dense k; ReLU after every conv and the 512 dense.
    Count: 896 + 18,496 + 73,856 + 8192*512+512 = 4,194,816 + 512*10+10 = 5,130 -> 4,293,194 (the notebook's summary).
    Keras initialisation (Glorot-uniform kernels, zero biases). The flatten is channels-first (PyTorch), Keras's is
    channels-last: same count, only the order of the dense weights differs. The notebook scaled pixels by 1/255
    only; pass mean=(0, 0, 0), std=(1, 1, 1) to reproduce that exactly.
    """
    h, w = in_shape[0] // 4, in_shape[1] // 4
    if h < 1 or w < 1:
        raise ValueError(f"keras_cnn needs inputs of at least 4x4 pixels, got {tuple(in_shape[:2])}")
    model = MaxNormSequential(
        Normalize(mean, std),
        nn.Conv2d(in_shape[2], 32, 3, padding=1),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Conv2d(32, 64, 3, padding=1),  # 4: max-norm 3
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Dropout(0.2),
        Flatten(),
        nn.Linear(128 * h * w, 512),  # 12: max-norm 3
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(512, num_classes),
        max_norm_layers=(4, 12),
        max_norm=3.0,
    )
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return model
