"""Benchmark: a faithful reference-style training loop vs our ``pipelines.trainer.fit``, side by side in one process.

For each pooling (stride, max, avg) both loops train the same model from the same initial weights
(same seed) on the same data for the same epochs; after ``--warmup`` untimed epochs each one's
per-epoch seconds are printed, with the ratio, the final test accuracy of both, the measured peak
GEMM of this CPU and the achieved GFLOPS (FlopCounterMode) as % of that peak. Then:

* ``--tracking-server on``: the same ``fit`` with per-epoch MLflow logging (MetricLogger against a real
  ``mlflow server`` on 127.0.0.1) vs ``on_epoch=None``: the overhead in % of wall time;
* ``--levers``: one lever at a time, side by side (the reference loop's DataLoader / one-hot / per-step sync,
  channels_last, bf16, threads, oneDNN, eval every k, foreach / fused optimizer, torch.compile);
* CUDA, when present: the GPU path (data on the device once, AMP, 500 epochs of stride), else
  "GPU: skipped: no CUDA".

A Markdown table (for the README's Performance section) is printed at the end and written with the
raw numbers to ``bench/results/`` (JSON + md). Run it ALONE on the machine: another torch process
on the same cores makes every timing 3-6x off.

    PYTHONPATH=. .venv/bin/python bench/bench_train.py [--data-dir /work/shared/data] [--repeats 3] [--levers]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from common import (  # bench/common.py, first: it puts the repo root on sys.path
    command_line,
    epoch_flops,
    fit_in_process,
    flops_per_image,
    fmt_list,
    isolated,
    load_data,
    make_model,
    md_table,
    median,
    peaks,
    recipe,
    reference_model,
    run_fit,
    start,
    tensors,
    test_accuracy,
    write_results,
)
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from pipelines import trainer
from pipelines.device import cpu_has_native_bf16, pick_precision

POOLINGS = ("stride", "max", "avg")
DEFAULT_RUN_EPOCHS = 500  # the recipe's default: torch.compile must pay for itself within this


# ---------------------------------------------------------------- the reference notebook's loop


def _reference_stats(tmp: list) -> tuple:
    """The reference notebook's per-epoch statistics: mean and 25/75 percentiles of the per-batch (loss, accuracy)."""
    rows = np.array(tmp) if not torch.is_tensor(tmp[0]) else torch.stack(tmp).cpu().numpy()
    return np.mean(rows, axis=0), np.percentile(rows, 25, axis=0), np.percentile(rows, 75, axis=0)


