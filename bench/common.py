"""Shared by ``bench_train.py`` and ``bench_scaling.py``: data, machine facts, peak GEMM, FLOP counts, results.

Benchmarks, not tests: run them alone on the machine (another torch process on the same cores makes
timings 3-6x off, see PITFALLS "Data and speed").
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/x.py` from the repo root works without PYTHONPATH=.
    sys.path.insert(0, str(ROOT))

from models import create_model, model_info  # noqa: E402
from pipelines import trainer  # noqa: E402
from pipelines.data import Dataset, load_dataset  # noqa: E402
from pipelines.data.cifar100 import DEFAULT_CLASSES, write_synthetic  # noqa: E402
from pipelines.device import cpu_has_native_bf16, pick_precision  # noqa: E402
from tracking.env import cpu_name  # noqa: E402

RESULTS_DIR = ROOT / "bench" / "results"
MODEL = "pooling_cnn"


# ---------------------------------------------------------------- data


def load_data(data_dir: str | None, per_class_train: int = 500, per_class_test: int = 100, seed: int = 0) -> Dataset:
    """Real CIFAR-100 subset (classes 0, 33, 41) from ``data_dir``, else a synthetic one of the same shape.

    The synthetic one is written in the real pickle format and read back through the real loader,
    so both paths give the pipeline's ``Dataset`` (uint8 NHWC, int64 labels 0..2).
    """
    if data_dir:
        return load_dataset("cifar100", data_dir, DEFAULT_CLASSES)
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic(tmp, per_class_train=per_class_train, per_class_test=per_class_test, seed=seed)
        return load_dataset("cifar100", tmp, DEFAULT_CLASSES)


def tensors(ds: Dataset, device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
    """As ``pipelines.train`` does: float32 pixels and int64 labels, resident on ``device``, moved once."""
    return (
        torch.from_numpy(ds.x_train).to(device).float(),
        torch.from_numpy(ds.y_train).to(device),
        torch.from_numpy(ds.x_test).to(device).float(),
        torch.from_numpy(ds.y_test).to(device),
    )


def recipe(epochs: int, batch_size: int | None = None) -> dict:
    """The notebook recipe of the pooling CNN (SGD 5e-3, momentum 0.9, batch 128) for ``epochs`` epochs."""
    r = dict(model_info(MODEL).recipe)
    r["epochs"] = epochs
    if batch_size:
        r["batch_size"] = batch_size
    return r


def make_model(pooling: str, seed: int, num_classes: int = 3, device="cpu", channels_last: bool = True) -> nn.Module:
    """The same initial weights for a given seed, whatever loop trains it."""
    torch.manual_seed(seed)
    model = create_model(MODEL, num_classes=num_classes, pooling=pooling)
    if channels_last:
        return model.to(device, memory_format=torch.channels_last)
    return model.to(device)


class ReferenceNormalize(nn.Module):
    """The notebook's ``Normalize``, as written there: three broadcast ops, then the NHWC -> NCHW permute."""

    def __init__(self, mean, std, device):
        super().__init__()
        self.mean = torch.tensor(mean).to(device)  # plain attributes, as in the notebook: not buffers
        self.std = torch.tensor(std).to(device)

    def forward(self, input):
        x = input / 255.0
        x = x - self.mean
        x = x / self.std
        return x.permute(0, 3, 1, 2)


def reference_model(pooling: str, seed: int, num_classes: int = 3, device="cpu") -> nn.Module:
    """The reference notebook's model code (its ``Normalize``, ReLU -> pool, ``nn.Flatten``) with our initial weights.

    Our registry's ``pooling_cnn`` computes the same function with faster layers and order
    (``models.layers``; max pool before its ReLU, flatten + linear as one NHWC-order module); the
    reference loop runs the reference notebook's own layers, so those differences count on our side of the ratio.
    Weights: ours for ``seed``, tensor for tensor in order.
    """
    ours = make_model(pooling, seed, num_classes, channels_last=False)
    layers = [
        ReferenceNormalize(ours[0].mean.tolist(), ours[0].std.tolist(), device),
        nn.Conv2d(3, 32, 5, stride=4 if pooling == "stride" else 1, padding=2),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=1, padding=1),
        nn.ReLU(),
        *{"max": [nn.MaxPool2d(4)], "avg": [nn.AvgPool2d(4)], "stride": []}[pooling],
        nn.Flatten(),
        nn.Linear(64 * 8 * 8, num_classes),
    ]
    model = nn.Sequential(*layers)
    weights = [v for k, v in ours.state_dict().items() if not k.startswith("0.")]  # 0: Normalize's mean/std
    model.load_state_dict(dict(zip(model.state_dict(), weights, strict=True)))  # in order: our head is one module
    return model.to(device)


