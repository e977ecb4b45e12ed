"""Statistics for the reproduction verdicts, sized for 3 seeds and 300- or 2,000-image test sets.

Two questions, each answered with the seed-to-seed spread in view:

- **ordering** (``compare``): is configuration A above B on a metric? Welch's t-test, one-sided,
  on the per-seed values summarised as mean, sample std (ddof=1) and n. For accuracy metrics the
  binomial variance of the test-set accuracy, p(1-p)/N, is added to each side's variance of the
  mean: the test set is one sample of images however many seeds are run, so this part does not
  shrink with more seeds.
      se² = s_A²/n_A + b_A + s_B²/n_B + b_B,   t = (mean_A - mean_B) / se
      df  = se⁴ / Σ (s_i²/n_i)² / (n_i - 1)         (Welch-Satterthwaite; binomial terms: df = ∞)
  *reproduced* when P(T > t) < alpha, *reversed* when P(T < t) < alpha, otherwise *not
  distinguishable with n seeds*, with the seeds each side would need at the observed spread and
  difference (alpha one-sided, power 1 - beta):
      n = (s_A² + s_B²) / (d²/(z_{1-alpha} + z_{1-beta})² - b_A - b_B)
  (= 2(z_{1-alpha}+z_{1-beta})² s²/d² for equal spreads and no binomial part); ∞ when d = 0 or
  when the binomial part alone is too large (a bigger test set is needed, not more seeds).
  Orderings of more than two configurations decompose into pairs (``combine``): reproduced when
  every pair is (an intersection-union test: the largest p-value counts, no correction needed),
  reversed when some pair is reversed at alpha / (number of pairs) (Bonferroni).
- **value** (``check_value``): does a reference number from one run agree with our mean? One run
  differs from the expected value by the seed spread s and by the binomial error of its own test
  set; our mean by s/sqrt(n):
      V = s²(1 + 1/n) + p_ref(1 - p_ref)/N_ref,   half-width = t_{0.975, df} sqrt(V)
  *reproduced* when |ours - reference| <= half-width, else *better* / *worse*.

With one seed there is no spread: an ordering is *not distinguishable*; a value is *reproduced*
only when it lies within the binomial part alone (the unknown spread could only widen the
interval), else *not distinguishable*.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats as _st

ALPHA = 0.05  # one-sided level of an ordering test
BETA = 0.2  # 1 - power of the seeds-needed calculation
VALUE_LEVEL = 0.95  # two-sided coverage of the value interval
REPRODUCED, REVERSED, UNCLEAR = "reproduced", "reversed", "not distinguishable"


def binomial_var(p: float, images: int | None) -> float:
    """Variance of an accuracy p measured on ``images`` test images (0 when the size is unknown)."""
    if not images or math.isnan(p):
        return 0.0
    p = min(max(p, 0.0), 1.0)
    return p * (1.0 - p) / images


@dataclass(frozen=True)
class Sample:
    """One configuration's per-seed values, summarised (or an exact constant: n = inf, std = 0)."""

    mean: float
    std: float  # sample std over seeds (ddof=1); 0 with one seed
    n: float  # seeds
    binom_var: float = 0.0  # p(1-p)/N of the test set, accuracy metrics only

    @classmethod
    def constant(cls, value: float) -> Sample:
        return cls(float(value), 0.0, math.inf)

    @property
    def seed_var_of_mean(self) -> float:
        return self.std**2 / self.n

    @property
    def var_of_mean(self) -> float:
        return self.seed_var_of_mean + self.binom_var

    def text(self, fmt: str = "{:.4f}") -> str:
        if math.isinf(self.n):
            return fmt.format(self.mean)
        return f"{fmt.format(self.mean)} ± {fmt.format(self.std)} (n={int(self.n)})"


