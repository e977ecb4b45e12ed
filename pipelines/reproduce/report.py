"""Claim vs measured value: the verdict rules and the report (Markdown + self-contained HTML)."""

from __future__ import annotations

import base64
import html
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipelines.reproduce.claims import ACCURACY_METRICS, Claim

VERDICTS = ("reproduced", "better", "worse", "mismatch", "ratio", "not comparable", "not run")
RULES = (
    "accuracy: reproduced when |ours - seed| <= the experiment's tolerance (mean over our seeds), else better/worse; "
    "compared only on real data at --scale full",
    "parameter counts: must match exactly (checked without training), else mismatch",
    "times: ours / seed per epoch as a ratio with both machines named, never pass/fail",
)


@dataclass
class DataUsed:
    kind: str  # "real" | "stand-in" | "missing"
    description: str  # what was loaded and why it counts as real or not (report header)
    dataset: str  # the data set actually trained on
    label: str = ""  # a few words for the table's data column


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
    tolerance: float,
    seed_epochs: int,
    our_epochs: int,
    hardware: tuple[str, str],  # (the seed's, ours)
) -> Row:
    """One claim's verdict by ``RULES``."""
    row = Row(claim, ours, "", "", data, scale)
    if claim.metric == "num_params":
        if ours is None:
            row.verdict, row.detail = "not run", "model could not be built"
        elif int(ours.mean) == int(claim.seed):
            row.verdict, row.detail = "reproduced", "exact"
        else:
            row.verdict, row.detail = "mismatch", f"ours {int(ours.mean):,} vs seed {int(claim.seed):,}"
        row.data, row.scale = None, "no training"
        return row
    if ours is None or math.isnan(ours.mean):
        row.verdict, row.detail = "not run", (data.description if data and data.kind == "missing" else "no result")
        return row
    if not claim.comparable:
        row.verdict, row.detail = "not comparable", claim.why
        return row
    if row.stand_in:
        row.verdict, row.detail = "not comparable", f"stand-in data ({data.dataset}): never compared with a seed value"
        return row
    if claim.metric in ACCURACY_METRICS:
        diff = ours.mean - claim.seed
        row.extra["diff"] = diff
        if scale != "full":
            row.verdict = "not comparable"
            row.detail = f"quick scale: {our_epochs} of the seed's {seed_epochs} epochs"
        elif abs(diff) <= tolerance:
            row.verdict, row.detail = "reproduced", f"|diff| <= {tolerance:g}"
        else:
            row.verdict = "better" if diff > 0 else "worse"
            row.detail = f"diff {diff:+.4f} beyond ±{tolerance:g}"
        return row
    # time: per epoch, both machines named
    seed_per_epoch = claim.seed / seed_epochs
    ours_per_epoch = ours.mean / max(our_epochs, 1)
    ratio = ours_per_epoch / seed_per_epoch
    row.extra["ratio"] = ratio
    row.verdict = "ratio"
    row.detail = (
        f"ours {ours_per_epoch:.3g} s/epoch on {hardware[1]} = {ratio:.2f}x the seed's {seed_per_epoch:.3g} s/epoch "
        f"on {hardware[0]}"
    )
    return row


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
        return f"{int(row.ours.mean - row.claim.seed):+,}"
    return ""


def data_text(row: Row) -> str:
    if row.data is None:
        return row.scale or ""
    flag = "" if row.data.kind == "real" else "STAND-IN: "
    return f"{flag}{row.data.label or row.data.dataset}"


COLUMNS = ("claim", "source", "seed", "ours", "diff", "verdict", "why", "data")


def _cells(row: Row) -> list[str]:
    c = row.claim
    return [
        c.id,
        c.source,
        _fmt(c.metric, c.seed),
        ours_text(row),
        diff_text(row),
        row.verdict,
        row.detail,
        data_text(row),
    ]


def counts(rows: list[Row]) -> dict[str, int]:
    return {v: sum(r.verdict == v for r in rows) for v in VERDICTS if any(r.verdict == v for r in rows)}


def markdown(rows: list[Row], header: dict[str, str], figures: dict[str, list[Path]], base: Path) -> str:
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
.ratio{background:#eef}.notcomparable,.notrun{background:#f4f4f4;color:#555}
img{max-width:100%;margin:6px 0}
"""


def html_page(rows: list[Row], header: dict[str, str], figures: dict[str, list[Path]]) -> str:
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
    out.append("<table><tr>" + "".join(f"<th>{e(c)}</th>" for c in COLUMNS) + "</tr>")
    for row in rows:
        cells = _cells(row)
        tds = [f"<td>{e(x)}</td>" for x in cells]
        tds[5] = f"<td class='{row.verdict.replace(' ', '')}'>{e(cells[5])}</td>"
        if row.stand_in:
            tds[-1] = f"<td class='standin'>{e(cells[-1])}</td>"
        out.append(f"<tr id='{e(row.claim.id)}'>" + "".join(tds) + "</tr>")
    out.append("</table>")
    for exp, paths in figures.items():
        out.append(f"<h2>{e(exp)}</h2>")
        for p in paths:
            data = base64.b64encode(p.read_bytes()).decode()
            out.append(f"<img alt='{e(exp)} {e(p.stem)}' src='data:image/png;base64,{data}'>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
