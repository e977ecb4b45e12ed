"""Pick the device and the precision once, from what the hardware really does natively."""

from __future__ import annotations

import ctypes
import os
import sys
from functools import lru_cache
from pathlib import Path

import torch

# glibc hands large freed blocks back to the OS (mmap above M_MMAP_THRESHOLD, heap trimming above
# M_TRIM_THRESHOLD), so the activations of every training step page-fault afresh; keeping freed
# memory in the process avoids that (measured: bench/README.md, "Notes moved from code").
_MALLOPT = {-3: 1 << 30, -1: 1 << 30, -2: 64 << 20}  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, M_TOP_PAD (bytes)
ALLOCATOR_ENV = "PIPELINE_CPU_ALLOCATOR"  # "default" leaves glibc as it is


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {requested!r} asked for, but CUDA is not available here")
    return device


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """AMX-BF16 or AVX512-BF16 in the CPU flags. Without them bf16 is emulated, and slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def pick_precision(requested: str, device: torch.device) -> str:
    """``auto``: bf16 where it is native (CUDA with bf16, AMX/AVX512-BF16 CPUs), else fp32."""
    if requested == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if requested == "fp16" and device.type != "cuda":
        raise ValueError("precision fp16 needs CUDA; use fp32 or bf16 on the CPU")
    return requested


def autocast_dtype(precision: str) -> torch.dtype | None:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


@lru_cache(maxsize=1)
def tune_cpu_allocator() -> str:
    """Make glibc keep freed memory for reuse (once per process); returns what is in effect.

    ``retain`` (1 GiB mmap/trim thresholds, 64 MiB top pad) or ``default`` (not glibc on Linux,
    mallopt refused, or ``PIPELINE_CPU_ALLOCATOR=default``). The price: the process keeps its peak
    memory until it exits.
    """
    if os.environ.get(ALLOCATOR_ENV, "retain") == "default" or not sys.platform.startswith("linux"):
        return "default"
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl or another libc without mallopt
        return "default"
    return "retain" if all(mallopt(param, value) == 1 for param, value in _MALLOPT.items()) else "default"


def host_allocator(device: torch.device) -> str:
    """The ``cpu_allocator`` param of a training run: what host memory reuse is in effect."""
    return tune_cpu_allocator() if device.type == "cpu" else "cuda caching allocator"