def reference_loop(
    model: nn.Module,
    ds,
    epochs: int,
    seed: int,
    device: torch.device | str = "cpu",
    batch_size: int = 128,
    lr: float = 5e-3,
    momentum: float = 0.9,
    *,
    dataloader: bool = True,
    one_hot: bool = True,
    item_per_step: bool = True,
) -> dict:
    """The lab-2 reference notebook's training loop, as the notebook runs it (minus the plots every 20 epochs).

    TensorDataset + DataLoader(shuffle=True) for train and test, one-hot float targets with
    CrossEntropyLoss, ``optim.SGD(lr=5e-3, momentum=0.9)`` with torch's defaults, per step
    ``loss.item()`` + ``accuracy.item()`` and a tqdm update, a full eval pass over the test
    DataLoader every epoch with the same per-batch stats. The model (``reference_model``: the notebook's
    Normalize and Flatten) is used as built: no channels_last, fp32.

    The keyword flags turn one notebook habit off at a time (the lever ladder of ``--levers``); with
    their defaults this is the notebook: ``dataloader=False`` slices resident tensors by a randperm,
    ``one_hot=False`` uses class-index targets, ``item_per_step=False`` keeps per-batch stats on the
    device and syncs once per epoch.
    """
    device = torch.device(device)
    k = ds.num_classes
    torch.manual_seed(seed)  # the DataLoader's shuffles draw from the global generator

    def targets(y):
        y = torch.Tensor(y).to(torch.int64)
        return F.one_hot(y, num_classes=k) / 1.0 if one_hot else y

    parts = {"train": (ds.x_train, ds.y_train), "test": (ds.x_test, ds.y_test)}
    if dataloader:
        loaders = {}
        for part, (X, y) in parts.items():
            dataset = TensorDataset(torch.Tensor(X), targets(y))  # creating the dataset object
            loaders[part] = DataLoader(dataset, batch_size=batch_size, shuffle=True)

        def batches(part):
            return loaders[part]
    else:
        resident = {part: (torch.Tensor(X).to(device), targets(y).to(device)) for part, (X, y) in parts.items()}

        def batches(part):
            x, y = resident[part]
            perm = torch.randperm(len(x)).to(device)
            for i in range(0, len(x), batch_size):
                idx = perm[i : i + batch_size]
                yield x[idx], y[idx]

    criterion = nn.CrossEntropyLoss()
    optimizer = optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    steps_per_epoch = -(-len(ds.x_train) // batch_size)
    devnull = open(os.devnull, "w")  # noqa: SIM115  (the reference notebook's tqdm bar, drawn where nobody looks)
    pbar = tqdm(total=epochs * steps_per_epoch, file=devnull)
    losses, losses_val, epoch_seconds = [], [], []
    for _epoch in range(epochs):
        t0 = time.perf_counter()
        tmp = []
        model.train()
        for _i, batch in enumerate(batches("train"), 0):
            inputs, labels = batch
            inputs, labels = inputs.to(device), labels.to(device)
            optimizer.zero_grad()
            outputs = model(inputs)
            loss = criterion(outputs, labels)
            loss.backward()
            optimizer.step()
            target = labels.detach().argmax(dim=-1) if one_hot else labels
            if item_per_step:  # the notebook: to the host and .item() of both, every step
                accuracy = (target == outputs.detach().argmax(dim=-1)).to(torch.float32).mean().cpu() * 100
                tmp.append((loss.item(), accuracy.item()))
            else:  # kept on the device, one sync per epoch in _reference_stats
                accuracy = (target == outputs.detach().argmax(dim=-1)).to(torch.float32).mean() * 100
                tmp.append(torch.stack((loss.detach(), accuracy)))
            pbar.update(1)
        losses.append(_reference_stats(tmp))
        tmp = []
        model.eval()
        with torch.no_grad():
            for _i, data in enumerate(batches("test"), 0):
                inputs, labels = data
                inputs, labels = inputs.to(device), labels.to(device)
                outputs = model(inputs)
                loss = criterion(outputs, labels)
                target = labels.argmax(dim=-1) if one_hot else labels
                if item_per_step:
                    accuracy = (target == outputs.argmax(dim=-1)).to(torch.float32).mean().cpu() * 100
                    tmp.append((loss.item(), accuracy.item()))
                else:
                    accuracy = (target == outputs.argmax(dim=-1)).to(torch.float32).mean() * 100
                    tmp.append(torch.stack((loss, accuracy)))
        losses_val.append(_reference_stats(tmp))
        if device.type == "cuda":
            torch.cuda.synchronize()
        epoch_seconds.append(time.perf_counter() - t0)
    pbar.close()
    devnull.close()
    return {"epoch_seconds": epoch_seconds, "reference_test_acc": float(losses_val[-1][0][1]) / 100}


def reference_in_process(ds, pooling: str, epochs: int, seed: int, kw: dict) -> dict:
    """The reference loop on a fresh model from ``seed`` plus its final test accuracy (for ``isolated``)."""
    kw = dict(kw)
    if kw.pop("our_layers", False):  # the lever ladder's last rung: the reference loop on our registry's model
        model = make_model(pooling, seed, ds.num_classes, channels_last=False)
    else:
        model = reference_model(pooling, seed, ds.num_classes)
    res = reference_loop(model, ds, epochs, seed, **kw)
    _, _, xt, yt = tensors(ds)
    res["acc"] = test_accuracy(model, xt, yt)
    return res


# ---------------------------------------------------------------- sections


def compare(ds, data, args, precision: str, per_image: dict, peak: dict) -> dict:
    """Reference loop vs ``fit`` per pooling; repeats interleaved (order alternates) so drift hits both.

    Each loop runs in a fresh process (``isolated``), so nothing process-wide that ours sets helps the notebook's.
    """
    total = args.warmup + args.epochs
    out = {}
    for pooling in args.poolings:
        print(f"\n== {pooling}: {total} epochs each ({args.warmup} warm-up, not timed), {args.repeats} repeat(s)")
        reference_med, ours_med, rows = [], [], []
        for r in range(args.repeats):
            res = {}
            for who in ("reference", "ours") if r % 2 == 0 else ("ours", "reference"):
                if who == "reference":
                    res[who] = isolated(reference_in_process, ds, pooling, total, args.seed, {})
                else:
                    res[who] = isolated(fit_in_process, ds, pooling, total, args.seed, {"precision": precision})
            st, ot = res["reference"]["epoch_seconds"][args.warmup :], res["ours"]["epoch_seconds"][args.warmup :]
            reference_med.append(median(st))
            ours_med.append(median(ot))
            print(
                f"  repeat {r + 1}: reference s/epoch {fmt_list(st)}  ours s/epoch {fmt_list(ot)}  "
                f"ratio {reference_med[-1] / ours_med[-1]:.2f}x  | "
                f"acc reference {res['reference']['acc']:.3f} ours {res['ours']['acc']:.3f}",
                flush=True,
            )
            rows.append(res)
        flops = epoch_flops(per_image[pooling], len(ds.x_train), len(ds.x_test))
        peak_ref = peak.get("bf16" if precision == "bf16" else "fp32", peak["fp32"])
        s_med, o_med = median(reference_med), median(ours_med)
        out[pooling] = {
            "reference_s_per_epoch": s_med,
            "ours_s_per_epoch": o_med,
            "ratio": s_med / o_med,
            "reference_acc": rows[-1]["reference"]["acc"],
            "ours_acc": rows[-1]["ours"]["acc"],
            "gflop_per_epoch": flops / 1e9,
            "ours_gflops": flops / o_med / 1e9,
            "reference_gflops": flops / s_med / 1e9,
            "ours_pct_peak": 100 * flops / o_med / 1e9 / peak_ref,
            "reference_pct_peak_fp32": 100 * flops / s_med / 1e9 / peak["fp32"],
            "peak_ref": "bf16" if precision == "bf16" and "bf16" in peak else "fp32",
            "repeats": [
                {
                    who: {"epoch_seconds": r_[who]["epoch_seconds"], "acc": r_[who]["acc"]}
                    for who in ("reference", "ours")
                }
                for r_ in rows
            ],
        }
        o = out[pooling]
        print(
            f"  median: reference {s_med:.3f} s/epoch, ours {o_med:.3f} s/epoch, ratio {o['ratio']:.2f}x | "
            f"{o['gflop_per_epoch']:.1f} GFLOP/epoch -> ours {o['ours_gflops']:.1f} GFLOPS = "
            f"{o['ours_pct_peak']:.0f} % of {o['peak_ref']} peak (reference {o['reference_gflops']:.1f} GFLOPS)",
            flush=True,
        )
        # The targets: >= 1.5x on AVX2-only CPUs (fp32), >= 3x where bf16 is native (auto); >= 50 % of peak.
        o["target_ratio"] = 3.0 if precision == "bf16" and cpu_has_native_bf16() else 1.5
        print(
            f"  targets: speed-up >= {o['target_ratio']}x {'met' if o['ratio'] >= o['target_ratio'] else 'MISSED'}, "
            f">= 50 % of peak {'met' if o['ours_pct_peak'] >= 50 else 'MISSED'}"
        )
    return out


def levers(ds, data, args, precision: str) -> dict:
    """One lever at a time, side by side, on ``--lever-poolings``; median s/epoch over repeats."""
    total = args.warmup + args.epochs
    other_prec = "fp32" if precision == "bf16" else "bf16"
    base_name = f"ours (default: channels_last, {precision}, foreach, {torch.get_num_threads()} threads)"
    variants: list[tuple[str, str, dict]] = [
        ("reference loop (DataLoader, one-hot, .item() per step)", "reference", {}),
        ("  + resident tensors, randperm slicing", "reference", {"dataloader": False}),
        ("  + class-index targets", "reference", {"dataloader": False, "one_hot": False}),
        ("  + one host sync per epoch", "reference", {"dataloader": False, "one_hot": False, "item_per_step": False}),
        (
            "  + our layers (one-op Normalize, layout-keeping Flatten, NHWC-order head, max pool before ReLU)",
            "reference",
            {"dataloader": False, "one_hot": False, "item_per_step": False, "our_layers": True},
        ),
        ("ours, with the reference notebook's layers", "fit", {"reference_layers": True}),
        ("ours, channels_last off", "fit", {"channels_last": False}),
        (base_name, "fit", {}),
    ]
    skipped = []
    if other_prec == "fp32" or cpu_has_native_bf16() or args.try_emulated_bf16:
        variants.append((f"ours, {other_prec}", "fit", {"precision": other_prec}))
    else:
        skipped.append(("ours, bf16", f"skipped: bf16 is emulated on {torch.backends.cpu.get_cpu_capability()}"))
    n = torch.get_num_threads()
    if n > 1:
        variants.append(("ours, 1 thread", "fit", {"threads": 1}))
    if (os.cpu_count() or 1) > n:
        variants.append((f"ours, {os.cpu_count()} threads", "fit", {"threads": os.cpu_count()}))
    variants += [
        ("ours, oneDNN (mkldnn) off", "fit", {"mkldnn": False}),
        ("ours, glibc allocator as is (no mallopt)", "fit", {"allocator": "default"}),
        (f"ours, eval every {args.eval_every_k} (amortised)", "eval", {}),
        ("ours, optimizer for-loop (foreach off)", "fit", {"opt_impl": "for-loop"}),
        ("ours, fused optimizer step", "fit", {"opt_impl": "fused"}),
    ]
    if not args.no_compile:
        variants.append(("ours, torch.compile", "fit", {"compile_mode": "default"}))
    out = {}
    for pooling in args.lever_poolings:
        print(f"\n== levers, {pooling}: {total} epochs each ({args.warmup} warm-up), {args.repeats} repeat(s)")
        times = {name: [] for name, _, _ in variants}
        accs, notes, compile_s = {}, {}, []
        for r in range(args.repeats):
            for name, kind, kw in variants:
                try:
                    if kind == "reference":
                        res = isolated(reference_in_process, ds, pooling, total, args.seed, kw)
                        t = median(res["epoch_seconds"][args.warmup :])
                    elif kind == "eval":
                        # Train-only epoch time (no eval until the final epoch, which is dropped) plus the
                        # eval cost measured by the default row, divided by k.
                        kw = {"precision": precision, "eval_every": 10**9}
                        res = isolated(fit_in_process, ds, pooling, total + 1, args.seed, kw)
                        t = median(res["epoch_seconds"][args.warmup : -1])
                    else:
                        kw = {"precision": precision, **kw}
                        res = isolated(fit_in_process, ds, pooling, total, args.seed, kw)
                        t = median(res["epoch_seconds"][args.warmup :])
                        if kw.get("compile_mode"):
                            compile_s.append(res["epoch_seconds"][0] - t)
                except Exception as e:  # a lever that cannot run here is reported, not fatal
                    notes[name] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
                    continue
                times[name].append(t)
                accs[name] = res["acc"]
                print(f"  r{r + 1} {name.strip():60s} {t:7.3f} s/epoch  acc {res['acc']:.3f}", flush=True)
        med = {name: median(ts) for name, ts in times.items()}
        eval_name = next(name for name, kind, _ in variants if kind == "eval")
        if eval_name in med:  # amortise: train-only + (default - train-only) / k
            train_only = med[eval_name]
            med[eval_name] = train_only + (med[base_name] - train_only) / args.eval_every_k
            notes[eval_name] = (
                f"eval pass costs {med[base_name] - train_only:.3f} s; final epoch always evaluated "
                "(acc after one more epoch)"
            )
        if compile_s:
            c, saved = median(compile_s), med[base_name] - med.get("ours, torch.compile", float("nan"))
            pays = saved > 0 and saved * DEFAULT_RUN_EPOCHS > c
            notes["ours, torch.compile"] = (
                f"compile {c:.1f} s, saves {saved:.3f} s/epoch: "
                + (f"pays back after {c / saved:.0f} epochs" if saved > 0 else "never pays back")
                + f" ({'pays' if pays else 'does not pay'} within a {DEFAULT_RUN_EPOCHS}-epoch run)"
            )
        rows = []
        for name, _, _ in variants:
            rows.append(
                {
                    "lever": name.strip(),
                    "s_per_epoch": med[name],
                    "vs_reference": med[variants[0][0]] / med[name],
                    "vs_ours_default": med[base_name] / med[name],
                    "acc": accs.get(name, float("nan")),
                    "note": notes.get(name, ""),
                }
            )
        rows += [
            {
                "lever": n_,
                "s_per_epoch": float("nan"),
                "vs_reference": float("nan"),
                "vs_ours_default": float("nan"),
                "acc": float("nan"),
                "note": note,
            }
            for n_, note in skipped
        ]
        out[pooling] = {"rows": rows, "raw": times}
        for row in rows:
            print(
                f"  {row['lever']:60s} {row['s_per_epoch']:7.3f} s/epoch  x{row['vs_reference']:.2f} vs reference  "
                f"x{row['vs_ours_default']:.2f} vs ours default  {row['note']}"
            )
    return out


def process_tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its children."""
    import psutil

    total = 0.0
    root = psutil.Process(pid)
    for proc in (root, *root.children(recursive=True)):
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def tracking_overhead(data, args, precision: str) -> dict:
    """``fit`` with MetricLogger against a real local ``mlflow server`` vs ``on_epoch=None``."""
    import mlflow
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    from tracking.metrics import MetricLogger
    from tracking.runs import HTTP_DEFAULTS
    from tracking.server import start_server, stop_server

    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    # As tracking.configure() does for every entry point: MLflow's client telemetry thread off.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    pooling, epochs = args.tracking_pooling, args.tracking_epochs
    print(f"\n== tracking overhead: {pooling}, {epochs} epochs, logging on vs off, {args.repeats} repeat(s)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        proc, url = start_server(f"sqlite:///{tmp}/mlflow.db", tmp / "artifacts", log_path=tmp / "server.log")
        print(f"  mlflow server on {url} (ready in {time.perf_counter() - t0:.1f} s)")
        try:
            mlflow.set_tracking_uri(url)
            client = MlflowClient(url)
            exp = client.create_experiment("bench-tracking")
            off, on, in_calls, server_cpu = [], [], [], []
            for r in range(args.repeats):
                for mode in ("off", "on") if r % 2 == 0 else ("on", "off"):
                    if mode == "off":
                        off.append(run_fit(data, pooling, epochs, args.seed, precision)["wall_s"])
                        continue
                    spent = [0.0]
                    cpu0 = process_tree_cpu_s(proc.pid)
                    t0 = time.perf_counter()
                    run_id = client.create_run(exp, run_name=f"bench-{r}").info.run_id
                    client.log_batch(run_id, params=[Param(f"p{i}", str(i)) for i in range(40)])  # ~ train's params
                    logger = MetricLogger(run_id, local_path=tmp / f"metrics-{r}.jsonl")
                    spent[0] += time.perf_counter() - t0

                    def on_epoch(epoch, metrics, logger=logger, spent=spent):
                        t = time.perf_counter()
                        logger.log(metrics, epoch)
                        spent[0] += time.perf_counter() - t

                    run_fit(data, pooling, epochs, args.seed, precision, on_epoch=on_epoch)
                    t = time.perf_counter()
                    logger.flush()
                    client.set_terminated(run_id)
                    t_end = time.perf_counter()
                    on.append(t_end - t0)
                    server_cpu.append(process_tree_cpu_s(proc.pid) - cpu0)  # shares our cores on 127.0.0.1
                    in_calls.append(spent[0] + t_end - t)  # run start + per-epoch logging + flush + end
                print(
                    f"  repeat {r + 1}: off {off[-1]:.2f} s, on {on[-1]:.2f} s "
                    f"(logging calls {in_calls[-1]:.2f} s, server CPU {server_cpu[-1]:.2f} s)",
                    flush=True,
                )
            n_logged = len(client.get_metric_history(run_id, "train_loss"))
        finally:
            stop_server(proc)
    m_off, m_on = median(off), median(on)
    res = {
        "pooling": pooling,
        "epochs": epochs,
        "off_s": m_off,
        "on_s": m_on,
        "overhead_pct": 100 * (m_on - m_off) / m_off,
        "in_logging_calls_pct": 100 * median(in_calls) / m_off,
        "server_cpu_pct": 100 * median(server_cpu) / m_off,
        "epochs_logged_on_server": n_logged,
        "raw": {"off": off, "on": on, "in_calls": in_calls, "server_cpu": server_cpu},
    }
    print(
        f"  median: off {m_off:.2f} s, on {m_on:.2f} s: overhead {res['overhead_pct']:+.1f} % "
        f"(A/B wall; noise included), {res['in_logging_calls_pct']:.2f} % spent inside the logging calls "
        f"+ {res['server_cpu_pct']:.2f} % server CPU "
        f"| {n_logged}/{epochs} epochs on the server | target <= 3 %"
    )
    return res


def gpu_path(ds, args) -> dict:
    if not torch.cuda.is_available():
        print("\nGPU: skipped: no CUDA")
        return {"skipped": "no CUDA"}
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    precision = pick_precision("auto", dev)
    data = tensors(ds, dev)  # on the device once; fit moves only the permutation (non_blocking)
    name = torch.cuda.get_device_name(dev)
    print(f"\n== GPU: {name}, precision auto -> {precision}, {args.gpu_epochs} epochs")
    out: dict = {"gpu": name, "precision": precision, "epochs": args.gpu_epochs, "runs": {}}
    for pooling in args.poolings:
        run_fit(data, pooling, 3, args.seed, precision)  # warm-up: CUDA context, cuDNN autotuning
        variants = [("eager", None)] + ([("compile", args.gpu_compile)] if args.gpu_compile else [])
        for label, mode in variants:
            try:
                res = run_fit(data, pooling, args.gpu_epochs, args.seed, precision, compile_mode=mode)
            except Exception as e:
                out["runs"][f"{pooling}/{label}"] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
                print(f"  {pooling} {label}: failed: {out['runs'][f'{pooling}/{label}']['error']}")
                continue
            es = res["epoch_seconds"]
            out["runs"][f"{pooling}/{label}"] = r = {
                "wall_s": res["wall_s"],
                "median_epoch_s": median(es[1:]),
                "first_epoch_s": es[0],
                "acc": res["acc"],
            }
            goal = " (goal < 10 s: " + ("met)" if r["wall_s"] < 10 else "MISSED)") if pooling == "stride" else ""
            print(
                f"  {pooling:6s} {label:8s} {args.gpu_epochs} epochs in {r['wall_s']:.2f} s{goal}, "
                f"{r['median_epoch_s'] * 1e3:.1f} ms/epoch, acc {r['acc']:.3f}",
                flush=True,
            )
    # The reference loop on the same GPU (DataLoader, per-step .item()), timed on a few epochs and extrapolated.
    model = reference_model("stride", args.seed, ds.num_classes, dev)
    s = reference_loop(model, ds, args.gpu_reference_epochs + 1, args.seed, device=dev)
    per = median(s["epoch_seconds"][1:])
    out["reference_stride_s_per_epoch"] = per
    print(
        f"  reference loop, stride: {per * 1e3:.1f} ms/epoch -> {per * args.gpu_epochs:.1f} s "
        f"for {args.gpu_epochs} epochs "
        f"(extrapolated from {args.gpu_reference_epochs}; the notebook's own T4 figure: 38 s)"
    )
    return out


# ---------------------------------------------------------------- report


# ---------------------------------------------------------------- a study's seeds: one by one vs together


def study_trials(ds, mode: str, args, precision: str) -> dict:
    """The pooling study's trials in this process: ``mode`` "sequential" (``fit`` per trial) or "batched"
    (``fit_seeds`` per pooling), each pooling after ``--warmup`` untimed epochs of the same; wall seconds and the
    final weights (on the CPU) per pooling."""
    from pipelines.batched import fit_seeds

    seeds, device = args.study_seeds, torch.device(args.device)
    x, y, xt, yt = tensors(ds, device)
    data = {"x_train": x, "y_train": y, "x_test": xt, "y_test": yt}

    def train(pooling: str, n_epochs: int) -> list[nn.Module]:
        models = [make_model(pooling, seed, int(y.max()) + 1, device) for seed in seeds]
        if mode == "batched":
            fit_seeds(models, **data, recipe=recipe(n_epochs), seeds=seeds, precision=precision)
        else:
            for model, seed in zip(models, seeds):
                trainer.fit(model, **data, recipe=recipe(n_epochs), seed=seed, precision=precision, progress=False)
        return models

    out: dict = {"wall_s": {}, "weights": {}}
    for pooling in args.poolings:
        if args.warmup:
            train(pooling, args.warmup)
        t0 = time.perf_counter()
        models = train(pooling, args.epochs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        out["wall_s"][pooling] = time.perf_counter() - t0
        out["weights"][pooling] = [{k: v.cpu() for k, v in m.state_dict().items()} for m in models]
    return out


def study_bench(ds, args, precision: str) -> dict:
    """Each pooling's seeds one by one vs together, every run in a fresh process, the order alternating by repeat;
    median wall seconds, the speed-up, and how far the final weights of the two ways are apart."""
    walls: dict[str, dict[str, list[float]]] = {p: {"sequential": [], "batched": []} for p in args.poolings}
    apart = dict.fromkeys(args.poolings, 0.0)
    modes = ("sequential", "batched")
    print(f"\n== study: {len(args.poolings)} poolings x {len(args.study_seeds)} seeds, {args.epochs} epochs each")
    for r in range(args.repeats):
        res = {}
        for mode in modes if r % 2 == 0 else modes[::-1]:
            res[mode] = isolated(study_trials, ds, mode, args, precision)
        for p in args.poolings:
            for mode in modes:
                walls[p][mode].append(res[mode]["wall_s"][p])
            pairs = zip(res["sequential"]["weights"][p], res["batched"]["weights"][p])
            apart[p] = max(apart[p], *((a[k] - b[k]).abs().max().item() for a, b in pairs for k in a))
        print(
            f"  repeat {r + 1}: "
            + ", ".join(
                f"{p} {res['sequential']['wall_s'][p]:.2f} / {res['batched']['wall_s'][p]:.2f} s" for p in walls
            )
            + " (one by one / together)",
            flush=True,
        )
    rows = {p: {m: median(w[m]) for m in modes} | {"max_abs_weight_diff": apart[p]} for p, w in walls.items()}
    for row in rows.values():
        row["speedup"] = row["sequential"] / row["batched"]
    return {"study": rows, "seeds": args.study_seeds, "repeats": {p: walls[p] for p in walls}}


def study_markdown(results: dict, args, info: dict, precision: str) -> str:
    rows = results["study"]
    seq, bat = sum(r["sequential"] for r in rows.values()), sum(r["batched"] for r in rows.values())
    k = len(results["seeds"])
    table = md_table(
        [
            "pooling",
            f"one by one ({k} x fit), s",
            f"together (fit_seeds, {k} seeds), s",
            "speed-up",
            "max abs Δ weight",
        ],
        [
            [p, r["sequential"], r["batched"], f"{r['speedup']:.2f}x", f"{r['max_abs_weight_diff']:.1e}"]
            for p, r in rows.items()
        ]
        + [["all", seq, bat, f"{seq / bat:.2f}x", ""]],
    )
    gpu = "" if info["gpu"] is None else f", GPU {info['gpu']}"
    header = (
        f"Pooling study, {len(rows)} poolings x {k} seeds, {args.epochs} epochs (+{args.warmup} warm-up) on "
        f"{args.n_train} train / {args.n_test} test images, {precision} on {args.device}; "
        f"CPU: **{info['cpu_model']}**, {info['torch_threads']} threads{gpu}; "
        f"median of {args.repeats} repeat(s), each way in a fresh process."
    )
    return "\n".join([header, "", table, "", f"Reproduce: `{command_line()}`"])


def markdown(info, peak, args, precision, cmp, lev, trk, gpu) -> str:
    peak_txt = ", ".join(f"{k} {v:.0f} GFLOPS" for k, v in peak.items())
    lines = [
        f"CPU: **{info['cpu_model']}** (capability {info['cpu_capability']}, native bf16: "
        f"{'yes' if info['cpu_native_bf16'] else 'no'}), {info['torch_threads']} torch threads, torch {info['torch']}; "
        f"measured peak GEMM ({args.gemm_n}³): {peak_txt}.",
        f"Data: {'real CIFAR-100 subset' if args.data_dir else 'synthetic CIFAR-shaped'} "
        f"({args.n_train} train / {args.n_test} test, 3 classes); "
        f"precision {args.precision} -> {precision}; {args.epochs} timed epochs after {args.warmup} warm-up, "
        f"median of {args.repeats} repeat(s).",
        "",
    ]
    if cmp:
        rows = [
            [
                p,
                c["reference_s_per_epoch"],
                c["ours_s_per_epoch"],
                f"{c['ratio']:.2f}x",
                f"{c['reference_acc']:.3f}",
                f"{c['ours_acc']:.3f}",
                c["gflop_per_epoch"],
                c["ours_gflops"],
                f"{c['ours_pct_peak']:.0f} % ({c['peak_ref']})",
                f"{c['reference_pct_peak_fp32']:.0f} %",
            ]
            for p, c in cmp.items()
        ]
        lines.append(
            md_table(
                [
                    "pooling",
                    "reference s/epoch",
                    "ours s/epoch",
                    "speed-up",
                    "reference acc",
                    "ours acc",
                    "GFLOP/epoch",
                    "ours GFLOPS",
                    "ours % of peak",
                    "reference % of fp32 peak",
                ],
                rows,
            )
        )
    if trk:
        lines += [
            "",
            f"Tracking overhead ({trk['pooling']}, {trk['epochs']} epochs, MLflow server on 127.0.0.1, "
            f"per-epoch metrics batched): {trk['overhead_pct']:+.1f} % wall (A/B), "
            f"{trk['in_logging_calls_pct']:.2f} % inside the logging calls, "
            f"{trk['server_cpu_pct']:.2f} % server CPU (of the untracked wall time).",
        ]
    if gpu:
        if "skipped" in gpu:
            lines += ["", "GPU: skipped: no CUDA."]
        else:
            lines += ["", f"GPU ({gpu['gpu']}, {gpu['precision']}, {gpu['epochs']} epochs):"]
            for k, r in gpu["runs"].items():
                lines.append(f"- {k}: " + (r["error"] if "error" in r else f"{r['wall_s']:.2f} s, acc {r['acc']:.3f}"))
            lines.append(
                f"- reference loop, stride: {gpu['reference_stride_s_per_epoch'] * gpu['epochs']:.1f} s (extrapolated)"
            )
    for pooling, lv in (lev or {}).items():
        lines += ["", f"Levers ({pooling}, one at a time):", ""]
        lines.append(
            md_table(
                ["lever", "s/epoch", "vs reference", "vs ours default", "acc", "note"],
                [
                    [r["lever"], r["s_per_epoch"], r["vs_reference"], r["vs_ours_default"], r["acc"], r["note"]]
                    for r in lv["rows"]
                ],
            )
        )
    lines += ["", f"Reproduce: `{command_line()}`"]
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-dir", help="folder with cifar-100-python/ (e.g. /work/shared/data); default: synthetic")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per loop (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up epochs before them (default 1)")
    p.add_argument("--poolings", default="stride,max,avg", help="comma list of stride,max,avg")
    p.add_argument("--repeats", type=int, default=3, help="repeats of every measurement; medians reported")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"), help="for our trainer")
    p.add_argument("--threads", type=int, help="torch.set_num_threads for the whole benchmark (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tracking-server", default="on", choices=("on", "off"), help="measure the tracking overhead")
    p.add_argument("--tracking-epochs", type=int, default=100, help="epochs per tracking on/off run (default 100)")
    p.add_argument("--tracking-pooling", default="stride", choices=POOLINGS, help="cheapest model = worst case")
    p.add_argument(
        "--study",
        action="store_true",
        help="only the pooling study's trials: each pooling's seeds one by one (fit) vs together (fit_seeds)",
    )
    p.add_argument("--study-seeds", default="0,1,2", help="seeds per pooling for --study (default 0,1,2)")
    p.add_argument("--device", default="cpu", help="--study's device, e.g. cuda (default cpu)")
    p.add_argument("--levers", action="store_true", help="also run the lever table (one lever at a time)")
    p.add_argument("--lever-poolings", default="stride,max", help="poolings for the lever table")
    p.add_argument("--eval-every-k", type=int, default=10, help="k of the eval-every-k lever")
    p.add_argument("--no-compile", action="store_true", help="leave torch.compile out of the lever table")
    p.add_argument("--try-emulated-bf16", action="store_true", help="measure bf16 in the levers even if emulated")
    p.add_argument("--skip-compare", action="store_true", help="skip the reference-vs-ours section (e.g. levers only)")
    p.add_argument("--gemm-n", type=int, default=2048, help="size of the peak-GEMM matmul")
    p.add_argument("--gpu-epochs", type=int, default=500, help="epochs of the CUDA runs")
    p.add_argument(
        "--gpu-reference-epochs", type=int, default=20, help="epochs of the reference loop on CUDA (extrapolated)"
    )
    p.add_argument(
        "--gpu-compile",
        default="reduce-overhead",
        help="torch.compile mode also timed on CUDA (reduce-overhead = CUDA graphs); 'none' to skip",
    )
    args = p.parse_args(argv)
    for key in ("poolings", "lever_poolings"):
        values = [v.strip() for v in getattr(args, key).split(",") if v.strip()]
        bad = [v for v in values if v not in POOLINGS]
        if bad or not values:
            p.error(f"--{key.replace('_', '-')}: expected a comma list of {','.join(POOLINGS)}, got {bad or values}")
        setattr(args, key, values)
    args.study_seeds = [int(v) for v in args.study_seeds.split(",") if v.strip()]
    if args.epochs < 1 or args.warmup < 0 or args.repeats < 1 or args.tracking_epochs < 1:
        p.error("--epochs, --repeats and --tracking-epochs must be >= 1, --warmup >= 0")
    args.gpu_compile = None if args.gpu_compile in ("none", "") else args.gpu_compile
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    info, precision = start(args)
    why = "native" if cpu_has_native_bf16() else "no native bf16, never picked by auto"
    print(f"precision {args.precision} -> {precision} ({why})")
    if precision == "bf16" and not cpu_has_native_bf16():
        print("WARNING: bf16 asked for on a CPU without native bf16: emulated, expect it ~9x slower")

    ds = load_data(args.data_dir)
    args.n_train, args.n_test = len(ds.x_train), len(ds.x_test)
    print(f"data: {ds.source} ({args.n_train} train / {args.n_test} test, classes {ds.class_ids})")
    if args.study:
        precision = pick_precision(args.precision, torch.device(args.device))
        results = study_bench(ds, args, precision)
        return write_results(
            "bench_study", results, study_markdown(results, args, info, precision), args, info, precision
        )
    data = tensors(ds)

    t0 = time.perf_counter()
    peak = peaks(args.gemm_n)
    print(
        "peak GEMM ("
        + f"{args.gemm_n}^3, fastest of 15): "
        + ", ".join(f"{k} {v:.1f} GFLOPS" for k, v in peak.items())
        + f" [{time.perf_counter() - t0:.1f} s]"
    )
    per_image = {p: flops_per_image(p) for p in POOLINGS}
    for p in POOLINGS:
        gf = epoch_flops(per_image[p], args.n_train, args.n_test) / 1e9
        print(f"FLOPs ({p}): {gf:.1f} GFLOP per epoch (train fwd+bwd + eval fwd, FlopCounterMode)")

    cmp = {} if args.skip_compare else compare(ds, data, args, precision, per_image, peak)
    trk = None
    if args.tracking_server == "on":
        if importlib.util.find_spec("mlflow") is None:  # e.g. a GPU image without mlflow
            print("\ntracking overhead: skipped: mlflow is not installed here")
        else:
            trk = tracking_overhead(data, args, precision)
    lev = levers(ds, data, args, precision) if args.levers else None
    gpu = gpu_path(ds, args)

    md = markdown(info, peak, args, precision, cmp, lev, trk, gpu)
    results = {
        "peak_gemm_gflops": peak,
        "flops_per_image": per_image,
        "compare": cmp,
        "tracking": trk,
        "levers": lev,
        "gpu": gpu,
    }
    return write_results("bench_train", results, md, args, info, precision)


if __name__ == "__main__":
    main()
