"""Project files agree: the MLproject and the CLI follow the parameter table, conda.yaml = requirements."""

from __future__ import annotations

import re
import subprocess
import sys

import yaml

from pipelines.cli import cli
from pipelines.mlproject import mlproject_block, render_mlproject
from pipelines.params import PARAMS, entry_points, params_of
from tests.conftest import ROOT


def _project() -> dict:
    return yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]


def test_mlproject_entry_points_are_cli_commands():
    project = _project()
    assert {"main", "prep", "train", "evaluate", "export_onnx"} <= set(project)
    for name, spec in project.items():
        command = spec["command"].split()
        assert command[:3] == ["python", "-m", "pipelines"] and command[3] in cli.commands, name
        assert '"{' not in spec["command"], f"{name}: mlflow run quotes values itself; do not add quotes"


def test_mlproject_parameters_match_the_parameter_table():
    """Names, types, defaults and the command's placeholders of every entry point, as the table declares them."""
    project = _project()
    assert set(project) == set(entry_points()), "an entry point without rows, or rows without one"
    for name, spec in project.items():
        want = mlproject_block(name)
        assert spec.get("parameters", {}) == want["parameters"], name
        command = " ".join(spec["command"].split())
        assert set(re.findall(r"\{(\w+)\}", command)) == set(want["parameters"]), name
        for p in params_of(name):
            if p.mlproject and not p.argument:
                assert f"{p.flag} {{{p.name}}}" in command, f"{name}: {p.flag} {{{p.name}}}"
        assert command.split()[:4] == want["command"].split()[:4], name


def test_mlproject_is_the_one_the_table_generates():
    assert (ROOT / "MLproject").read_text() == render_mlproject(), "regenerate it: python -m pipelines mlproject"


def test_a_name_has_one_row_per_entry_point_and_every_default_parses():
    for point in entry_points():
        names = [p.name for p in params_of(point)]
        assert len(names) == len(set(names)), point
    for p in PARAMS:
        if p.default is not None and p.kind.check_early:
            p.parse(p.default)


def test_help_lists_every_mlproject_entry_point():
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    listed = {line.split()[0] for line in proc.stdout.split("Commands:")[1].splitlines() if line.strip()}
    assert set(_project()) <= listed


def test_conda_env_pins_the_same_versions_as_requirements():
    reqs = [line for line in (ROOT / "requirements.txt").read_text().splitlines() if line and line[0] != "#"]
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())
    pip = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert pip == reqs
    assert "torch==2.13.0" in reqs
