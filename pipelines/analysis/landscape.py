"""Loss landscape of a trained network (Li et al. 2018, arXiv:1712.09913). Pure computation.

Directions
    :func:`random_direction` reproduces the reference notebook's ``generate_theta`` exactly: one draw
    ``np.random.normal(size=total)`` from the legacy MT19937 stream seeded with ``seed``, split over
    the trainable parameters in ``model.parameters()`` order and rescaled slice by slice so that each
    slice of the direction has the norm of the same slice of the parameter (``||p|| / ||r||``):
    conv weights per 2-D kernel ``[out, in]`` (the notebook sums the squares over the two kernel axes),
    fc weights per row, biases as a whole vector. Buffers (e.g. ``Normalize`` mean/std) are never
    perturbed.

Modes (every point is a linear combination ``c0*θ + c1*d1 + c2*d2``, see :func:`point_coefficients`)
    ``reference``: the reference notebooks' interpolation towards the random point: 1-D ``θ + α(d1 − θ)``;
    2-D ``t = θ + α(d1 − θ)`` then ``t = t + β(d2 − t)``.
    ``li``: Li et al.: ``θ + α d1`` (1-D), ``θ + α d1 + β d2`` (2-D).

Speed
    The reference notebooks reload a state_dict and loop a DataLoader for every point. Here the test set is one
    tensor on the model's device, parameters are passed functionally (no state_dict loads), in eval
    mode under ``torch.inference_mode``, ``chunk`` points per forward pass:

    * the first layer of a ``nn.Sequential`` model (a conv or linear layer after parameter-free
      layers such as ``Normalize``) is linear in its weights, so its output is computed once for
      θ, d1 and d2 and each point's output is the same combination of those three tensors (exact;
      it removes the first layer from every point);
    * the rest runs as grouped convolutions / batched matmuls over the K stacked parameter sets
      (``method="grouped"``: a small interpreter for Sequential models of Conv2d, Linear,
      activations, pools, Flatten, Dropout, with in-place ReLU and a copy-free Flatten->Linear), or
      as ``torch.vmap`` over ``torch.func.functional_call`` (``method="vmap"``, any model).
      ``"auto"`` takes grouped where it applies (on CPU never slower than vmap), else vmap;
    * images go through in sub-batches so that K × images × the largest activation stays within a
      small budget: on CPU that keeps tensors in cache and avoids fresh page-faulting allocations,
      which cost more than the arithmetic for big activations.

    On CPU the convolutions are already compute-bound at one point per pass, so ``chunk`` defaults
    to 1 there; on CUDA points are batched 64 at a time. Measurements: bench/README.md.
"""

from __future__ import annotations

import math
import sys
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, TypedDict

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call, vmap
from tqdm import tqdm

if TYPE_CHECKING:  # typing.Unpack is Python 3.11+; annotations are never evaluated here
    from typing_extensions import Unpack

Mode = Literal["reference", "li"]
Method = Literal["auto", "grouped", "vmap"]
MODES: tuple[str, ...] = ("reference", "li")
METHODS: tuple[str, ...] = ("auto", "grouped", "vmap")

# Largest activation (K points × images × elements × bytes) per forward pass, and the default chunk
# (chosen by bench/bench_landscape.py; bench/README.md has the numbers).
_ACT_BUDGET = {"cpu": 6 << 20, "cuda": 1 << 30}
_CHUNK = {"cpu": 1, "cuda": 64}
_HOIST_BUDGET = 1 << 30  # first-layer outputs for θ, d1, d2 over the whole test set, at most this many bytes

# Parameter-free modules the grouped interpreter can run on stacked points ([N, K*C, ...] or [K, N, F]).
_ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Hardtanh)
_CHANNEL_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_SKIP = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d)


# ----------------------------------------------------------------------------------------- axes


def reference_alphas() -> np.ndarray:
    """The reference notebooks' 1-D axis: α from -1.5 to 1.495 in steps of 0.005 (600 points)."""
    return np.arange(-1500, 1500, 5) / 1000


def reference_grid_axis(step: float = 0.05, limit: float = 1.5) -> np.ndarray:
    """The reference notebooks' 2-D axis ``np.arange(-150, 151, 5) / 100``: -1.5..1.5 step 0.05, 61 values."""
    n = int(round(limit / step))
    return np.round(np.arange(-n, n + 1) * step, 12)


# ------------------------------------------------------------------------------------ directions


