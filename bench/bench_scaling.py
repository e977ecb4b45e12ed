"""Benchmark: our trainer's time per epoch vs data-set size and vs batch size (images/s).

(a) data size: the synthetic CIFAR-shaped 1,500-image train subset tiled 1x, 4x, 16x (same pixels
    repeated: the cost of an epoch does not depend on what the pixels are), batch 128: seconds per
    epoch should grow linearly (the "cost vs linear" column stays near 1.0);
(b) batch size 32 .. 1024 on the 1x subset: images/s rises while per-step overhead (Python, kernel
    launches, the optimizer step) is amortised, then saturates where arithmetic dominates; the
    smallest batch within 10 % of the best throughput is printed as the saturation point.

Each point trains ``fit`` (channels_last, data resident, precision auto) for ``--warmup`` untimed
epochs, then ``--epochs`` timed training epochs (the test set is evaluated only at the final
epoch, which is not timed). Results: printed, and written to ``bench/results/bench_scaling-*``.
Run it ALONE on the machine.

    PYTHONPATH=. .venv/bin/python bench/bench_scaling.py [--poolings stride,max] [--sizes 1,4,16]
"""

from __future__ import annotations

import argparse
import time

from common import (  # bench/common.py, first: it puts the repo root on sys.path
    command_line,
    flops_per_image,
    fmt_list,
    load_data,
    md_table,
    median,
    peaks,
    run_fit,
    start,
    tensors,
    write_results,
)

POOLINGS = ("stride", "max", "avg")
SATURATION = 0.9  # throughput within 10 % of the best counts as saturated


