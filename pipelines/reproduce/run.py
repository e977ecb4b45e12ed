"""Entry point ``reproduce``: re-run the reference notebooks' experiments and put each of their
claims beside our value.

One parent run (experiment ``reproduce``) with one ``study`` child per experiment in
``claims.yaml`` (its trials as grandchildren, reused when a finished trial with the same params
exists in this experiment or in the study's own ``study-<name>``). Parameter counts are checked
without training. The report (Markdown, self-contained HTML, JSON) is written locally and logged
to the parent.

Data: each experiment's data set is loaded from ``data_dir`` (a folder holding the official
layouts: ``cifar-100-python/``, ``cifar-10-batches-py/``, ``mnist/``) or the download cache. It
counts as *real* when its checksums are the official ones or those of a known real copy
(``real_copies``); anything else (synthetic files, an unverified copy, the ``digits`` stand-in
used when the data set is unavailable) is flagged as a stand-in and never compared with a reference
accuracy.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import click
import torch

from models import count_params as count_trainable
from models import create_model
from pipelines.config import DataConfig, data_config
from pipelines.data import DataError, Dataset
from pipelines.params import parsed
from pipelines.parsing import AUTO
from pipelines.reproduce.claims import IMAGE_SHAPES, Claims, Experiment, load_claims
from pipelines.reproduce.report import (
    TIME_VERDICT,
    DataUsed,
    Measured,
    OrderRow,
    Row,
    counts,
    document,
    html_page,
    judge,
    judge_orderings,
    markdown,
    order_counts,
)
from pipelines.trained import load_data
from pipelines.trials import make_train_cfg
from tracking import experiment_id_for, tracked_run
from tracking.artifacts import download, log_file
from tracking.env import cpu_name
from tracking.runs import log_metrics, log_params, set_tags

SEEDS = {"full": "0,1,2", "quick": "0"}  # default seeds per scale
FIGURES = ("figures/accuracy_curves.png", "figures/accuracy_vs_time.png")
# claim metric -> (study summary column, factor to the claim's unit)
SOURCE_COLUMN = {
    "test_accuracy": ("test_accuracy", 1.0),
    "train_accuracy": ("train_accuracy", 1.0),
    "train_seconds": ("train_seconds", 1.0),
    "inference_seconds": ("inference_ms_per_image", 1e-3),
}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def provenance(ds: Dataset, wanted: str, real_copies: dict[str, dict[str, str]]) -> DataUsed:
    """Real (official checksums or a known real copy) or a stand-in, with the reason."""
    if ds.name != wanted:
        return DataUsed("stand-in", f"{ds.name} instead of {wanted}", ds.name, f"{ds.name} for {wanted}")
    if not ds.warnings:
        return DataUsed("real", f"{wanted}, official files (checksums match) in {ds.source}", ds.name, "real, official")
    from pipelines.reproduce.claims import SUBSET_KEY  # provenance-only: a subset copy's label

    known = dict(real_copies.get(ds.name, {}))
    subset = known.pop(SUBSET_KEY, "")  # not a file: what a subset copy holds; its accuracies are labelled so
    folder = Path(ds.source)
    if known and all((folder / f).is_file() and _sha256(folder / f) == h for f, h in known.items()):
        note = f"{wanted}, known real copy (sha256 of {', '.join(known)} match) in {folder}"
        if subset:
            return DataUsed("real", f"{note}; {subset}", ds.name, f"real {subset}", subset=subset)
        return DataUsed("real", note, ds.name, "real, known copy")
    return DataUsed(
        "stand-in",
        f"{wanted} files with unverified checksums (neither official nor a known real copy: synthetic?) in {folder}",
        ds.name,
        f"unverified {wanted} files",
    )


def _build(exp: Experiment, label: str, num_classes: int, in_shape: tuple[int, int, int]) -> torch.nn.Module:
    model, options = exp.variant_options(label)
    channels = in_shape[2]
    return create_model(
        model,
        num_classes=num_classes,
        in_shape=in_shape,
        mean=(0.5,) * channels,
        std=(0.25,) * channels,
        **make_train_cfg(model, **options).model_options(),
    )


def _fits(exp: Experiment, ds: Dataset) -> str | None:
    """None when every config's model accepts the data's image shape, else why not."""
    for label in exp.configs:
        try:
            _build(exp, label, ds.num_classes, ds.in_shape)
        except ValueError as e:
            return str(e)
    return None


def resolve_data(
    exp: Experiment, data_dir: str, stand_in: str, real_copies
) -> tuple[DataConfig | None, DataUsed, Dataset | None]:
    """The data an experiment trains on (config, provenance, the loaded arrays): its own data set if
    it loads, else the stand-in (or none)."""
    cfg = data_config(exp.dataset, data_dir, exp.classes)
    try:
        ds = load_data(cfg)
        used = provenance(ds, exp.dataset, real_copies)
    except DataError as e:
        if stand_in == "none":
            return None, DataUsed("missing", f"{exp.dataset} not available ({e})", exp.dataset, "not available"), None
        cfg = data_config(stand_in, "", "default")
        ds = load_data(cfg)
        note = f"sklearn {stand_in} instead of {exp.dataset} (not available: {e})"
        used = DataUsed("stand-in", note, stand_in, f"{stand_in} for {exp.dataset}")
    why = _fits(exp, ds)
    if why:
        note = f"{used.description}; cannot train on it: {why}"
        return None, DataUsed("missing", note, used.dataset, "unusable"), None
    return cfg, used, ds


def count_params(exp: Experiment, label: str) -> int:
    """The model as the notebook built it (its data set's image shape and classes), trainable parameters."""
    return count_trainable(_build(exp, label, exp.num_classes(), IMAGE_SHAPES[exp.dataset]))


def _measured(summary, config: str, metric: str) -> Measured | None:
    column, factor = SOURCE_COLUMN[metric]
    rows = summary[summary["config"] == config]
    if rows.empty:
        return None
    r = rows.iloc[0]
    return Measured(float(r[f"{column}_mean"]) * factor, float(r[f"{column}_std"]) * factor, int(r["n"]))


def _data_summary(data_used: dict[str, DataUsed]) -> str:
    """One entry per distinct data source, naming the experiments that used it."""
    groups: dict[str, list[str]] = {}
    for name, used in data_used.items():
        flag = "" if used.kind == "real" else used.kind.upper() + ": "
        groups.setdefault(flag + used.description, []).append(name)
    return "; ".join(f"{', '.join(names)}: {text}" for text, names in groups.items())


def _our_hardware(device: str, precision: str) -> str:
    from pipelines.device import pick_device, pick_precision

    dev = pick_device(device)
    prec = pick_precision(precision, dev)
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)} ({prec})"
    return f"{cpu_name()} CPU, {torch.get_num_threads()} threads ({prec})"