def trainable_parameters(model: nn.Module) -> dict[str, Tensor]:
    """Trainable parameters in ``model.parameters()`` order, detached (the unperturbed θ)."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def _slice_norm_ratio(p: np.ndarray, r: np.ndarray, normalization: str) -> np.ndarray | np.floating:
    """``||p|| / ||r||`` per slice, with the reference notebook's exact numpy expressions (float32 p, float64 r)."""
    rank = r.ndim
    if normalization == "reference" and rank == 4:  # conv: per 2-D kernel [out, in]
        norm_r = np.sqrt((r**2).sum(axis=-1).sum(axis=-1))
        norm_p = np.sqrt((p**2).sum(axis=-1).sum(axis=-1))
        return (norm_p / norm_r).reshape(*norm_p.shape, 1, 1)
    if normalization == "reference" and rank == 2:  # fc: per row
        norm_r = np.sqrt((r**2).sum(axis=-1))
        norm_p = np.sqrt((p**2).sum(axis=-1))
        return (norm_p / norm_r).reshape(-1, 1)
    if rank <= 1:  # bias (and scalars): whole vector
        return np.sqrt((p**2).sum()) / np.sqrt((r**2).sum())
    # "filter" (Li et al.), and ranks the notebook has no rule for: per output filter over everything else
    axes = tuple(range(1, rank))
    norm_r = np.sqrt((r**2).sum(axis=axes, keepdims=True))
    norm_p = np.sqrt((p**2).sum(axis=axes, keepdims=True))
    return norm_p / norm_r


def random_direction(
    model: nn.Module, seed: int, normalization: Literal["reference", "filter"] = "reference"
) -> dict[str, Tensor]:
    """The reference notebook's ``generate_theta(seed)``: a random direction with the parameters' slice norms.

    Returns ``{name: tensor}`` over the trainable parameters, same dtype and device as each
    parameter (the float64 numpy values rounded once to the parameter dtype). ``normalization="reference"``
    is the reference notebook's rule (conv per 2-D kernel, fc per row, bias whole); ``"filter"`` normalises conv
    weights per output filter over all its input channels (Li et al.'s filter-wise normalisation).
    The global numpy RNG is left untouched (``RandomState(seed)`` gives the same stream as
    ``np.random.seed(seed); np.random.normal(...)``).
    """
    if normalization not in ("reference", "filter"):
        raise ValueError(f"normalization must be 'reference' or 'filter'; got {normalization!r}")
    theta = trainable_parameters(model)
    if not theta:
        raise ValueError("model has no trainable parameters")
    params = [t.cpu().numpy() for t in theta.values()]
    total = sum(p.size for p in params)
    flat = np.random.RandomState(seed).normal(size=total)
    out: dict[str, Tensor] = {}
    offset = 0
    for (name, t), p in zip(theta.items(), params, strict=True):
        r = flat[offset : offset + p.size].reshape(*p.shape)
        offset += p.size
        r = r * _slice_norm_ratio(p, r, normalization)
        out[name] = torch.from_numpy(np.asarray(r)).to(dtype=t.dtype, device=t.device)
    return out


# -------------------------------------------------------------------------------------- points


def point_coefficients(mode: Mode, alpha: float, beta: float | None = None) -> tuple[float, float, float]:
    """``(c0, c1, c2)`` with point = ``c0*θ + c1*d1 + c2*d2`` (``beta=None``: a 1-D point)."""
    c = _coefficients(mode, np.array([alpha], dtype=np.float64), None if beta is None else np.array([beta]))
    return tuple(float(v) for v in c[0])  # type: ignore[return-value]


def _coefficients(mode: str, alphas: np.ndarray, betas: np.ndarray | None) -> np.ndarray:
    """[P, 3] float64 coefficients of (θ, d1, d2) for paired arrays ``alphas`` / ``betas``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    a = np.asarray(alphas, dtype=np.float64)
    b = np.zeros_like(a) if betas is None else np.asarray(betas, dtype=np.float64)
    if mode == "li":
        return np.stack([np.ones_like(a), a, b], axis=1)
    # reference: t = θ + a(d1 − θ); t + b(d2 − t) = (1−b)(1−a) θ + (1−b) a d1 + b d2
    return np.stack([(1 - b) * (1 - a), (1 - b) * a, b], axis=1)


def perturbed_parameters(
    theta: dict[str, Tensor],
    d1: dict[str, Tensor],
    alpha: float,
    mode: Mode,
    d2: dict[str, Tensor] | None = None,
    beta: float = 0.0,
) -> dict[str, Tensor]:
    """One point, computed literally as the notebooks / Li et al. write it (the reference for tests)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    out = {}
    for name, v in theta.items():
        if mode == "reference":
            t = v + alpha * (d1[name] - v)
            if d2 is not None:
                t = t + beta * (d2[name] - t)
        else:
            t = v + alpha * d1[name]
            if d2 is not None:
                t = t + beta * d2[name]
        out[name] = t
    return out