@torch.no_grad()
def test_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Exact accuracy over the whole test set, computed the same way for every loop (fp32, eval mode)."""
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
    return correct / len(x)


# ---------------------------------------------------------------- our trainer, one lever changed


@contextlib.contextmanager
def num_threads(n: int | None):
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def optimizer_impl(impl: str | None):
    """Swap the trainer's optimizer step implementation: ``foreach`` (ours), ``fused`` or ``for-loop``."""
    if impl is None:
        yield
        return
    original = trainer.make_optimizer

    def make(model, recipe_):
        opt = original(model, recipe_)
        options = {**opt.defaults, "foreach": impl == "foreach", "fused": True if impl == "fused" else None}
        return type(opt)(model.parameters(), **options)

    trainer.make_optimizer = make
    try:
        yield
    finally:
        trainer.make_optimizer = original


@contextlib.contextmanager
def onednn(enabled: bool):
    """oneDNN (mkldnn) kernels on/off; off falls back to ATen's own conv (im2col + GEMM)."""
    if enabled:
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "TF32 acceleration on top of oneDNN ... Intel GPUs"
        with torch.backends.mkldnn.flags(enabled=False):
            yield


def run_fit(
    data: tuple[torch.Tensor, ...],
    pooling: str,
    epochs: int,
    seed: int,
    precision: str,
    *,
    channels_last: bool = True,
    eval_every: int = 1,
    threads: int | None = None,
    mkldnn: bool = True,
    opt_impl: str | None = None,
    compile_mode: str | None = None,
    on_epoch=None,
    batch_size: int | None = None,
    reference_layers: bool = False,
) -> dict:
    """Our ``fit`` as ``pipelines.train`` calls it (model channels_last, data resident), with one lever changed."""
    x, y, xt, yt = data
    if reference_layers:  # our loop on the reference notebook's model code: what models.layers is worth
        model = reference_model(pooling, seed, int(y.max()) + 1, x.device)
        model = model.to(memory_format=torch.channels_last) if channels_last else model
    else:
        model = make_model(pooling, seed, int(y.max()) + 1, x.device, channels_last)
    net = model
    if compile_mode:
        torch._dynamo.reset()  # compile from scratch: the compile time is part of what is measured
        net = torch.compile(model, mode=None if compile_mode == "default" else compile_mode)
    with num_threads(threads), onednn(mkldnn), optimizer_impl(opt_impl):
        t0 = time.perf_counter()
        state = trainer.fit(
            net,
            x_train=x,
            y_train=y,
            x_test=xt,
            y_test=yt,
            recipe=recipe(epochs, batch_size),
            seed=seed,
            precision=precision,
            eval_every=eval_every,
            checkpoint_every=10**9,
            checkpoint_path=None,
            on_epoch=on_epoch,
            progress=False,
        )
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    return {
        "epoch_seconds": [h["epoch_seconds"] for h in state.history],
        "wall_s": wall,
        "acc": test_accuracy(model, xt, yt),
    }


def isolated(fn, /, *args, **kwargs):
    """``fn(*args, **kwargs)`` in a fresh spawned process, its result returned.

    Process-wide state cannot leak from one measured loop into the next: the glibc allocator
    settings our trainer makes (``pipelines.device.tune_cpu_allocator``), oneDNN flags, threads,
    compiled graphs. The reference loop runs as a notebook would, in a process that never saw ours.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def fit_in_process(ds: Dataset, pooling: str, epochs: int, seed: int, kw: dict) -> dict:
    """``run_fit`` on ``ds`` (for ``isolated``); ``allocator="default"`` leaves glibc untuned."""
    kw = dict(kw)
    if kw.pop("allocator", None) == "default":
        os.environ["PIPELINE_CPU_ALLOCATOR"] = "default"
    return run_fit(tensors(ds), pooling, epochs, seed, **kw)


# ---------------------------------------------------------------- machine


def machine_info() -> dict:
    info = {
        "cpu_model": cpu_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_native_bf16": cpu_has_native_bf16(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "mkldnn": torch.backends.mkldnn.is_available(),
        "python": platform.python_version(),
        "cuda": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    with contextlib.suppress(OSError):  # a high load average at start means the numbers are not to be trusted
        info["loadavg_1min"] = os.getloadavg()[0]
    return info


def print_machine(info: dict) -> None:
    print(f"CPU: {info['cpu_model']} | capability {info['cpu_capability']} | native bf16 {info['cpu_native_bf16']}")
    print(
        f"torch {info['torch']} | threads {info['torch_threads']} of {info['cpu_count']} CPUs | "
        f"oneDNN {info['mkldnn']} | CUDA {info['cuda']}{' (' + info['gpu'] + ')' if info['gpu'] else ''}"
    )
    load = info.get("loadavg_1min")
    if load is not None and load > 0.5 * (info["cpu_count"] or 1):
        print(f"WARNING: load average {load:.1f} on {info['cpu_count']} CPUs: something else runs; timings are noisy")


def start(args) -> tuple[dict, str]:
    """A benchmark's first lines: ``--threads`` applied, the machine printed, ``--precision`` resolved for the CPU.
    Returns (machine info, precision)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info()
    print_machine(info)
    return info, pick_precision(args.precision, torch.device("cpu"))


