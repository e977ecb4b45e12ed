"""Installs that MLflow users expect: the hash-locked set agrees with the pins, `mlflow run` builds its own
virtualenv from python_env.yaml, and both ONNX runtimes we ship for read the opset the export writes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import version as installed_version

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import ROOT


def pins(path) -> dict[str, str]:
    """``name==version`` lines of a requirements file (``-r`` includes followed), by canonical name."""
    found = {}
    for raw in path.read_text().splitlines():
        line = raw.split(" #")[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-r "):
            found.update(pins(path.parent / line[3:].strip()))
            continue
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==", f"{path.name}: {line} is not pinned"
        found[canonicalize_name(req.name)] = spec.version
    return found


def lock_entries() -> dict[str, tuple[str, list[str]]]:
    """requirements.lock: canonical name -> (version, sha256 hashes)."""
    entries: dict[str, tuple[str, list[str]]] = {}
    for block in re.split(r"\n(?=\S)", (ROOT / "requirements.lock").read_text()):
        head = re.match(r"([A-Za-z0-9_.\-]+)==(\S+)", block)
        if head:
            hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", block)
            entries[canonicalize_name(head[1])] = (head[2], hashes)
    return entries


def test_lock_pins_every_requirement_at_its_version_with_hashes():
    lock = lock_entries()
    wanted = pins(ROOT / "requirements-dev.txt")  # includes requirements.txt
    assert {"torch", "mlflow", "onnxruntime", "pytest", "pip-tools"} <= set(wanted)
    for name, ver in wanted.items():
        assert name in lock, f"{name} is pinned but not in requirements.lock: run `make lock`"
        # torch is locked as the local CPU build (2.13.0+cpu); == 2.13.0 matches it, so compare public versions
        assert Version(lock[name][0]).public == Version(ver).public, f"{name}: lock {lock[name][0]} != pin {ver}"
    assert lock["torch"][0] == "2.13.0+cpu"
    unhashed = [name for name, (_, hashes) in lock.items() if not hashes]
    assert not unhashed, f"pip --require-hashes refuses entries without a hash: {unhashed}"


def test_python_env_yaml_builds_from_the_same_pins():
    env = yaml.safe_load((ROOT / "python_env.yaml").read_text())
    assert env["dependencies"] == ["-r requirements.txt"]
    lock = lock_entries()
    for dep in env["build_dependencies"]:  # pip/setuptools of the mlflow-run env = the ones make setup installs
        req = Requirement(dep)
        assert lock[canonicalize_name(req.name)][0] == next(iter(req.specifier)).version, dep
    project = yaml.safe_load((ROOT / "MLproject").read_text())
    assert project["python_env"] == "python_env.yaml" and "conda_env" not in project  # MLflow takes one env field
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())
    conda_python = next(d for d in conda["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert env["python"].startswith(conda_python.removeprefix("python=") + ".")


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(2400)
def test_mlflow_run_builds_a_virtualenv_from_python_env_yaml(tracking, tmp_path):
    """`mlflow run . --env-manager virtualenv`: a fresh env from python_env.yaml runs the prep step."""
    from mlflow.tracking import MlflowClient

    if shutil.which("pyenv") is None:
        pytest.skip("MLflow's virtualenv env manager gets its python from pyenv, and pyenv is not on PATH")
    env_root = tmp_path / "envs"  # a fresh env, not one cached in ~/.mlflow/envs by an earlier run
    cmd = [sys.executable, "-m", "mlflow", "run", ".", "-e", "prep", "-P", "dataset=digits"]
    cmd += ["--env-manager", "virtualenv", "--experiment-name", "install-virtualenv"]
    env = {**os.environ, "MLFLOW_ENV_ROOT": str(env_root)}
    env.pop("PYTHONPATH", None)  # the entry point must find everything in the env MLflow built
    proc = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=2300, stdin=subprocess.DEVNULL
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    client = MlflowClient()
    exp = client.get_experiment_by_name("install-virtualenv")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.project.env"] == "virtualenv"
    assert run.data.tags["step"] == "prep" and run.data.params["dataset"] == "digits"
    (built,) = env_root.glob("*/bin/python")  # MLFLOW_ENV_ROOT/mlflow-<hash of the env spec>
    probe = "import sys, torch, mlflow; print(sys.version.split()[0], torch.__version__, mlflow.__version__)"
    out = subprocess.run([built, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    python = yaml.safe_load((ROOT / "python_env.yaml").read_text())["python"]
    assert out == [python, "2.13.0+cpu", pins(ROOT / "requirements.txt")["mlflow"]]


# onnxruntime's "ONNX opset support" table, https://onnxruntime.ai/docs/reference/compatibility.html :
# release -> (newest ai.onnx opset, newest ONNX IR version) it implements. onnxruntime-web is built from the
# same release under the same version number, so one table serves both. Newer releases run every model an
# older one ran (same page, "Backwards compatibility"): a release newer than the last row gets that row.
ORT_SUPPORT = {
    (1, 14): (18, 8),
    (1, 15): (19, 8),
    (1, 16): (19, 9),
    (1, 17): (20, 9),
    (1, 18): (21, 10),
    (1, 19): (21, 10),
    (1, 20): (21, 10),
}


def ort_support(ver: str) -> tuple[int, int]:
    release = Version(ver).release[:2]
    known = [row for row in ORT_SUPPORT if row <= release]
    assert known, f"onnxruntime {ver} is older than the compatibility table here"
    return ORT_SUPPORT[max(known)]


def test_both_onnx_runtimes_read_the_exported_opset():
    from models import create_model
    from pipelines.export_onnx import OPSET, session, to_onnx

    python_ort = pins(ROOT / "requirements.txt")["onnxruntime"]
    assert installed_version("onnxruntime") == python_ort
    web_ort = json.loads((ROOT / "web" / "package.json").read_text())["dependencies"]["onnxruntime-web"]
    locked = json.loads((ROOT / "web" / "package-lock.json").read_text())["packages"]
    assert locked["node_modules/onnxruntime-web"]["version"] == web_ort  # what web/build.sh vendors

    model = create_model("fcnet", num_classes=3, in_shape=(8, 8, 1), mean=(0.5,), std=(0.25,))
    proto = to_onnx(model, (8, 8, 1))
    opsets = {o.domain: o.version for o in proto.opset_import}
    assert opsets == {"": OPSET}, f"only standard ONNX ops at opset {OPSET}, got {opsets}"
    for runtime, ver in (("onnxruntime", python_ort), ("onnxruntime-web", web_ort)):
        max_opset, max_ir = ort_support(ver)
        assert max_opset >= OPSET, f"{runtime} {ver} implements opset <= {max_opset}, export writes {OPSET}"
        assert proto.ir_version <= max_ir, f"{runtime} {ver} reads IR <= {max_ir}, export writes {proto.ir_version}"
    session(proto)  # and the Python runtime loads it