# ------------------------------------------------------------------------------------ the engine


class _Unsupported(Exception):
    """The grouped interpreter cannot run this module; use vmap."""


def _split(model: nn.Module, names: Sequence[str]):
    """(prefix modules, first-layer key, first-layer module, tail module) for the first-layer hoist.

    Only for ``nn.Sequential`` whose first module with parameters is a conv / linear layer whose
    parameters are all trainable; otherwise ``(None, None, None, model)``.
    """
    if not isinstance(model, nn.Sequential):
        return None, None, None, model
    items = list(model._modules.items())
    for i, (key, module) in enumerate(items):
        own = [n for n, _ in module.named_parameters()]
        if not own:
            continue
        hoistable = isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and all(
            f"{key}.{n}" in names for n in own
        )
        if not hoistable or (isinstance(module, nn.modules.conv._ConvNd) and module.padding_mode != "zeros"):
            return None, None, None, model
        prefix = [m for _, m in items[:i]]
        tail = nn.Sequential(OrderedDict(items[i + 1 :]))  # keeps the model's keys: "3.weight" stays "3.weight"
        return prefix, key, module, tail
    return None, None, None, model


def _max_activation_numel(module: nn.Module, inp: Tensor, params: dict[str, Tensor]) -> int:
    """Largest tensor (elements) going through ``module`` for the given input (one image)."""
    sizes = [inp.numel()]

    def hook(_m, _i, out):
        if isinstance(out, Tensor):
            sizes.append(out.numel())

    handles = [m.register_forward_hook(hook) for m in module.modules()]
    try:
        functional_call(module, params, (inp,))
    finally:
        for h in handles:
            h.remove()
    return max(sizes)


def _combine(zs: list[Tensor], coef: Tensor) -> Tensor:
    """Σ_j coef[:, j] · zs[j] for K points, laid out as [n, *spatial, K, O] (conv) or [K, n, O] (linear)."""
    k = coef.shape[0]
    if zs[0].dim() == 2:  # linear first layer: [n, O] -> [K, n, O]
        out = zs[0].unsqueeze(0) * coef[:, 0, None, None]
        for j in range(1, len(zs)):
            out.addcmul_(zs[j].unsqueeze(0), coef[:, j, None, None])
        return out
    last = [z.movedim(1, -1).unsqueeze(-2) for z in zs]  # [n, *sp, 1, O], a view for channels-last z
    out = torch.empty((*last[0].shape[:-2], k, last[0].shape[-1]), dtype=zs[0].dtype, device=zs[0].device)
    torch.mul(last[0], coef[:, 0, None], out=out)
    for j in range(1, len(zs)):
        out.addcmul_(last[j], coef[:, j, None])
    return out


def _as_grouped(comb: Tensor, k: int) -> tuple[Tensor, str]:
    """Combined first-layer output -> the grouped interpreter's layout."""
    if comb.dim() == 3:
        return comb, "flat"  # [K, n, O]
    return comb.reshape(*comb.shape[:-2], -1).movedim(-1, 1), "conv"  # [n, K*O, *sp], channels-last memory


def _as_vmapped(comb: Tensor) -> Tensor:
    """Combined first-layer output -> [K, n, O, *sp] (or [K, n, O]) for vmap over dim 0."""
    if comb.dim() == 3:
        return comb
    return comb.movedim(-2, 0).movedim(-1, 2)


