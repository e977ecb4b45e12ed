"""Environment params every run logs: library versions, CPU/GPU, git commit."""

from __future__ import annotations

import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

PACKAGES = ("torch", "mlflow", "onnx", "onnxruntime", "onnxscript", "numpy", "scikit-learn", "pandas")


def git_commit(repo: Path | None = None) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo or Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment_params(device: torch.device | None = None) -> dict[str, str]:
    """Library versions, CPU/GPU and git commit; ``device`` defaults to the one ``auto`` picks."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    params = {"env.python": platform.python_version(), "env.platform": platform.platform()}
    for pkg in PACKAGES:
        try:
            params[f"env.{pkg}"] = version(pkg)
        except PackageNotFoundError:
            params[f"env.{pkg}"] = "absent"
    params["env.cpu"] = cpu_name()
    params["env.cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    params["env.torch_threads"] = str(torch.get_num_threads())
    params["env.device_name"] = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    params["env.cuda_available"] = str(torch.cuda.is_available())
    params["env.git_commit"] = git_commit()
    return params
