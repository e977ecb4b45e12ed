"""Entry point ``compare``: the comparison (``pipelines.comparison``) of runs named by id or experiment.

A study or sweep parent stands for its trials; the table is printed and, unless ``log`` is off,
recorded with its figures as a ``compare`` run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pandas as pd

from pipelines.comparison import (
    PARENT_STEPS,
    children_of,
    display_frame,
    is_result,
    log_comparison,
    quiet_downloads,
    render,
    runs_frame,
    summarize,
)
from pipelines.parsing import ConfigError
from tracking import experiment_id_for, tracked_run
from tracking.queries import RunRecord, find_experiment_id, find_runs, get_run_record
from tracking.runs import log_params, set_tags


def _looks_like_run_id(ref: str) -> bool:
    return re.fullmatch(r"[0-9a-f]{32}", ref) is not None


def resolve(refs: list[str]) -> list[RunRecord]:
    """Run ids and/or experiment names -> the result runs they name (study parents expand to trials)."""
    if not refs:
        raise ConfigError("compare needs run ids or an experiment name")
    out: dict[str, RunRecord] = {}
    for ref in refs:
        ref = ref.strip()
        rec = get_run_record(ref) if _looks_like_run_id(ref) else None
        if rec is not None:
            recs = children_of(rec) if rec.tags.get("step") in PARENT_STEPS else [rec]
            if not recs or not all(is_result(r) for r in recs):
                bad = [r.run_id for r in recs if not is_result(r)] or [ref]
                raise ConfigError(f"compare: run(s) {', '.join(bad)} are not finished runs with test_accuracy")
        else:
            exp_id = find_experiment_id(ref)
            if exp_id is None:
                raise ConfigError(f"compare: {ref!r} is neither a run id nor an experiment name")
            recs = [r for r in find_runs([exp_id], "attributes.status = 'FINISHED'") if is_result(r)]
            if not recs:
                raise ConfigError(f"compare: experiment {ref!r} has no finished runs with test_accuracy")
        out.update({r.run_id: r for r in recs})
    return list(out.values())


@dataclass
class CompareResult:
    summary: pd.DataFrame
    text: str  # the table as printed
    run_ids: list[str]  # the runs compared
    run_id: str | None  # the compare run (None without ``log``)


def run(refs: list[str], experiment: str | None = None, log: bool = True) -> CompareResult:
    """Compare finished runs; print the table and (``log``) record it as a ``compare`` run."""
    quiet_downloads()
    records = resolve(refs)
    summary = summarize(runs_frame(records))
    text = render(display_frame(summary), f"compare: {len(records)} runs")
    result = CompareResult(summary, text, [r.run_id for r in records], None)
    if not log:
        return result
    if not experiment:
        # The experiment of the runs compared (when they share one), else "compare".
        exps = {r.experiment_id for r in records}
        exp_id = exps.pop() if len(exps) == 1 else experiment_id_for("compare")
    else:
        exp_id = experiment_id_for(experiment)
    with tracked_run("compare", exp_id) as rid:
        log_params({"refs": ",".join(refs), "n_runs": len(records)})
        set_tags({"step": "compare", "compared_run_ids": ",".join(r.run_id for r in records)[:5000]})
        log_comparison(records, "compare")
        set_tags({"mlflow.note.content": f"Comparison of {len(records)} runs.\n\n```\n{text}\n```"})
    result.run_id = rid
    return result
