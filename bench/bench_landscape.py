"""Benchmark: the reference notebook's loss-landscape loop vs ``pipelines.analysis.landscape`` in one process.

(a) the reference notebook's 2-D loop, faithfully: per point build a state_dict from numpy directions
    (``v + a1 (tensor(d1) − v)``, then ``t + a2 (tensor(d2) − t)``), ``load_state_dict``, and loop a
    ``DataLoader`` (batch 128, shuffle, one-hot labels, ``CrossEntropyLoss(reduction='none')``) over
    the test set; timed on ``--reference-points`` points spread over the grid and extrapolated per point;
(b) our fast path on the full grid (61×61 at the default step 0.05), checked against (a) where
    both computed the same points.
The two are interleaved (``--blocks``: a block of grid rows, then a share of the reference-style points)
so that both see the same load from other processes; the full-grid time is the sum of the blocks.

By default the data are a synthetic CIFAR-100 in the real pickle format (300 test images of the
classes 0, 33, 41) written to a temporary folder; ``--data-dir /work/shared/data`` uses real files.
The model is trained for ``--epochs`` quick epochs (SGD lr 5e-3, momentum 0.9, batch 128) so the
landscape is not that of a random init; ``--epochs 0`` keeps the random init.

    PYTHONPATH=. .venv/bin/python bench/bench_landscape.py [--data-dir DIR] [--pooling max stride] [--grid 0.05]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/bench_landscape.py` from the repo root works without PYTHONPATH=.
    sys.path.insert(0, str(ROOT))

from models import count_params, create_model  # noqa: E402
from pipelines.analysis.landscape import METHODS, MODES, loss_grid, random_direction, reference_grid_axis  # noqa: E402
from pipelines.data import load_dataset  # noqa: E402
from pipelines.data.cifar100 import write_synthetic  # noqa: E402


def reference_grid_points(model: nn.Module, test_x: np.ndarray, test_y: np.ndarray, theta1, theta2, points, k):
    """The reference notebook's 2-D loop (``Z.append(...)`` per point), over ``points`` = [(a1, a2), ...]."""
    device = torch.device("cpu")
    tensor_x = torch.Tensor(test_x)
    tensor_y = F.one_hot(torch.Tensor(test_y).to(torch.int64), num_classes=k) / 1.0
    loader = DataLoader(TensorDataset(tensor_x, tensor_y), batch_size=128, shuffle=True)
    criterion2 = nn.CrossEntropyLoss(reduction="none")
    model.eval()
    state_dict_backup = copy.deepcopy(model.state_dict())
    param_names = {n for n, _ in model.named_parameters()}
    Z = []
    for a1, a2 in points:
        state_dict = model.state_dict()
        directions = iter(zip(theta1, theta2, strict=True))
        for k_, v in state_dict_backup.items():
            if k_ not in param_names:  # our Normalize keeps mean/std as buffers; the reference notebook's had none
                continue
            v_new, v_new2 = next(directions)
            tensor = v.clone().detach() + a1 * (torch.tensor(v_new, device=device) - v.clone().detach())
            tensor = tensor + a2 * (torch.tensor(v_new2, device=device) - tensor)
            state_dict[k_] = tensor
        model.load_state_dict(state_dict)
        loss = []
        with torch.no_grad():
            for inputs, labels in loader:
                outputs = model(inputs).detach()
                loss.append(criterion2(outputs, labels).detach().cpu().numpy())
        Z.append(np.concatenate(loss).mean())
    model.load_state_dict(state_dict_backup)
    return np.array(Z)


def quick_train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, seed: int = 0) -> float:
    """A few epochs of the reference notebooks' recipe (SGD 5e-3, momentum 0.9, batch 128); returns train accuracy."""
    torch.manual_seed(seed)
    xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)
    opt = torch.optim.SGD(model.parameters(), lr=5e-3, momentum=0.9)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(xt)).split(128):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        return float((model(xt).argmax(1) == yt).float().mean())