def _sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with df degrees of freedom (normal for df = inf)."""
    return float(_st.norm.sf(t) if math.isinf(df) else _st.t.sf(t, df))


def _welch_df(parts: list[tuple[float, float]], total: float) -> float:
    """Welch-Satterthwaite df from (variance-of-mean, n) pairs; parts with n = inf count as exact."""
    denom = sum(v * v / (n - 1) for v, n in parts if v > 0 and not math.isinf(n))
    return math.inf if denom == 0 else total * total / denom


def seeds_needed(a: Sample, b: Sample, alpha: float = ALPHA, beta: float = BETA) -> float:
    """Seeds per side for a one-sided test at ``alpha`` to show |mean_a - mean_b| with power 1 - beta,
    at the observed spreads; inf when the difference is 0 or the binomial part alone is too large."""
    d = abs(a.mean - b.mean)
    if d == 0:
        return math.inf
    k = _st.norm.ppf(1 - alpha) + _st.norm.ppf(1 - beta)
    room = d * d / (k * k) - a.binom_var - b.binom_var
    if room <= 0:
        return math.inf
    return float(max(2, math.ceil((a.std**2 + b.std**2) / room)))


@dataclass(frozen=True)
class Comparison:
    """One-sided test of ``above`` > ``below`` on a metric."""

    above: str
    below: str
    a: Sample
    b: Sample
    diff: float  # mean(above) - mean(below): positive supports the claim
    se: float
    df: float
    p: float  # P(difference this large | no difference), for the claimed direction
    p_reverse: float  # the same for the opposite direction
    verdict: str  # REPRODUCED | REVERSED | UNCLEAR
    seeds_needed: float  # per side, at the observed spread and difference; inf = never
    note: str = ""

    def text(self) -> str:
        head = f"{self.above} > {self.below}: diff {self.diff:+.4g}"
        if self.note:
            return f"{head}, {self.verdict} ({self.note})"
        return f"{head}, p={self.p:.3g}, {self.verdict}" + (
            f", ~{seeds_text(self.seeds_needed)} seeds needed" if self.verdict == UNCLEAR else ""
        )


def seeds_text(n: float) -> str:
    return "∞" if math.isinf(n) else str(int(n))


def compare(above: str, a: Sample, below: str, b: Sample, alpha: float = ALPHA, beta: float = BETA) -> Comparison:
    """Welch's one-sided t-test of mean(a) > mean(b), binomial variance included (module docstring)."""
    diff = a.mean - b.mean
    for s in (a, b):
        if not math.isinf(s.n) and s.n < 2:
            note = f"{int(s.n)} seed: no seed-to-seed spread to test the difference against; run 2 or more seeds"
            return Comparison(above, below, a, b, diff, math.nan, math.nan, math.nan, math.nan, UNCLEAR, math.nan, note)
    var = a.var_of_mean + b.var_of_mean
    se = math.sqrt(var)
    df = _welch_df([(a.seed_var_of_mean, a.n), (b.seed_var_of_mean, b.n)], var)
    if se == 0:  # no spread at all (e.g. counts): the sign decides
        p, p_rev = (0.0, 1.0) if diff > 0 else (1.0, 0.0) if diff < 0 else (0.5, 0.5)
    else:
        p, p_rev = _sf(diff / se, df), _sf(-diff / se, df)
    verdict = REPRODUCED if p < alpha else REVERSED if p_rev < alpha else UNCLEAR
    return Comparison(above, below, a, b, diff, se, df, p, p_rev, verdict, seeds_needed(a, b, alpha, beta))


@dataclass(frozen=True)
class Combined:
    verdict: str
    p: float  # largest pairwise p (intersection-union test); nan when a pair could not be tested
    seeds_needed: float  # the most any unresolved pair needs; nan when unknown (one seed)
    comparisons: tuple[Comparison, ...]
    note: str = ""


def combine(comparisons: list[Comparison], alpha: float = ALPHA) -> Combined:
    """An ordering made of pairs: reproduced when every pair is, reversed when one pair is reversed at
    alpha / pairs (Bonferroni: any of several pairs may reverse by chance), else not distinguishable."""
    comps = tuple(comparisons)
    untested = [c for c in comps if math.isnan(c.p)]
    if untested:
        return Combined(UNCLEAR, math.nan, math.nan, comps, untested[0].note)
    p = max(c.p for c in comps)
    if p < alpha:
        return Combined(REPRODUCED, p, 0.0, comps)
    if any(c.p_reverse < alpha / len(comps) for c in comps):
        return Combined(REVERSED, p, 0.0, comps)
    open_pairs = [c for c in comps if c.verdict != REPRODUCED]
    need = max(c.seeds_needed for c in open_pairs)
    return Combined(UNCLEAR, p, need, comps, f"~{seeds_text(need)} seeds per configuration needed at this spread")


@dataclass(frozen=True)
class ValueCheck:
    verdict: str  # "reproduced" | "better" | "worse" | "not distinguishable"
    diff: float  # ours - reference
    half_width: float  # of the combined ~95 % interval (nan with one seed and no binomial part)
    df: float
    note: str


def check_value(
    reference: float, ours: Sample, reference_images: int | None = None, level: float = VALUE_LEVEL
) -> ValueCheck:
    """A reference number from one run against our mean over seeds (module docstring)."""
    diff = ours.mean - reference
    binom = binomial_var(reference, reference_images)
    side = "better" if diff > 0 else "worse"
    if ours.n < 2:
        half = float(_st.norm.ppf(0.5 + level / 2) * math.sqrt(binom))
        if abs(diff) <= half:
            note = f"|diff| <= {half:.4f}, the reference's binomial error alone (1 seed: spread unknown)"
            return ValueCheck(REPRODUCED, diff, half, math.inf, note)
        note = f"diff {diff:+.4f}; 1 seed: no seed-to-seed spread, so not distinguishable from noise; run 2 or more"
        return ValueCheck(UNCLEAR, diff, half, math.inf, note)
    seed_part = ours.std**2 * (1 + 1 / ours.n)
    var = seed_part + binom
    df = _welch_df([(seed_part, ours.n)], var)
    q = _st.norm.ppf(0.5 + level / 2) if math.isinf(df) else _st.t.ppf(0.5 + level / 2, df)
    half = float(q * math.sqrt(var))
    parts = f"seed spread {ours.std:.4f} over {int(ours.n)} seeds" + (
        f" + binomial {math.sqrt(binom):.4f} of the reference's {reference_images} test images" if binom else ""
    )
    if abs(diff) <= half:
        return ValueCheck(REPRODUCED, diff, half, df, f"|diff| <= {half:.4f} ({parts})")
    return ValueCheck(side, diff, half, df, f"diff {diff:+.4f} beyond ±{half:.4f} ({parts})")