def _grouped_forward(modules: Sequence[nn.Module], h: Tensor, layout: str, p: dict[str, Tensor], keys, k: int):
    """Run ``modules`` on K stacked parameter sets: returns logits [K, n, classes].

    Layouts: ``shared`` (one input for all points, the model's own shape), ``conv`` ([n, K*C, *sp]:
    point k owns channels k*C..(k+1)*C), ``conv_flat`` (a conv-layout tensor that a Flatten has
    flattened in name only: the Linear after it reads it in memory order) and ``flat`` ([K, n, F]).
    """
    for key, m in zip(keys, modules, strict=True):
        if isinstance(m, _SKIP):
            continue
        if layout == "conv_flat" and not isinstance(m, (nn.Linear, *_ELEMENTWISE)):
            h, layout = h.reshape(h.shape[0], k, -1).transpose(0, 1), "flat"  # materialise the flatten
        if isinstance(m, nn.Conv2d):
            if m.padding_mode != "zeros" or layout == "flat":
                raise _Unsupported(f"{type(m).__name__} here")
            w = p[f"{key}.weight"]
            b = p.get(f"{key}.bias")
            w = w.reshape(-1, *w.shape[2:])
            groups = m.groups if layout == "shared" else m.groups * k
            h = F.conv2d(h, w, None if b is None else b.reshape(-1), m.stride, m.padding, m.dilation, groups)
            layout = "conv"
        elif isinstance(m, nn.Linear):
            w = p[f"{key}.weight"]  # [K, O, F]
            b = p.get(f"{key}.bias")  # [K, O]
            if layout == "conv_flat" and k == 1 and h.is_contiguous(memory_format=torch.channels_last):
                # One point, channels-last map: flatten it in (H, W, C) memory order for free and permute
                # the (small) weight to match instead of copying the activations into (C, H, W) order.
                n, c, hh, ww = h.shape
                w = w.reshape(-1, c, hh, ww).permute(0, 2, 3, 1).reshape(w.shape[1], -1)
                feats = h.permute(0, 2, 3, 1).reshape(n, -1)
                h = (feats @ w.t() if b is None else torch.addmm(b[0], feats, w.t())).unsqueeze(0)
            elif layout == "conv_flat":
                h = h.reshape(h.shape[0], k, -1).transpose(0, 1)  # [K, n, C*H*W]: a copy
                wt = w.transpose(1, 2)
                h = torch.bmm(h, wt) if b is None else torch.baddbmm(b.unsqueeze(1), h, wt)
            elif layout == "shared" and h.dim() == 2:
                h = h @ w.reshape(-1, w.shape[-1]).t()
                if b is not None:
                    h += b.reshape(-1)
                h = h.view(h.shape[0], k, -1).transpose(0, 1)
            elif layout == "flat":
                wt = w.transpose(1, 2)
                h = torch.bmm(h, wt) if b is None else torch.baddbmm(b.unsqueeze(1), h, wt)
            else:
                raise _Unsupported("Linear on a non-flat input")
            layout = "flat"
        elif any(True for _ in m.parameters()):
            raise _Unsupported(f"{type(m).__name__} with parameters")
        elif layout == "shared":
            h = m(h)  # anything parameter-free before the first layer (e.g. Normalize)
        elif isinstance(m, nn.ReLU):
            h = h.relu_()  # our own temporary: in place saves an allocation
        elif isinstance(m, _ELEMENTWISE) or (isinstance(m, _CHANNEL_POOLS) and layout == "conv"):
            h = m(h)
        elif isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1:
            if layout == "conv":
                layout = "conv_flat" if h.dim() == 4 else "flat"
                if layout == "flat":
                    h = h.reshape(h.shape[0], k, -1).transpose(0, 1)
        else:
            raise _Unsupported(f"{type(m).__name__} on stacked points")
    if layout == "conv_flat":
        h, layout = h.reshape(h.shape[0], k, -1).transpose(0, 1), "flat"
    if layout != "flat" or h.dim() != 3:
        raise _Unsupported("the model does not end in [batch, classes] logits")
    return h


@torch.inference_mode()
def _hoist(model: nn.Module, theta: dict[str, Tensor], x: Tensor, bases: list[dict[str, Tensor]]):
    """The first layer's output for every base (θ, d1[, d2]) when the copies fit the memory budget: the
    layer is linear in its parameters, so its output at any point is the same combination of these.
    Returns (outputs or None, the rest of the model, the parameter names the rest uses)."""
    prefix, first_key, first, tail = _split(model, list(theta))
    names_tail = [n for n in theta if first_key is None or not n.startswith(f"{first_key}.")]
    if first is None:
        return None, tail, names_tail
    inp = x
    for m in prefix:
        inp = m(inp)
    local = [n for n, _ in first.named_parameters()]
    probe = functional_call(first, {n: theta[f"{first_key}.{n}"] for n in local}, (inp[:1],))
    fits = probe.numel() * len(x) * len(bases) * probe.element_size() <= _HOIST_BUDGET
    if not (fits and probe.dim() == (2 if isinstance(first, nn.Linear) else probe.dim())):
        return None, model, list(theta)  # too big to keep three copies (or a Linear on a non-flat input): no hoist
    layout = torch.channels_last if probe.dim() == 4 else torch.contiguous_format
    zs = [
        functional_call(first, {n: b[f"{first_key}.{n}"] for n in local}, (inp,)).contiguous(memory_format=layout)
        for b in bases
    ]
    return zs, tail, names_tail


