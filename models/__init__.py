"""Model registry, timm style: ``@register_model`` on a builder, ``create_model(name, **kw)``.

Every model takes raw pixels as float NHWC in 0..255 and normalises inside (see
``layers.Normalize``), so an exported ONNX file needs no preprocessing.
A builder's signature is ``fn(num_classes, in_shape, mean, std, **options)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch.nn as nn


@dataclass(frozen=True)
class ModelInfo:
    name: str
    builder: Callable[..., nn.Module]
    dataset: str  # the data set the reference notebooks trained it on (for `models` listing and defaults)
    description: str
    options: tuple[str, ...]  # extra keyword options the builder accepts (e.g. "pooling")
    recipe: dict  # the reference notebooks' training recipe: defaults for the train step (see RECIPE_KEYS)


# Training-recipe keys a model may set; anything not set comes from DEFAULT_RECIPE.
DEFAULT_RECIPE = {
    "optimizer": "sgd",  # sgd | adam
    "lr": 5e-3,  # learning rate
    "momentum": 0.9,  # SGD momentum (ignored by adam)
    "weight_decay": 0.0,  # L2 penalty in the optimizer
    "batch_size": 128,  # images per step
    "epochs": 500,  # passes over the training set
    "lr_schedule": "none",  # none | step (x0.1 at 50% and 75% of epochs) | linear (lr/epochs decay, Keras style)
    "augment": False,  # random shifts (±4 px, zero fill) + horizontal flips, done on device tensors
}
RECIPE_KEYS = tuple(DEFAULT_RECIPE)

_REGISTRY: dict[str, ModelInfo] = {}


def register_model(dataset: str, description: str = "", recipe: dict | None = None):
    """Register ``fn`` under its function name, with the reference notebooks' recipe for it."""
    unknown = set(recipe or {}) - set(RECIPE_KEYS)
    if unknown:
        raise ValueError(f"unknown recipe keys {sorted(unknown)}")

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if fn.__name__ in _REGISTRY:
            raise ValueError(f"model {fn.__name__!r} registered twice")
        base = {"num_classes", "in_shape", "mean", "std"}
        options = tuple(p for p in inspect.signature(fn).parameters if p not in base)
        doc = description or (fn.__doc__ or "").strip().splitlines()[0]
        _REGISTRY[fn.__name__] = ModelInfo(fn.__name__, fn, dataset, doc, options, {**DEFAULT_RECIPE, **(recipe or {})})
        return fn

    return wrap


def list_models() -> list[str]:
    _import_families()
    return sorted(_REGISTRY)


def model_info(name: str) -> ModelInfo:
    _import_families()
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; options it does not take (e.g. ``pooling``) are an error."""
    info = model_info(name)
    unknown = set(kwargs) - {"num_classes", "in_shape", "mean", "std", *info.options}
    if unknown:
        raise TypeError(f"model {name!r} takes no option(s) {sorted(unknown)}; options: {list(info.options)}")
    return info.builder(**kwargs)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _import_families() -> None:
    # Importing a family module runs its @register_model decorators.
    from models import (  # noqa: F401
        cifar10,
        cifar100,
        custom_layers,
        depth,
        keras_cnn,
        kernels,
        mnist,
        resnets,
        unet,
    )
