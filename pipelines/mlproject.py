"""The MLproject file, generated from the parameter table (``python -m pipelines mlproject``).

``tests/test_project.py`` checks that the committed file matches.
"""

from __future__ import annotations

import json
import re

import yaml

from pipelines.params import Param, params_of


def mlproject_block(entry_point: str) -> dict:
    """The MLproject ``parameters`` and ``command`` of an entry point, from its rows."""
    rows = [p for p in params_of(entry_point) if p.mlproject]
    parameters = {}
    for p in rows:
        spec = {"type": p.kind.mlproject_type}
        if p.default is not None:
            spec["default"] = _yaml_default(p)
        parameters[p.name] = spec
    words = ["python -m pipelines", entry_point]
    words += [f"{{{p.name}}}" for p in rows if p.argument]
    words += [f"{p.flag} {{{p.name}}}" for p in rows if not p.argument]
    return {"parameters": parameters, "command": " ".join(words)}


def _yaml_default(p: Param):
    if p.kind.mlproject_type == "int":
        return int(p.default)
    if p.kind.mlproject_type == "float":
        return float(p.default)
    return p.default


# The MLproject's entry points, in the file's order, and what each does (its comment there).
ENTRY_POINTS = {
    "main": "prep -> train -> evaluate -> export_onnx as child runs of one parent run.",
    "prep": "Load and verify the data set; log its fingerprint, counts and arrays.",
    "train": "Train a model; per-epoch metrics, checkpoints, state_dict.",
    "evaluate": "Classification reports, confusion matrix, learning curves, timings.",
    "export_onnx": "ONNX export, onnxruntime parity, registry; the eval run's test_accuracy decides champion.",
    "demo": "The browser demo: a CNN and an FC model side by side.",
    "segment": "U-Net on generated digit masks (or data_dir = images/ + masks/ PNGs), one run.",
    "study": "A reference notebook's comparison: one parent run, a child per (configuration, seed).",
    "compare": "The comparison table and figures of runs that exist.",
    "sweep": "lr / batch size / weight decay search: Optuna TPE + ASHA, trials as child runs.",
    "landscape": "Loss landscape of a trained model; each analysis is a run of its own, tagged source_run_id.",
    "gradients": "Training with per-layer gradient statistics (gradient flow).",
    "features": "First-layer filters, activations and feature maps of a trained CNN.",
    "invariance": "An FC model vs a CNN under 0..8 px shifts.",
    "reproduce": "Every claim of the reference notebooks beside our value, in one report.",
}

MLPROJECT_HEADER = """\
# Generated from the parameter table (pipelines/params.py) by `python -m pipelines mlproject`:
# edit the table, then regenerate. MLflow does not check types, so every value is parsed again
# (and rejected with one line) by the CLI. "auto" = the model's recipe.
name: mlflow-cnn-pipeline

# `mlflow run .` builds a virtualenv from python_env.yaml (pyenv provides python 3.11; `--env-manager uv` reads
# it too). MLflow takes one env field only, and a conda_env project would make virtualenv/uv read conda.yaml
# instead; conda users: `conda env create -f conda.yaml`, activate it, then `mlflow run . --env-manager local`.
python_env: python_env.yaml

entry_points:
"""


def _yaml_scalar(value) -> str:
    if not isinstance(value, str):
        return repr(value)
    plain = value and value == value.strip() and not any(c in value for c in "#{}[],&*!|>'\"%@`") and ": " not in value
    return value if plain and yaml.safe_load(value) == value else json.dumps(value)


def _fold(words: list[str], indent: str, width: int = 112) -> list[str]:
    lines, line = [], ""
    for w in words:
        if line and len(indent) + len(line) + 1 + len(w) > width:
            lines.append(indent + line)
            line = w
        else:
            line = f"{line} {w}" if line else w
    return [*lines, indent + line]


def render_mlproject() -> str:
    """The whole MLproject file, from the table."""
    out = [MLPROJECT_HEADER]
    for name, what in ENTRY_POINTS.items():
        block = mlproject_block(name)
        out.append(f"  # {what}\n  {name}:\n    parameters:\n")
        rows = {p.name: p for p in params_of(name)}
        for key, spec in block["parameters"].items():
            fields = f"type: {spec['type']}" + (
                f", default: {_yaml_scalar(spec['default'])}" if "default" in spec else ""
            )
            note = rows[key].help + (" auto = the model's recipe." if rows[key].recipe else "")
            out.append(f"      {key}: {{{fields}}}  # {note}\n")
        words = []
        for part in re.split(r" (?=--)", block["command"]):
            words.append(part)
        command = _fold(words, "      ")
        out.append("    command: >-\n" + "\n".join(command) + "\n\n")
    return "".join(out).rstrip("\n") + "\n"
