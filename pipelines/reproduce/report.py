"""Claims vs our runs: the verdict rules and the report (Markdown + self-contained HTML).

Value claims (one reference number) and ordering claims (which configuration is above which) are
judged with ``pipelines.reproduce.stats``: seed-to-seed spread plus the binomial error of the
test sets, never a fixed tolerance alone.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipelines.reproduce import stats
from pipelines.reproduce.claims import ACCURACY_METRICS, Claim, Ordering

TIME_VERDICT = "not run (time)"  # left out by reproduce --max-minutes: its estimate did not fit the budget
VERDICTS = (
    "reproduced", "better", "worse", "not distinguishable", "mismatch", "ratio", "not comparable", "not run",
    TIME_VERDICT,
)  # fmt: skip
ORDER_VERDICTS = ("reproduced", "reversed", "not distinguishable", "not comparable", "not run", TIME_VERDICT)
RULES = (
    "accuracy: reproduced when the reference lies within our mean ± t_0.975 sqrt(s²(1 + 1/n) + p(1-p)/N_ref) "
    "(s = our seed-to-seed std over n seeds, N_ref = the reference's test images), else better/worse; "
    "with one seed: reproduced only within the binomial part, else not distinguishable; "
    "compared only on real, full data at --scale full (a subset's accuracies are labelled, not compared)",
    "parameter counts: must match exactly (checked without training), else mismatch",
    "times: ours / reference per epoch as a ratio with both machines named, never pass/fail",
)
ORDER_RULES = (
    f"A above B: Welch's one-sided t-test on the per-seed values, alpha {stats.ALPHA}, with the binomial variance "
    "p(1-p)/N of our test set added to each side's variance of the mean for accuracy metrics (test accuracy, "
    "overfit gap); reproduced when p < alpha, reversed when the opposite direction has p < alpha, else not "
    f"distinguishable, with the seeds per configuration needed at the observed spread and difference "
    f"(power {1 - stats.BETA:g}; ∞ = never at this test-set size)",
    "best/worst of k and rankings decompose into pairs: reproduced when every pair is (largest p shown), reversed "
    "when a pair is reversed at alpha / pairs",
    "compared on real data (a subset too) at --scale full with 2 or more seeds",
)


@dataclass
class DataUsed:
    kind: str  # "real" | "stand-in" | "missing"
    description: str  # what was loaded and why it counts as real or not (report header)
    dataset: str  # the data set actually trained on
    label: str = ""  # a few words for the table's data column
    subset: str = ""  # a known real copy that is a subset: accuracies labelled, not compared


@dataclass
class Measured:
    mean: float
    std: float  # 0 with one seed
    n: int  # seeds


@dataclass
class Row:
    claim: Claim
    ours: Measured | None
    verdict: str
    detail: str
    data: DataUsed | None = None
    scale: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def stand_in(self) -> bool:
        return self.data is not None and self.data.kind != "real"

    def as_dict(self) -> dict:
        d = {"id": self.claim.id, **asdict(self.claim), "verdict": self.verdict, "detail": self.detail}
        d["ours"] = asdict(self.ours) if self.ours else None
        d["data"] = asdict(self.data) if self.data else None
        d["stand_in"] = self.stand_in
        d["scale"] = self.scale
        return d


def judge(
    claim: Claim,
    ours: Measured | None,
    *,
    data: DataUsed | None,
    scale: str,
    tolerance: float | None = None,  # no longer decides: kept so existing callers need not change
    reference_epochs: int,
    our_epochs: int,
    hardware: tuple[str, str],  # (the notebook's, ours)
) -> Row:
    """One claim's verdict by ``RULES``."""
    row = Row(claim, ours, "", "", data, scale)
    if claim.metric == "num_params":
        if ours is None:
            row.verdict, row.detail = "not run", "model could not be built"
        elif int(ours.mean) == int(claim.reference):
            row.verdict, row.detail = "reproduced", "exact"
        else:
            row.verdict, row.detail = "mismatch", f"ours {int(ours.mean):,} vs reference {int(claim.reference):,}"
        row.data, row.scale = None, "no training"
        return row
    if ours is None or math.isnan(ours.mean):
        row.verdict, row.detail = "not run", (data.description if data and data.kind == "missing" else "no result")
        return row
    if not claim.comparable:
        row.verdict, row.detail = "not comparable", claim.why
        return row
    if row.stand_in:
        row.verdict, row.detail = (
            "not comparable",
            f"stand-in data ({data.dataset}): never compared with a reference value",
        )
        return row
    if claim.metric in ACCURACY_METRICS:
        if data is not None and data.subset:
            row.verdict = "not comparable"
            row.detail = f"{data.subset}: the notebook trained on the full data set; orderings are checked instead"
            return row
        diff = ours.mean - claim.reference
        row.extra["diff"] = diff
        if scale != "full":
            row.verdict = "not comparable"
            row.detail = f"quick scale: {our_epochs} of the notebook's {reference_epochs} epochs"
            return row
        check = stats.check_value(
            claim.reference, stats.Sample(ours.mean, ours.std, ours.n), claim.reference_test_images
        )
        row.verdict, row.detail = check.verdict, check.note
        row.extra["half_width"] = check.half_width
        return row
    # time: per epoch, both machines named
    reference_per_epoch = claim.reference / reference_epochs
    ours_per_epoch = ours.mean / max(our_epochs, 1)
    ratio = ours_per_epoch / reference_per_epoch
    row.extra["ratio"] = ratio
    row.verdict = "ratio"
    row.detail = (
        f"ours {ours_per_epoch:.3g} s/epoch on {hardware[1]} = {ratio:.2f}x the notebook's "
        f"{reference_per_epoch:.3g} s/epoch on {hardware[0]}"
    )
    if data is not None and data.subset:
        row.detail += f"; ours on the {data.subset}"
    return row


