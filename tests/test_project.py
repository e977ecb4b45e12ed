"""Project files agree with each other: MLproject entry points = CLI commands, conda.yaml = requirements."""

from __future__ import annotations

import yaml

from pipelines.__main__ import cli
from tests.conftest import ROOT


def test_mlproject_entry_points_are_cli_commands():
    project = yaml.safe_load((ROOT / "MLproject").read_text())
    points = set(project["entry_points"])
    assert {"main", "prep", "train", "evaluate", "export_onnx"} <= points
    for name, spec in project["entry_points"].items():
        command = spec["command"].split()
        assert command[:3] == ["python", "-m", "pipelines"] and command[3] in cli.commands, name
        assert '"{' not in spec["command"], f"{name}: mlflow run quotes values itself; do not add quotes"


def test_conda_env_pins_the_same_versions_as_requirements():
    reqs = [line for line in (ROOT / "requirements.txt").read_text().splitlines() if line and line[0] != "#"]
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())
    pip = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert pip == reqs
    assert "torch==2.13.0" in reqs