def ints(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected a comma list of positive integers, got {text!r}")
    return values


def time_epochs(data, pooling: str, args, precision: str, batch_size: int = 128) -> tuple[float, list[float]]:
    """Median seconds of the timed training epochs (warm-up and the final, evaluated epoch excluded)."""
    total = args.warmup + args.epochs + 1
    times = []
    for _ in range(args.repeats):
        res = run_fit(data, pooling, total, args.seed, precision, eval_every=10**9, batch_size=batch_size)
        times += res["epoch_seconds"][args.warmup : -1]
    return median(times), times


def by_size(ds, pooling: str, args, precision: str, per_image: dict, peak: float) -> list[dict]:
    print(f"\n== {pooling}: time per epoch vs data-set size (batch 128)")
    base = tensors(ds)
    rows = []
    for k in args.sizes:
        x, y = base[0].repeat(k, 1, 1, 1), base[1].repeat(k)
        t, raw = time_epochs((x, y, base[2], base[3]), pooling, args, precision)
        n = len(x)
        gflops = per_image["train"] * n / t / 1e9
        row = {"size": f"{k}x", "k": k, "n_train": n, "s_per_epoch": t, "images_per_s": n / t}
        row.update({"ms_per_1k_images": 1e6 * t / n, "gflops": gflops, "pct_peak": 100 * gflops / peak})
        row["cost_vs_linear"] = t / (k * rows[0]["s_per_epoch"] / rows[0]["k"]) if rows else 1.0
        rows.append(row)
        print(
            f"  {k:3d}x {n:6d} images: {t:8.3f} s/epoch {fmt_list(raw)}  {n / t:8.0f} images/s  "
            f"cost vs linear {row['cost_vs_linear']:.2f}  {gflops:.1f} GFLOPS ({row['pct_peak']:.0f} % of peak)",
            flush=True,
        )
        del x, y
    worst = max(abs(r["cost_vs_linear"] - 1) for r in rows)
    print(f"  linear in data: largest deviation from linear {100 * worst:.0f} %")
    return rows


def by_batch(ds, pooling: str, args, precision: str, per_image: dict, peak: float) -> tuple[list[dict], int]:
    print(f"\n== {pooling}: throughput vs batch size ({len(ds.x_train)} images)")
    data = tensors(ds)
    n = len(ds.x_train)
    rows = []
    for bs in args.batch_sizes:
        t, raw = time_epochs(data, pooling, args, precision, batch_size=bs)
        gflops = per_image["train"] * n / t / 1e9
        rows.append(
            {
                "batch_size": bs,
                "steps_per_epoch": -(-n // bs),
                "s_per_epoch": t,
                "images_per_s": n / t,
                "gflops": gflops,
                "pct_peak": 100 * gflops / peak,
            }
        )
        print(
            f"  batch {bs:5d} ({rows[-1]['steps_per_epoch']:3d} steps): {t:8.3f} s/epoch {fmt_list(raw)}  "
            f"{n / t:8.0f} images/s  {gflops:.1f} GFLOPS ({rows[-1]['pct_peak']:.0f} % of peak)",
            flush=True,
        )
    best = max(r["images_per_s"] for r in rows)
    for r in rows:
        r["vs_best"] = r["images_per_s"] / best
    saturated = next(r["batch_size"] for r in rows if r["vs_best"] >= SATURATION)
    print(f"  throughput saturates at batch ~{saturated} (first within {100 * (1 - SATURATION):.0f} % of the best)")
    return rows, saturated


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--poolings", default="stride,max", help="comma list of stride,max,avg (default stride,max)")
    p.add_argument("--sizes", type=ints, default=[1, 4, 16], help="multiples of the 1,500-image subset")
    p.add_argument("--batch-sizes", type=ints, default=[32, 64, 128, 256, 512, 1024])
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per point (default 2)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up epochs per point (default 1)")
    p.add_argument("--repeats", type=int, default=1, help="runs per point; the median over all timed epochs")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-sizes", action="store_true")
    p.add_argument("--skip-batches", action="store_true")
    args = p.parse_args(argv)
    args.poolings = [v.strip() for v in args.poolings.split(",") if v.strip()]
    if not args.poolings or set(args.poolings) - set(POOLINGS):
        p.error(f"--poolings: expected a comma list of {','.join(POOLINGS)}")
    if args.epochs < 1 or args.warmup < 0 or args.repeats < 1:
        p.error("--epochs and --repeats must be >= 1, --warmup >= 0")
    return args


def throughput_table(headers: tuple[str, str, str], keys: tuple[str, str, str], rows: list[dict]) -> str:
    """A sweep's points: two columns naming the point, s/epoch, images/s, a ratio (the third key), GFLOPS, % of peak."""
    first, second, ratio = keys
    return md_table(
        [headers[0], headers[1], "s/epoch", "images/s", headers[2], "GFLOPS", "% of peak"],
        [
            [
                r[first],
                r[second],
                r["s_per_epoch"],
                round(r["images_per_s"]),
                f"{r[ratio]:.2f}",
                r["gflops"],
                f"{r['pct_peak']:.0f} %",
            ]
            for r in rows
        ],
    )


def main(argv=None) -> dict:
    args = parse_args(argv)
    info, precision = start(args)
    t0 = time.perf_counter()
    peak_all = peaks()
    peak = peak_all.get("bf16", peak_all["fp32"]) if precision == "bf16" else peak_all["fp32"]
    print(
        f"precision {args.precision} -> {precision}; peak GEMM "
        + ", ".join(f"{k} {v:.1f} GFLOPS" for k, v in peak_all.items())
        + f" [{time.perf_counter() - t0:.1f} s]"
    )
    ds = load_data(None)  # synthetic CIFAR-shaped 1,500 train / 300 test, 3 classes
    print(f"data: synthetic {len(ds.x_train)} train / {len(ds.x_test)} test, tiled for the size sweep")
    results, md = {}, []
    for pooling in args.poolings:
        per_image = flops_per_image(pooling)
        sizes = [] if args.skip_sizes else by_size(ds, pooling, args, precision, per_image, peak)
        batches, saturated = (
            ([], None) if args.skip_batches else by_batch(ds, pooling, args, precision, per_image, peak)
        )
        results[pooling] = {"sizes": sizes, "batches": batches, "saturates_at_batch": saturated}
        if sizes:
            md += [f"\nTime per epoch vs data size ({pooling}, batch 128, {precision}):\n"]
            md.append(
                throughput_table(
                    ("size", "train images", "cost vs linear"), ("size", "n_train", "cost_vs_linear"), sizes
                )
            )
        if batches:
            md += [f"\nThroughput vs batch size ({pooling}, {len(ds.x_train)} images; saturates at ~{saturated}):\n"]
            md.append(
                throughput_table(
                    ("batch", "steps/epoch", "vs best"), ("batch_size", "steps_per_epoch", "vs_best"), batches
                )
            )
    header = (
        f"CPU: **{info['cpu_model']}** (capability {info['cpu_capability']}), {info['torch_threads']} threads, "
        f"torch {info['torch']}; peak GEMM {peak:.0f} GFLOPS ({precision}); median of "
        f"{args.epochs * args.repeats} timed epochs per point after {args.warmup} warm-up."
    )
    text = "\n".join([header, *md, "", f"Reproduce: `{command_line()}`"])
    return write_results(
        "bench_scaling", {"peak_gemm_gflops": peak_all, "results": results}, text, args, info, precision
    )


if __name__ == "__main__":
    main()