def _write_report(
    out_dir: Path, rows: list[Row], header: dict, figure_runs: dict[str, str], orderings: list[OrderRow]
) -> Path:
    """Write report.md/.html/.json + figures into a staging folder, then swap it in (never half-written)."""
    out_dir = out_dir.resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    figures: dict[str, list[Path]] = {}
    try:
        for exp, run_id in figure_runs.items():
            for name in FIGURES:
                try:
                    got = download(run_id, name, stage / "figures" / exp)
                except Exception:  # noqa: BLE001 - a study without that figure: the table still stands
                    continue
                figures.setdefault(exp, []).append(got)
        (stage / "report.md").write_text(markdown(rows, header, figures, stage, orderings))
        (stage / "report.html").write_text(html_page(rows, header, figures, orderings))
        (stage / "report.json").write_text(json.dumps(document(rows, header, orderings), indent=2, default=str))
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(stage, out_dir)
    return out_dir


def _plan_studies(book: Claims, scale: str, seed_text: str, data_dir: str, stand_in: str, device: str, precision: str):
    """One study plan per experiment that has something to train, with the data it will use; every
    data set is located and every value checked here, before any run exists."""
    from pipelines.study import Variant, plan_study  # reproduce runs the experiments as studies

    plans, data_used, loaded = {}, {}, {}
    for name, exp in book.experiments.items():
        if not any(c.experiment == name and c.metric != "num_params" for c in book.claims):
            continue  # only parameter counts: nothing to train
        cfg, used, loaded[name] = resolve_data(exp, data_dir, stand_in, book.real_copies)
        data_used[name] = used
        if cfg is None:
            continue
        variants = [Variant(label, *exp.variant_options(label)) for label in exp.configs]
        epochs = exp.epochs if scale == "full" else exp.quick_epochs
        plans[name] = plan_study(
            name,
            seeds=seed_text,
            epochs=str(epochs),
            dataset=cfg.dataset,
            data_dir=cfg.data_dir or "",
            classes=",".join(map(str, cfg.classes)) if cfg.classes else "default",
            device=device,
            precision=precision,
            variants=variants,
        )
    return plans, data_used, loaded


