"""Command line: ``python -m pipelines <command>`` (also installed as ``pipeline``).

Each MLproject entry point is a command; its options come from the parameter table
(``pipelines.params``), so a bad value prints one line and exits 2 before a run is created.
The commands are grouped by concern: ``core`` (the classification steps), ``studies``,
``analysis`` and ``ops``.
"""

from pipelines.cli import analysis, core, ops, studies  # noqa: F401 - importing a module registers its commands
from pipelines.cli.app import cli, entry_point

__all__ = ["cli", "entry_point"]