@dataclass
class OrderRow:
    """One ordering claim judged on our per-seed values."""

    ordering: Ordering
    samples: dict[str, stats.Sample]  # config -> our values over seeds
    verdict: str
    detail: str
    data: DataUsed | None = None
    scale: str = ""
    p: float = math.nan  # largest one-sided pairwise p-value
    seeds_needed: float = math.nan  # per configuration, when not distinguishable; inf = never
    comparisons: tuple[stats.Comparison, ...] = ()

    @property
    def stand_in(self) -> bool:
        return self.data is not None and self.data.kind != "real"

    def as_dict(self) -> dict:
        d = {"id": self.ordering.id, **asdict(self.ordering), "verdict": self.verdict, "detail": self.detail}
        d["ours"] = {k: asdict(v) for k, v in self.samples.items()}
        d["p"] = _nan_none(self.p)
        d["seeds_needed"] = None if math.isnan(self.seeds_needed) else stats.seeds_text(self.seeds_needed)
        d["pairs"] = [_pair_dict(c) for c in self.comparisons]
        d["data"] = asdict(self.data) if self.data else None
        d["stand_in"] = self.stand_in
        d["scale"] = self.scale
        return d


def _nan_none(x: float):
    return None if math.isnan(x) else x


def _pair_dict(c: stats.Comparison) -> dict:
    need = None if math.isnan(c.seeds_needed) else stats.seeds_text(c.seeds_needed)
    return {"above": c.above, "below": c.below, "diff": c.diff, "p": _nan_none(c.p), "verdict": c.verdict,
            "seeds_needed": need}  # fmt: skip