def _rows(book: Claims, summaries: dict, data_used: dict, scale: str, hardware: str) -> list[Row]:
    """One judged row per claim: the reference value against ours."""
    rows = []
    for c in book.claims:
        exp = book.experiments[c.experiment]
        if c.metric == "num_params":
            ours = Measured(float(count_params(exp, c.config)), 0.0, 1)
        else:
            ours = _measured(summaries[c.experiment], c.config, c.metric) if c.experiment in summaries else None
        row = judge(
            c,
            ours,
            data=data_used.get(c.experiment),
            scale=scale,
            tolerance=c.tolerance if c.tolerance is not None else exp.tolerance,
            reference_epochs=exp.epochs,
            our_epochs=exp.epochs if scale == "full" else exp.quick_epochs,
            hardware=(exp.hardware, hardware),
        )
        if ours is not None and math.isnan(ours.mean):
            row.ours = None
        rows.append(row)
    return rows


def _header(book: Claims, scale: str, seed_text: str, hardware: str, data_used: dict, parent_id: str) -> dict:
    return {
        "title": f"Reproduction of the reference notebooks' claims ({scale} scale)",
        "banner": (
            "QUICK SCALE: fewer epochs and one seed; accuracies are not compared with the notebooks' values."
            if scale == "quick"
            else ""
        ),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "experiments": ", ".join(book.experiments),
        "seeds": seed_text,
        "our hardware": hardware,
        "reference hardware": "; ".join(sorted({e.hardware for e in book.experiments.values()})),
        "data": _data_summary(data_used),
        "mlflow run": parent_id,
    }


@dataclass
class ReproduceResult:
    run_id: str
    out_dir: Path
    rows: list[Row]
    counts: dict[str, int]
    study_runs: dict[str, str]  # experiment -> its study's run id
    orderings: list[OrderRow]  # the reference notebooks' ordering and direction claims, judged


def _planned(book, plans, data_used, loaded, experiment, max_minutes) -> tuple[str, list[str]]:
    """The plan's text and the experiments the time budget leaves out (estimates per model, reuse looked up)."""
    from pipelines.reproduce import plan as planning  # probes build models: only when a run is planned

    entries = [planning.plan_experiment(n, p, loaded[n], data_used[n], experiment) for n, p in plans.items()]
    _, left = planning.fit_budget(entries, max_minutes)
    missing = {n: u.description for n, u in data_used.items() if n not in plans}
    return planning.render(entries, missing, left, max_minutes), left


def _left_out(rows: list[Row], orderings: list[OrderRow], left: list[str], max_minutes: float | None) -> None:
    """Experiments the time budget left out: each of their trained claims and orderings is "not run (time)"
    (parameter counts are still checked: they need no training)."""
    why = f"left out: its estimate did not fit --max-minutes {max_minutes:g}" if max_minutes else ""
    for row in rows:
        if row.claim.experiment in left and row.claim.metric != "num_params":
            row.verdict, row.detail, row.ours = TIME_VERDICT, why, None
    for o in orderings:
        if o.ordering.experiment in left:
            o.verdict, o.detail = TIME_VERDICT, why