def _point_logits(method: str, modules, keys, tail, p, zs, xb: Tensor, coef: Tensor, s: int, batch: int):
    """Logits [k, n, classes] of one batch at the chunk's k points, and the method that produced them
    (``grouped`` falls back to ``vmap`` for good on a layer it does not handle)."""
    k = len(coef)
    if method == "grouped":
        try:
            if zs is not None:
                h, layout = _as_grouped(_combine([z[s : s + batch] for z in zs], coef), k)
            else:
                h, layout = xb, "shared"
            return _grouped_forward(modules, h, layout, p, keys, k), method
        except _Unsupported:
            method = "vmap"
    inp = _as_vmapped(_combine([z[s : s + batch] for z in zs], coef)) if zs is not None else xb
    return _vmapped_logits(tail, p, inp, zs is not None), method


def _losses(
    model: nn.Module,
    x: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    coefs: np.ndarray,
    d1: dict[str, Tensor],
    d2: dict[str, Tensor] | None,
    desc: str,
    *,
    chunk: int | None = None,
    batch: int | None = None,
    method: str = "auto",
    progress: bool = True,
) -> np.ndarray:
    """Mean cross-entropy over (x, y) at every point ``coefs[p] · (θ, d1, d2)``: float64 [P].

    ``desc`` names the progress bar; the keywords (and their defaults) are :class:`LossOptions`.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    theta = trainable_parameters(model)
    if set(d1) != set(theta) or (d2 is not None and set(d2) != set(theta)):
        raise ValueError("directions must have exactly the model's trainable parameters (see random_direction)")
    first_param = next(iter(theta.values()))
    device, dtype = first_param.device, first_param.dtype
    x = torch.as_tensor(x).to(device=device, dtype=dtype)
    y = torch.as_tensor(y).to(device=device, dtype=torch.long)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"x and y must be non-empty and of equal length; got {len(x)} and {len(y)}")
    n_img = len(x)
    if d2 is None:
        coefs = coefs[:, :2]
    bases = [theta, d1] + ([d2] if d2 is not None else [])
    stacked = {n: torch.stack([b[n].to(theta[n]) for b in bases]) for n in theta}  # [J, *shape]
    coef_all = torch.as_tensor(coefs, dtype=dtype, device=device)

    was_training = model.training
    model.eval()
    try:
        zs, tail, names_tail = _hoist(model, theta, x, bases)
        modules = list(tail._modules.values()) if isinstance(tail, nn.Sequential) else None
        keys = list(tail._modules) if isinstance(tail, nn.Sequential) else None
        if method == "auto":
            method = "grouped" if modules is not None else "vmap"
        if method == "grouped" and modules is None:
            raise ValueError("method 'grouped' needs an nn.Sequential model; use 'vmap'")

        k_max = max(1, min(chunk or _CHUNK.get(device.type, 4), len(coefs)))
        if batch is None:
            first_in = zs[0][:1] if zs is not None else x[:1]
            per_image = _max_activation_numel(tail, first_in, {n: theta[n] for n in names_tail})
            budget = _ACT_BUDGET.get(device.type, _ACT_BUDGET["cpu"])
            batch = max(1, min(n_img, budget // max(1, k_max * per_image * first_param.element_size())))
        starts = list(range(0, n_img, batch))

        sums = torch.zeros(len(coefs), dtype=torch.float64, device=device)
        bar = tqdm(total=len(coefs), desc=desc, unit="pt", file=sys.stderr, disable=not progress, leave=False)
        try:
            for c0 in range(0, len(coefs), k_max):
                coef = coef_all[c0 : c0 + k_max]
                k = len(coef)
                p = {
                    n: (coef @ stacked[n].reshape(len(bases), -1)).reshape(k, *stacked[n].shape[1:]) for n in names_tail
                }
                for s in starts:
                    yb = y[s : s + batch]
                    logits, method = _point_logits(method, modules, keys, tail, p, zs, x[s : s + batch], coef, s, batch)
                    nb = logits.shape[1]
                    ce = F.cross_entropy(logits.reshape(k * nb, -1), yb.repeat(k), reduction="none")
                    sums[c0 : c0 + k] += ce.view(k, nb).sum(1, dtype=torch.float64)
                bar.update(k)
        finally:
            bar.close()
    finally:
        model.train(was_training)
    return (sums / n_img).cpu().numpy()


def _vmapped_logits(tail: nn.Module, p: dict[str, Tensor], inp: Tensor, batched_input: bool) -> Tensor:
    """[K, n, classes] via vmap over functional_call (any model)."""

    def one(params: dict[str, Tensor], xb: Tensor) -> Tensor:
        return functional_call(tail, params, (xb,))

    return vmap(one, in_dims=(0, 0 if batched_input else None))(p, inp)


# ----------------------------------------------------------------------------------------- API


class LossOptions(TypedDict, total=False):
    """How :func:`loss_curve` and :func:`loss_grid` evaluate their points, as keywords (all optional).

    ``chunk``: points per forward pass (default: 1 on CPU, where batching points measured no
    faster, 64 on CUDA); ``batch``: images per forward pass (default: as many as fit a small
    activation budget); ``method``: ``"auto"`` (default), ``"grouped"`` or ``"vmap"`` (see the
    module docstring); ``progress``: a progress bar on stderr (default on).
    """

    chunk: int | None
    batch: int | None
    method: Method
    progress: bool


def loss_curve(
    model: nn.Module,
    x: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    alphas: Sequence[float] | np.ndarray,
    direction: dict[str, Tensor],
    mode: Mode,
    **options: Unpack[LossOptions],
) -> np.ndarray:
    """Mean cross-entropy on (x, y) along ``direction``: float64 [len(alphas)].

    ``x``: float or uint8 images as the model takes them (NHWC 0..255 here), ``y``: int labels.
    """
    alphas = np.asarray(alphas, dtype=np.float64).reshape(-1)
    coefs = _coefficients(mode, alphas, None)
    return _losses(model, x, y, coefs, direction, None, "landscape 1d", **options)


def loss_grid(
    model: nn.Module,
    x: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    alphas: Sequence[float] | np.ndarray,
    betas: Sequence[float] | np.ndarray,
    d1: dict[str, Tensor],
    d2: dict[str, Tensor],
    mode: Mode,
    **options: Unpack[LossOptions],
) -> np.ndarray:
    """Mean cross-entropy on (x, y) over the grid: float64 [len(alphas), len(betas)], ``Z[i, j]`` at
    ``(alphas[i], betas[j])`` (the reference notebooks' ``ZZ.reshape(size, size)`` with α the outer loop)."""
    a = np.asarray(alphas, dtype=np.float64).reshape(-1)
    b = np.asarray(betas, dtype=np.float64).reshape(-1)
    aa, bb = np.meshgrid(a, b, indexing="ij")
    coefs = _coefficients(mode, aa.ravel(), bb.ravel())
    z = _losses(model, x, y, coefs, d1, d2, "landscape 2d", **options)
    return z.reshape(len(a), len(b))


def summarize(alphas: Sequence[float] | np.ndarray, curve: Sequence[float] | np.ndarray, radius: float = 0.5) -> dict:
    """Scalar summaries of a 1-D curve (linear interpolation between points where needed).

    ``loss_center`` (α=0), ``loss_min`` and ``alpha_at_min``, ``loss_increase_minus`` /
    ``loss_increase_plus`` (loss at α=∓radius minus the centre: sharpness proxies, NaN when the
    axis does not reach them), ``sharpness`` (their mean) and ``radius``.
    """
    a = np.asarray(alphas, dtype=np.float64).reshape(-1)
    c = np.asarray(curve, dtype=np.float64).reshape(-1)
    if a.shape != c.shape or a.size == 0:
        raise ValueError(f"alphas and curve must be non-empty and of equal length; got {a.size} and {c.size}")
    order = np.argsort(a)
    a, c = a[order], c[order]

    def at(v: float) -> float:
        return float(np.interp(v, a, c)) if a[0] <= v <= a[-1] else math.nan

    center = at(0.0)
    minus, plus = at(-radius) - center, at(radius) - center
    i = int(np.argmin(c))
    return {
        "loss_center": center,
        "loss_min": float(c[i]),
        "alpha_at_min": float(a[i]),
        "loss_increase_minus": minus,
        "loss_increase_plus": plus,
        "sharpness": (minus + plus) / 2,
        "radius": float(radius),
    }