def macs_per_image(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds of the conv and linear layers for one image."""
    total = 0

    def hook(m, _inp, out):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            total += out.numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model(x[:1])
    for h in handles:
        h.remove()
    return total


BF16_TOLERANCE = 1e-3  # a bf16 grid is worth having only if no point moves more than this from fp32


def bf16_check(model, x_test, y_test, axis, d1, d2, mode, fast_kw, z_fp32, fp32_seconds) -> dict:
    """The same grid under ``torch.autocast(bfloat16)``: largest deviation from fp32 and the time ratio."""
    t = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = loss_grid(model, x_test, y_test, axis, axis, d1, d2, mode, **fast_kw)
    seconds = time.perf_counter() - t
    diff = float(np.abs(z - z_fp32).max())
    verdict = "within" if diff <= BF16_TOLERANCE else "outside"
    print(
        f"  bf16 grid: max|bf16 - fp32| {diff:.1e} ({verdict} {BF16_TOLERANCE:g}), "
        f"{seconds:.1f} s vs fp32 {fp32_seconds:.1f} s (x{fp32_seconds / seconds:.2f})",
        flush=True,
    )
    return {"bf16_max_abs_diff": diff, "bf16_grid_s": seconds, "bf16_speedup": fp32_seconds / seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", help="folder with cifar-100-python/ (default: synthetic data in a temp dir)")
    ap.add_argument("--model", choices=["all", "pooling_cnn", "cnn_reference"], default="all")
    ap.add_argument("--pooling", nargs="+", default=["max", "stride"], choices=["max", "stride", "avg"])
    ap.add_argument("--grid", type=float, default=0.05, help="grid step over [-1.5, 1.5] (0.05: 61x61)")
    ap.add_argument("--reference-points", type=int, default=50, help="points timed with the reference-style loop")
    ap.add_argument("--epochs", type=int, default=3, help="quick training epochs before (0: random init)")
    ap.add_argument("--mode", choices=MODES, default="reference")
    ap.add_argument("--method", choices=METHODS, default="auto")
    ap.add_argument("--chunk", type=int, default=None, help="grid points per forward pass (default: the library's)")
    ap.add_argument(
        "--blocks",
        type=int,
        default=None,
        help="interleave fast / reference-style timing in this many blocks (default: 1 reference point each)",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--progress", action="store_true", help="tqdm bar for the fast path")
    ap.add_argument(
        "--bf16-check",
        action="store_true",
        help=f"also the grid under bf16 autocast: max |bf16 - fp32| (usable if <= {BF16_TOLERANCE:g}) and its speed",
    )
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        if args.data_dir:
            data = load_dataset("cifar100", args.data_dir)
            source = args.data_dir
        else:
            write_synthetic(tmp, per_class_train=100, per_class_test=100)
            data = load_dataset("cifar100", tmp)
            source = "synthetic (write_synthetic, 100 test images per class)"
    specs = []
    if args.model in ("all", "pooling_cnn"):
        specs += [("pooling_cnn", {"pooling": p}) for p in args.pooling]
    if args.model in ("all", "cnn_reference"):
        specs.append(("cnn_reference", {}))

    axis = reference_grid_axis(args.grid)
    n_points = axis.size**2
    init = "random init" if args.epochs == 0 else f"trained {args.epochs} epochs"
    print(
        f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"threads {torch.get_num_threads()}, data: {source}, test images {len(data.x_test)}, "
        f"grid {axis.size}x{axis.size} = {n_points} points, mode {args.mode}, {init}",
        flush=True,
    )
    results = []
    for name, opts in specs:
        torch.manual_seed(0)
        model = create_model(name, num_classes=data.num_classes, in_shape=data.in_shape, **opts)
        train_acc = quick_train(model, data.x_train, data.y_train, args.epochs) if args.epochs else float("nan")
        d1, d2 = random_direction(model, 0), random_direction(model, 1011)  # the reference notebook's seeds
        theta1 = [d1[n].double().numpy() for n in d1]  # numpy arrays, as the notebook holds them
        theta2 = [d2[n].double().numpy() for n in d2]
        x_test = data.x_test.astype(np.float32)

        rng = np.random.default_rng(0)
        idx = np.sort(rng.choice(n_points, size=min(args.reference_points, n_points), replace=False))
        points = [(axis[i // axis.size], axis[i % axis.size]) for i in idx]
        reference_model = copy.deepcopy(model)
        # Interleave: a block of grid rows on the fast path, then a share of the reference-style points, so
        # both see the same load from other processes on this shared machine.
        blocks = args.blocks or len(points)
        row_blocks = np.array_split(np.arange(axis.size), max(1, min(blocks, axis.size, len(points))))
        point_blocks = np.array_split(np.arange(len(points)), len(row_blocks))
        z = np.empty((axis.size, axis.size))
        z_reference = np.empty(len(points))
        fast_total = reference_total = 0.0
        fast_kw = {"chunk": args.chunk, "progress": args.progress, "method": args.method}
        for rows, pts in zip(row_blocks, point_blocks, strict=True):
            t = time.perf_counter()
            z[rows] = loss_grid(model, x_test, data.y_test, axis[rows], axis, d1, d2, args.mode, **fast_kw)
            fast_total += time.perf_counter() - t
            t = time.perf_counter()
            z_reference[pts] = reference_grid_points(
                reference_model, x_test, data.y_test, theta1, theta2, [points[i] for i in pts], data.num_classes
            )
            reference_total += time.perf_counter() - t
        reference_per_point = reference_total / len(points)
        fast_per_point = fast_total / n_points
        same = args.mode == "reference"  # the reference-style loop computes the reference notebook's mode
        diff = float(np.abs(z.ravel()[idx] - z_reference).max()) if same else float("nan")
        rel = float((np.abs(z.ravel()[idx] - z_reference) / np.abs(z_reference)).max()) if same else float("nan")
        macs = macs_per_image(model, torch.as_tensor(x_test[:1]))
        gflops = 2 * macs * len(x_test) * n_points / fast_total / 1e9
        label = name + (f"[{opts['pooling']}]" if opts else "")
        row = {
            "model": label,
            "params": count_params(model),
            "train_acc": train_acc,
            "reference_s_per_point": reference_per_point,
            "fast_s_per_point": fast_per_point,
            "speedup": reference_per_point / fast_per_point,
            "fast_grid_s": fast_total,
            "reference_grid_s_extrapolated": reference_per_point * n_points,
            "max_abs_diff_vs_reference": diff,
            "max_rel_diff_vs_reference": rel,
            "mflop_per_image": 2 * macs / 1e6,
            "fast_gflops": gflops,
            "loss_center": float(z[axis.size // 2, axis.size // 2]),
        }
        if args.bf16_check:
            row.update(bf16_check(model, x_test, data.y_test, axis, d1, d2, args.mode, fast_kw, z, fast_total))
        results.append(row)
        reference_grid = row["reference_grid_s_extrapolated"]
        print(
            f"{label:20s} params {row['params']:6d}  train acc {train_acc:.3f}  "
            f"reference-style {reference_per_point * 1e3:7.1f} ms/pt "
            f"({len(points)} pts, grid ~{reference_grid:.0f} s)  "
            f"fast {fast_per_point * 1e3:6.2f} ms/pt (grid {fast_total:6.1f} s, {gflops:.0f} GFLOP/s)  "
            f"x{row['speedup']:.1f}  max|diff| {diff:.1e} (rel {rel:.1e})",
            flush=True,
        )
    if args.json:
        meta = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}
        with open(args.json, "w") as f:
            json.dump({**meta, "grid": int(axis.size), "mode": args.mode, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