def run(
    only: str = "all",
    scale: str = "quick",
    seeds: str = AUTO,
    data_dir: str = "",
    stand_in: str = "digits",
    out: str = "",
    experiment: str | None = None,
    device: str = AUTO,
    precision: str = AUTO,
    claims: Claims | None = None,
    plan: bool = False,
    max_minutes: float | None = None,
) -> ReproduceResult | None:
    """Run the selected experiments and write the report; returns paths, rows and the parent run id.

    The plan (what will run, reused trials, estimated time) is printed to stderr first; with ``plan``
    nothing else happens (no run, no training) and None is returned. ``max_minutes``: only the
    experiments that fit by the estimate run, cheapest first; the others are reported "not run (time)".
    """
    from pipelines.study import run_study  # reproduce runs the experiments as studies

    v = parsed("reproduce", scale=scale, stand_in=stand_in, seeds=seeds)
    scale, stand_in = v["scale"], v["stand_in"]
    seed_text = SEEDS[scale] if v["seeds"] is None else ",".join(map(str, v["seeds"]))
    book = (claims or load_claims()).select(only)
    out_dir = Path(out or f"reports/reproduce-{scale}")
    plans, data_used, loaded = _plan_studies(book, scale, seed_text, data_dir, stand_in, device, precision)
    text, left = _planned(book, plans, data_used, loaded, experiment, max_minutes)
    click.echo(text, err=True)
    if plan:
        return None
    plans = {n: p for n, p in plans.items() if n not in left}
    hardware = _our_hardware(device, precision)
    t0 = time.perf_counter()
    exp_id = experiment_id_for(experiment or "reproduce")
    with tracked_run(f"reproduce-{scale}", exp_id, tags={"step": "reproduce", "scale": scale}) as parent_id:
        log_params(
            {
                "reproduce.only": ",".join(book.experiments),
                "reproduce.scale": scale,
                "reproduce.seeds": seed_text,
                "reproduce.data_dir": data_dir or "(cache)",
                "reproduce.stand_in": stand_in,
                "reproduce.claims": len(book.claims),
                "reproduce.max_minutes": "none" if max_minutes is None else f"{max_minutes:g}",
                "reproduce.left_out": ",".join(left) or "(none)",
            }
        )
        summaries, study_runs = {}, {}
        for name, study_plan in plans.items():
            r = run_study(study_plan, within_run=parent_id, dataset=loaded[name])
            summaries[name], study_runs[name] = r.summary, r.run_id
        rows = _rows(book, summaries, data_used, scale, hardware)
        orderings = judge_orderings(book, summaries, data_used, scale, loaded)
        _left_out(rows, orderings, left, max_minutes)
        header = _header(book, scale, seed_text, hardware, data_used, parent_id)
        if left:
            header["left out (time)"] = f"{', '.join(left)}: estimates beyond --max-minutes {max_minutes:g}"
        path = _write_report(out_dir, rows, header, study_runs, orderings)
        tally = _log_outcome(path, rows, orderings, header, t0)
    return ReproduceResult(parent_id, path, rows, tally, study_runs, orderings)


def _log_outcome(path: Path, rows: list[Row], orderings: list[OrderRow], header: dict, t0: float) -> dict[str, int]:
    """The report files, the tallies as metrics and a note on the parent run; returns the claims' tally."""
    for name in ("report.md", "report.html", "report.json"):
        log_file(path / name, "report")
    tally = counts(rows)
    order_tally = order_counts(orderings)
    log_metrics(
        {
            "claims": len(rows),
            **{f"claims_{_metric_name(k)}": v for k, v in tally.items()},
            "orderings": len(orderings),
            **{f"orderings_{_metric_name(k)}": v for k, v in order_tally.items()},
            "claims_on_stand_in_data": sum(r.stand_in for r in rows),
            "reproduce_seconds": time.perf_counter() - t0,
        }
    )
    set_tags(
        {
            "mlflow.note.content": f"{header['title']}: "
            + ", ".join(f"{k} {v}" for k, v in tally.items())
            + (f"\n\n{header['banner']}" if header["banner"] else "")
            + "\n\nReport: artifacts `report/report.html` (self-contained) and `report/report.md`."
        }
    )
    return tally


def _metric_name(verdict: str) -> str:
    """A verdict as part of an MLflow metric name: "not run (time)" -> not_run_time."""
    return "_".join(verdict.replace("(", " ").replace(")", " ").split())
