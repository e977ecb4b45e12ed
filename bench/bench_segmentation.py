"""Benchmark: U-Net forward+backward, channels-first (NCHW) vs channels-last (NHWC) memory.

The reference notebook's notes say channels-last is for the CPU and channels-first for the GPU; this measures
what holds on the machine at hand. Each variant runs ``UNet.forward_nchw`` (the network after the
input normalisation) on a normalised [B, C, H, W] batch, with the weights and the input in the
same memory format, then ``backward`` of a cross-entropy loss, after ``--warmup`` untimed steps;
reported are the median and the minimum of ``--repeats`` timed steps per variant (and the IQR, to
show the noise); the variants run interleaved, step by step, so outside load hits them alike.
A third CPU row "as deployed" runs the model's own ``forward`` on raw NHWC pixels: the permute in
``Normalize`` makes that channels-last already, which is what ``pipelines/segment.py`` trains with.

Variants: fp32 channels-first, fp32 channels-last, and bf16 autocast (both formats) only where
``pipelines.device.cpu_has_native_bf16()`` says bf16 is native (AMX / AVX512-BF16; emulated
bf16 is ~9x slower, see PITFALLS). On CUDA the same rows in fp32 and bf16; without CUDA the GPU
part prints "skipped: no CUDA".

    PYTHONPATH=. .venv/bin/python bench/bench_segmentation.py [--batch 16] [--size 64] [--base 16] [--repeats 10]

Timings on a shared machine are noisy: run it alone (another torch process on the same cores
can make it 3-6x slower) and compare ratios from one invocation only.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

from models import count_params, create_model
from pipelines.device import cpu_has_native_bf16


def one_step(model, forward, x, y, dtype) -> float:
    """Seconds for ``forward(x)`` + cross-entropy + backward of ``model``."""
    device = x.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        logits = forward(x)
    loss = F.cross_entropy(logits.float(), y)
    model.zero_grad(set_to_none=True)
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def bench_device(device: torch.device, args) -> list[dict]:
    """Variants interleaved step by step (A B C A B C ...), so load from other processes hits all alike."""
    torch.manual_seed(0)
    h, w = args.size, args.size
    first = create_model(
        "unet_small",
        num_classes=args.classes,
        in_shape=(h, w, args.channels),
        mean=(0.5,) * args.channels,
        std=(0.25,) * args.channels,
        base=args.base,
        depth=args.depth,
    ).to(device, memory_format=torch.contiguous_format)
    last = copy.deepcopy(first).to(memory_format=torch.channels_last)  # same weights, NHWC memory
    raw = torch.rand(args.batch, h, w, args.channels, device=device) * 255
    y = torch.randint(0, args.classes, (args.batch, h, w), device=device)
    with torch.no_grad():
        x = first.normalize(raw)
    x_first, x_last = x.contiguous(), x.contiguous(memory_format=torch.channels_last)
    dtypes = [("fp32", None)]
    native_bf16 = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_native_bf16()
    if native_bf16:
        dtypes.append(("bf16", torch.bfloat16))
    elif device.type == "cpu":
        print("cpu bf16: skipped (no AMX / AVX512-BF16 on this CPU: bf16 would be emulated)")
    variants = []  # (precision, format, model, forward, input, dtype)
    for prec, dtype in dtypes:
        variants.append((prec, "channels-first", first, first.forward_nchw, x_first, dtype))
        variants.append((prec, "channels-last", last, last.forward_nchw, x_last, dtype))
        if device.type == "cpu":
            variants.append((prec, "as deployed (NHWC in)", last, last, raw, dtype))
    times: list[list[float]] = [[] for _ in variants]
    for i in range(args.warmup + args.repeats):
        for k, (_, _, model, forward, inp, dtype) in enumerate(variants):
            t = one_step(model, forward, inp, y, dtype)
            if i >= args.warmup:
                times[k].append(t)
    print(f"unet_small base {args.base} depth {args.depth}: {count_params(first):,} params", flush=True)
    return [_row(device, v[0], v[1], t, args.batch) for v, t in zip(variants, times)]


def _row(device, prec, fmt, times, batch) -> dict:
    q1, med, q3 = statistics.quantiles(times, n=4) if len(times) > 1 else (times[0],) * 3
    return {
        "device": device.type,
        "precision": prec,
        "format": fmt,
        "ms_per_step": med * 1000,
        "min_ms": min(times) * 1000,
        "iqr_ms": (q3 - q1) * 1000,
        "img_per_s": batch / med,
    }


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=64, help="H = W of the input (odd sizes work too)")
    p.add_argument("--channels", type=int, default=1, help="input channels")
    p.add_argument("--classes", type=int, default=11, help="output classes (11 = segdigits multiclass)")
    p.add_argument("--base", type=int, default=16, help="U-Net width of level 1")
    p.add_argument("--depth", type=int, default=3, help="U-Net levels")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--cpu", action=argparse.BooleanOptionalAction, default=True, help="benchmark the CPU")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, capability "
        f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {cpu_has_native_bf16()}; "
        f"batch {args.batch} x {args.size}x{args.size}x{args.channels}, {args.classes} classes",
        flush=True,
    )
    rows = []
    if args.cpu:
        rows += bench_device(torch.device("cpu"), args)
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        rows += bench_device(torch.device("cuda"), args)
        print(f"gpu: {torch.cuda.get_device_name()}")
    else:
        print("gpu: skipped: no CUDA")
    print()
    print(f"{'device':<6} {'prec':<5} {'format':<22} {'median ms':>10} {'min ms':>8} {'IQR ms':>8} {'img/s':>8}")
    for r in rows:
        print(
            f"{r['device']:<6} {r['precision']:<5} {r['format']:<22} {r['ms_per_step']:>10.1f} "
            f"{r['min_ms']:>8.1f} {r['iqr_ms']:>8.1f} {r['img_per_s']:>8.1f}"
        )
    print()
    for dev in sorted({r["device"] for r in rows}):
        for prec in sorted({r["precision"] for r in rows if r["device"] == dev}):
            by = {r["format"]: r["ms_per_step"] for r in rows if r["device"] == dev and r["precision"] == prec}
            best = {r["format"]: r["min_ms"] for r in rows if r["device"] == dev and r["precision"] == prec}
            ratio = by["channels-first"] / by["channels-last"]
            faster = "channels-last" if ratio > 1 else "channels-first"
            print(
                f"{dev} {prec}: channels-first / channels-last time = {ratio:.2f} median, "
                f"{best['channels-first'] / best['channels-last']:.2f} min "
                f"({faster} faster by {max(ratio, 1 / ratio):.2f}x at the median)"
            )
        fp32 = {r["format"]: r["ms_per_step"] for r in rows if r["device"] == dev and r["precision"] == "fp32"}
        for r in rows:
            if r["device"] == dev and r["precision"] == "bf16":
                print(f"{dev} bf16 {r['format']}: fp32 / bf16 time = {fp32[r['format']] / r['ms_per_step']:.2f}")
    return rows


if __name__ == "__main__":
    main()