def ordering_samples(summary, metric: str, test_images: int | None) -> dict[str, stats.Sample]:
    """Per config of a study summary: our mean, std and n on ``metric``; for metrics measured on the test
    set (test accuracy, overfit gap) the binomial variance of the test accuracy on ``test_images``."""
    out = {}
    for _, r in summary.iterrows():
        binom = 0.0
        if metric in ("test_accuracy", "overfit_gap"):
            binom = stats.binomial_var(float(r["test_accuracy_mean"]), test_images)
        out[str(r["config"])] = stats.Sample(
            float(r[f"{metric}_mean"]), float(r[f"{metric}_std"]), float(r["n"]), binom
        )
    return out


def judge_ordering(
    o: Ordering, samples: dict[str, stats.Sample] | None, *, data: DataUsed | None, scale: str, configs: list[str]
) -> OrderRow:
    """One ordering claim's verdict by ``ORDER_RULES``; ``configs`` = every config of its experiment."""
    row = OrderRow(o, samples or {}, "", "", data, scale)
    if not o.comparable:
        row.verdict, row.detail = "not comparable", o.why
        return row
    pairs = o.pairs(configs)
    needed = {x for pair in pairs for x in pair if isinstance(x, str)}
    if samples is None or any(c not in samples or math.isnan(samples[c].mean) for c in needed):
        row.verdict = "not run"
        row.detail = data.description if data is not None and data.kind == "missing" else "no result"
        return row
    if row.stand_in:
        row.verdict, row.detail = "not comparable", f"stand-in data ({data.dataset}): says nothing about the notebook"
        return row
    if scale != "full":
        row.verdict, row.detail = "not comparable", "quick scale: fewer epochs than the notebook, checked at full scale"
        return row

    def side(x):
        return stats.Sample.constant(x) if isinstance(x, float) else samples[x]

    comps = [stats.compare(str(a), side(a), str(b), side(b)) for a, b in pairs]
    combined = stats.combine(comps)
    row.comparisons, row.p, row.seeds_needed = tuple(comps), combined.p, combined.seeds_needed
    row.verdict = combined.verdict
    seeds = sorted({int(s.n) for s in samples.values() if not math.isinf(s.n)})
    with_n = f"with {'/'.join(map(str, seeds))} seed(s)" if combined.verdict == stats.UNCLEAR else ""
    row.detail = "; ".join(x for x in (with_n, combined.note, "; ".join(c.text() for c in comps)) if x)
    return row


def judge_orderings(book, summaries: dict, data_used: dict, scale: str, loaded: dict) -> list[OrderRow]:
    """Every ordering claim of ``book`` (a ``Claims``) against the study summaries; ``loaded`` maps each
    experiment to the data set it trained on (its test-set size gives the binomial error)."""
    rows = []
    for o in book.orderings:
        ds = loaded.get(o.experiment)
        test_images = len(ds.y_test) if ds is not None else None
        summary = summaries.get(o.experiment)
        samples = ordering_samples(summary, o.metric, test_images) if summary is not None and o.comparable else None
        configs = list(book.experiments[o.experiment].configs)
        rows.append(judge_ordering(o, samples, data=data_used.get(o.experiment), scale=scale, configs=configs))
    return rows


def _fmt(metric: str, value: float) -> str:
    if metric == "num_params":
        return f"{int(value):,}"
    if metric in ACCURACY_METRICS:
        return f"{value:.4f}"
    return f"{value:.4g}"


def ours_text(row: Row) -> str:
    if row.ours is None or math.isnan(row.ours.mean):
        return "—"
    m = row.claim.metric
    if m == "num_params":
        return _fmt(m, row.ours.mean)
    text = _fmt(m, row.ours.mean)
    if row.ours.n > 1:
        text += f" ± {_fmt(m, row.ours.std)}"
    return text + f" (n={row.ours.n})"


def diff_text(row: Row) -> str:
    if "diff" in row.extra:
        return f"{row.extra['diff']:+.4f}"
    if "ratio" in row.extra:
        return f"{row.extra['ratio']:.2f}x per epoch"
    if row.verdict in ("reproduced", "mismatch") and row.ours is not None:
        return f"{int(row.ours.mean - row.claim.reference):+,}"
    return ""