def peak_gemm_gflops(dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 15) -> float:
    """Measured peak: GFLOPS of the fastest of ``repeats`` n x n x n matmuls (2 n^3 FLOPs), after a warm-up.

    The fastest, not the median: a peak is what the machine can do, and on a shared VM a slow
    second during the measurement would otherwise lower it (medians of 7 read 90-152 GFLOPS on
    the same EPYC in one day) and inflate every "% of peak" after it.
    """
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / min(times) / 1e9


def peaks(n: int = 2048, repeats: int = 15) -> dict[str, float]:
    """fp32 peak always; bf16 only where the CPU does it natively (emulated bf16 is no peak worth quoting)."""
    out = {"fp32": peak_gemm_gflops(torch.float32, n, repeats)}
    if cpu_has_native_bf16():
        out["bf16"] = peak_gemm_gflops(torch.bfloat16, n, repeats)
    return out


# ---------------------------------------------------------------- FLOPs


def flops_per_image(pooling: str, batch_size: int = 128, in_shape=(32, 32, 3), num_classes: int = 3) -> dict:
    """FLOPs per image, counted once by FlopCounterMode: training step (forward + backward) and eval forward.

    FlopCounterMode counts matmuls and convolutions (what dominates here); pooling, ReLU, the loss and
    the optimizer step are not counted. FLOPs are linear in the batch size for these layers, so the
    count of one full batch divided by its size holds for any batch.
    """
    model = create_model(MODEL, num_classes=num_classes, in_shape=in_shape, pooling=pooling)
    x = torch.rand(batch_size, *in_shape) * 255
    y = torch.randint(0, num_classes, (batch_size,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    train = counter.get_total_flops() / batch_size
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return {"train": train, "eval": counter.get_total_flops() / batch_size}


def epoch_flops(per_image: dict, n_train: int, n_test: int, evaluated: bool = True) -> float:
    return per_image["train"] * n_train + (per_image["eval"] * n_test if evaluated else 0.0)


# ---------------------------------------------------------------- stats and output


def median(xs) -> float:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return statistics.median(xs) if xs else float("nan")


def fmt_list(xs, digits: int = 3) -> str:
    return "[" + " ".join(f"{x:.{digits}f}" for x in xs) + "]"


def md_table(headers: list[str], rows: list[list]) -> str:
    def cell(v):
        if isinstance(v, float):
            return "n/a" if math.isnan(v) else f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name: str, results: dict, markdown: str, args, machine: dict, precision: str) -> dict:
    """Print the Markdown, write ``bench/results/<name>-<time>.{json,md}`` (gitignored) plus
    ``<name>-latest.*`` copies; returns the JSON payload (command, args, machine, precision, results)."""
    payload = {"command": command_line(), "args": vars(args), "machine": machine, "precision": precision, **results}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    js = json.dumps(payload, indent=2, default=_json_default)
    for suffix, text in ((".json", js), (".md", markdown + "\n")):
        (RESULTS_DIR / f"{name}-{stamp}{suffix}").write_text(text)
        (RESULTS_DIR / f"{name}-latest{suffix}").write_text(text)
    print("\n" + markdown)
    print(f"\nwritten: {RESULTS_DIR / name}-{stamp}.json and .md (and {name}-latest.*)")
    return payload


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    return repr(o)


def command_line() -> str:
    return "PYTHONPATH=. .venv/bin/python " + " ".join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])