def data_text(row: Row) -> str:
    if row.data is None:
        return row.scale or ""
    flag = "" if row.data.kind == "real" else "STAND-IN: "
    return f"{flag}{row.data.label or row.data.dataset}"


COLUMNS = ("claim", "source", "reference", "ours", "diff", "verdict", "why", "data")


def _cells(row: Row) -> list[str]:
    c = row.claim
    return [
        c.id,
        c.source,
        _fmt(c.metric, c.reference),
        ours_text(row),
        diff_text(row),
        row.verdict,
        row.detail,
        data_text(row),
    ]


def counts(rows: list[Row]) -> dict[str, int]:
    return {v: sum(r.verdict == v for r in rows) for v in VERDICTS if any(r.verdict == v for r in rows)}


ORDER_COLUMNS = (
    "claim",
    "source",
    "statement",
    "ours (mean ± std over seeds)",
    "verdict",
    "p",
    "seeds needed",
    "why",
    "data",
)


def order_counts(rows: list[OrderRow]) -> dict[str, int]:
    return {v: sum(r.verdict == v for r in rows) for v in ORDER_VERDICTS if any(r.verdict == v for r in rows)}


def _order_cells(row: OrderRow) -> list[str]:
    o = row.ordering
    fmt = "{:.1f}" if o.metric == "train_seconds" else "{:.4f}"
    ours = "; ".join(f"{c} {s.text(fmt)}" for c, s in row.samples.items() if c in _named(row)) or "—"
    p = "" if math.isnan(row.p) else f"{row.p:.3g}"
    need = (
        stats.seeds_text(row.seeds_needed) if row.verdict == stats.UNCLEAR and not math.isnan(row.seeds_needed) else ""
    )
    data = (
        ""
        if row.data is None
        else ("" if row.data.kind == "real" else "STAND-IN: ") + (row.data.label or row.data.dataset)
    )
    return [o.id, o.source, f"{o.statement} ({o.metric})", ours, row.verdict, p, need, row.detail, data]


def _named(row: OrderRow) -> set[str]:
    """The configs a row's comparisons involve (all of them for highest/lowest)."""
    return {x for c in row.comparisons for x in (c.above, c.below)} or set(row.ordering.configs)


def document(rows: list[Row], header: dict, orderings: list[OrderRow] = ()) -> dict:
    """The report as JSON-ready data (report.json)."""
    return {
        "header": header,
        "counts": counts(rows),
        "rows": [r.as_dict() for r in rows],
        "ordering_counts": order_counts(list(orderings)),
        "orderings": [r.as_dict() for r in orderings],
    }


def markdown(
    rows: list[Row], header: dict[str, str], figures: dict[str, list[Path]], base: Path, orderings: list[OrderRow] = ()
) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = [f"# {header['title']}", ""]
    if header.get("banner"):
        lines += [f"> **{header['banner']}**", ""]
    lines += [f"- **{k}**: {v}" for k, v in header.items() if k not in ("title", "banner")]
    lines += ["", "Rules: " + "; ".join(RULES) + ".", ""]
    lines += ["Verdicts: " + ", ".join(f"{k} {v}" for k, v in counts(rows).items()), ""]
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [esc(x) for x in _cells(row)]
        if row.stand_in:
            cells[-1] = f"**{cells[-1]}**"  # Markdown has no colour: bold + the STAND-IN prefix
        lines.append("| " + " | ".join(cells) + " |")
    if orderings:
        lines += ["", "## Orderings (the notebooks' conclusions)", "", "Rules: " + "; ".join(ORDER_RULES) + ".", ""]
        lines += ["Verdicts: " + ", ".join(f"{k} {v}" for k, v in order_counts(list(orderings)).items()), ""]
        lines += ["| " + " | ".join(ORDER_COLUMNS) + " |", "|" + "---|" * len(ORDER_COLUMNS)]
        for row in orderings:
            cells = [esc(x) for x in _order_cells(row)]
            if row.stand_in:
                cells[-1] = f"**{cells[-1]}**"
            lines.append("| " + " | ".join(cells) + " |")
    for exp, paths in figures.items():
        lines += ["", f"## {exp}", ""]
        lines += [f"![{exp} {p.stem}]({p.relative_to(base).as_posix()})" for p in paths]
    return "\n".join(lines) + "\n"


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:4px 6px;vertical-align:top}
th{background:#eee}.banner{background:#fff3cd;border:1px solid #e0c060;padding:8px;font-weight:bold}
.standin{background:#f8d7da;color:#8b0000;font-weight:bold}
.reproduced{background:#d4edda}.better{background:#cce5ff}.worse,.mismatch{background:#f8d7da}
.ratio{background:#eef}.notcomparable,.notrun,.notruntime{background:#f4f4f4;color:#555}
.reversed{background:#f8d7da}.notdistinguishable{background:#fff3cd}
img{max-width:100%;margin:6px 0}
"""


def _html_table(columns, rows: list[tuple[str, list[str], str, bool]], verdict_at: int) -> str:
    """A table of (row id, cells, verdict, on stand-in data) rows; the verdict and stand-in cells are styled."""
    e = html.escape
    out = ["<table><tr>" + "".join(f"<th>{e(c)}</th>" for c in columns) + "</tr>"]
    for row_id, cells, verdict, stand_in in rows:
        tds = [f"<td>{e(x)}</td>" for x in cells]
        css = "".join(ch for ch in verdict if ch.isalnum())  # "not run (time)" -> notruntime
        tds[verdict_at] = f"<td class='{css}'>{e(cells[verdict_at])}</td>"
        if stand_in:
            tds[-1] = f"<td class='standin'>{e(cells[-1])}</td>"
        out.append(f"<tr id='{e(row_id)}'>" + "".join(tds) + "</tr>")
    return "".join(out) + "</table>"


def html_page(
    rows: list[Row], header: dict[str, str], figures: dict[str, list[Path]], orderings: list[OrderRow] = ()
) -> str:
    """One self-contained page: styles inline, figures as data: URIs."""
    e = html.escape
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(header['title'])}</title>"]
    out.append(f"<style>{_CSS}</style></head><body><h1>{e(header['title'])}</h1>")
    if header.get("banner"):
        out.append(f"<p class='banner'>{e(header['banner'])}</p>")
    items = [f"<li><b>{e(k)}</b>: {e(v)}</li>" for k, v in header.items() if k not in ("title", "banner")]
    out.append("<ul>" + "".join(items))
    out.append("</ul><p>Rules: " + "; ".join(e(r) for r in RULES) + ".</p>")
    out.append("<p>Verdicts: " + ", ".join(f"{e(k)} {v}" for k, v in counts(rows).items()) + "</p>")
    out.append(_html_table(COLUMNS, [(r.claim.id, _cells(r), r.verdict, r.stand_in) for r in rows], verdict_at=5))
    if orderings:
        out.append("<h2>Orderings (the notebooks' conclusions)</h2>")
        out.append("<p>Rules: " + "; ".join(e(r) for r in ORDER_RULES) + ".</p>")
        out.append(
            "<p>Verdicts: " + ", ".join(f"{e(k)} {v}" for k, v in order_counts(list(orderings)).items()) + "</p>"
        )
        cells = [(r.ordering.id, _order_cells(r), r.verdict, r.stand_in) for r in orderings]
        out.append(_html_table(ORDER_COLUMNS, cells, verdict_at=4))
    for exp, paths in figures.items():
        out.append(f"<h2>{e(exp)}</h2>")
        for p in paths:
            data = base64.b64encode(p.read_bytes()).decode()
            out.append(f"<img alt='{e(exp)} {e(p.stem)}' src='data:image/png;base64,{data}'>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
