"""Verdict statistics of the reproduction report: constructed cases with known answers."""

from __future__ import annotations

import math

import pytest

from pipelines.reproduce import stats
from pipelines.reproduce.claims import Ordering
from pipelines.reproduce.report import DataUsed, judge_ordering
from pipelines.reproduce.stats import Sample, binomial_var, check_value, combine, compare, seeds_needed

N_TEST = 300  # a 3-class CIFAR-100 test set


def acc(mean: float, std: float, n: int = 3, images: int | None = N_TEST) -> Sample:
    """An accuracy over ``n`` seeds with the binomial variance of a test set of ``images``."""
    return Sample(mean, std, n, binomial_var(mean, images))


def test_binomial_error_of_a_300_image_test_set_is_about_one_and_a_half_points():
    assert math.sqrt(binomial_var(0.9267, 300)) == pytest.approx(0.0150, abs=2e-4)
    assert binomial_var(0.9, None) == 0.0


def test_clear_win_is_reproduced():
    c = compare("max", acc(0.92, 0.005), "stride", acc(0.85, 0.005))
    assert c.verdict == "reproduced" and c.p < 0.01
    assert c.diff == pytest.approx(0.07)


def test_clear_reversal_is_reversed():
    c = compare("max", acc(0.85, 0.005), "stride", acc(0.92, 0.005))
    assert c.verdict == "reversed" and c.p > 0.99 and c.p_reverse < 0.01


def test_welch_matches_the_textbook_without_binomial_part():
    # s = 0.01 on both sides, n = 3: se = sqrt(2 * 1e-4 / 3), df = 4 (equal variances, equal n)
    c = compare("a", Sample(0.56, 0.01, 3), "b", Sample(0.53, 0.01, 3))
    assert c.se == pytest.approx(math.sqrt(2e-4 / 3)) and c.df == pytest.approx(4.0)
    assert c.p == pytest.approx(0.0104, abs=5e-4)  # t = 3.67 on 4 df, one-sided
    assert c.verdict == "reproduced"


def test_tie_within_noise_is_not_distinguishable_with_seeds_needed():
    c = compare("k5", Sample(0.550, 0.01, 3), "k7", Sample(0.545, 0.01, 3))
    assert c.verdict == "not distinguishable" and 0.05 < c.p < 0.95
    # n = (z_.95 + z_.8)^2 (s_a^2 + s_b^2) / d^2 = 2.486^2 * 2e-4 / 2.5e-5 = 49.5 -> 50
    assert c.seeds_needed == 50
    assert "50 seeds needed" in c.text()


def test_seeds_needed_is_infinite_when_the_test_set_is_too_small_or_no_difference():
    # a 0.5-point difference on 300 images: the binomial part alone exceeds what a test can resolve
    c = compare("max", acc(0.900, 0.01), "avg", acc(0.895, 0.01))
    assert c.verdict == "not distinguishable" and math.isinf(c.seeds_needed)
    assert math.isinf(seeds_needed(Sample(0.9, 0.01, 3), Sample(0.9, 0.01, 3)))
    assert "∞ seeds needed" in c.text()


def test_binomial_part_widens_the_test():
    plain = compare("a", Sample(0.92, 0.005, 3), "b", Sample(0.90, 0.005, 3))
    with_binomial = compare("a", acc(0.92, 0.005), "b", acc(0.90, 0.005))
    assert plain.verdict == "reproduced"
    assert with_binomial.se > plain.se and with_binomial.verdict == "not distinguishable"


def test_one_seed_has_no_spread_and_is_never_distinguishable():
    c = compare("max", acc(0.92, 0.0, n=1), "stride", acc(0.85, 0.0, n=1))
    assert c.verdict == "not distinguishable" and math.isnan(c.p)
    assert "1 seed: no seed-to-seed spread" in c.note
    combined = combine([c])
    assert combined.verdict == "not distinguishable" and "1 seed" in combined.note


def test_best_of_three_needs_every_pair():
    configs = ["stride", "max", "avg"]
    best = Ordering("pooling", "max_best", "highest", "test_accuracy", ("max",), "lab2.2", "max best")
    assert best.pairs(configs) == [("max", "stride"), ("max", "avg")]
    s = {"stride": acc(0.85, 0.005), "max": acc(0.93, 0.005), "avg": acc(0.86, 0.005)}
    won = combine([compare(a, s[a], b, s[b]) for a, b in best.pairs(configs)])
    assert won.verdict == "reproduced" and won.p == max(c.p for c in won.comparisons)
    s["avg"] = acc(0.925, 0.005)  # max beats stride clearly, avg only within noise
    open_ = combine([compare(a, s[a], b, s[b]) for a, b in best.pairs(configs)])
    assert open_.verdict == "not distinguishable" and [c.verdict for c in open_.comparisons] == [
        "reproduced",
        "not distinguishable",
    ]
    s["avg"] = acc(0.99, 0.002)  # avg clearly above max
    lost = combine([compare(a, s[a], b, s[b]) for a, b in best.pairs(configs)])
    assert lost.verdict == "reversed"


def test_ranking_decomposes_into_adjacent_pairs():
    rank = Ordering("kernel", "order", "descending", "test_accuracy", ("k5", "k7", "k3"), "§2.1", "5 > 7 > 3")
    assert rank.pairs(["k3", "k5", "k7"]) == [("k5", "k7"), ("k7", "k3")]
    lowest = Ordering("pooling", "fastest", "lowest", "train_seconds", ("stride",), "lab2.2", "stride fastest")
    assert lowest.pairs(["stride", "max", "avg"]) == [("max", "stride"), ("avg", "stride")]


def test_direction_claim_regularisation_narrows_the_gap():
    narrows = Ordering(
        "cifar10_arch", "reg", "less", "overfit_gap", ("resnet_cifar_reg", "resnet_cifar"), "§1.2", "reg narrows"
    )
    assert narrows.pairs([]) == [("resnet_cifar", "resnet_cifar_reg")]  # gap(reg) < gap(plain)
    samples = {"resnet_cifar": Sample(0.12, 0.01, 3), "resnet_cifar_reg": Sample(0.02, 0.01, 3)}
    row = judge_ordering(narrows, samples, data=DataUsed("real", "r", "cifar10"), scale="full", configs=list(samples))
    assert row.verdict == "reproduced" and row.p < 0.05
    samples["resnet_cifar_reg"] = Sample(0.20, 0.01, 3)  # the regularised model overfits more
    assert judge_ordering(narrows, samples, data=None, scale="full", configs=list(samples)).verdict == "reversed"


def test_claim_against_a_constant_is_a_one_sample_test():
    overfits = Ordering("cifar10_arch", "o", "greater", "overfit_gap", ("resnet_cifar",), "§1.2", "overfits", value=0.0)
    assert overfits.pairs([]) == [("resnet_cifar", 0.0)]
    c = compare("resnet_cifar", Sample(0.08, 0.01, 3), "0", Sample.constant(0.0))
    assert c.df == pytest.approx(2.0) and c.verdict == "reproduced"


def test_ordering_rows_are_only_compared_on_real_data_at_full_scale():
    best = Ordering("pooling", "max_best", "highest", "test_accuracy", ("max",), "lab2.2", "max best")
    s = {"stride": acc(0.85, 0.005), "max": acc(0.93, 0.005), "avg": acc(0.86, 0.005)}
    real = DataUsed("real", "r", "cifar100")
    kw = {"configs": list(s)}
    assert judge_ordering(best, s, data=real, scale="full", **kw).verdict == "reproduced"
    assert judge_ordering(best, s, data=real, scale="quick", **kw).verdict == "not comparable"
    stand_in = judge_ordering(best, s, data=DataUsed("stand-in", "synthetic", "digits"), scale="full", **kw)
    assert stand_in.verdict == "not comparable" and stand_in.stand_in
    assert judge_ordering(best, None, data=real, scale="full", **kw).verdict == "not run"
    subset = DataUsed("real", "r", "cifar10", subset="subset (10,000 train images)")
    assert judge_ordering(best, s, data=subset, scale="full", **kw).verdict == "reproduced"  # orderings count


@pytest.mark.parametrize(
    "ours, verdict",
    [
        (Sample(0.9267, 0.01, 3), "reproduced"),
        (Sample(0.95, 0.01, 3), "reproduced"),  # +2.3 points: within seed spread + 300-image binomial error
        (Sample(0.97, 0.01, 3), "better"),
        (Sample(0.88, 0.01, 3), "worse"),
    ],
)
def test_value_claims_use_the_combined_interval(ours, verdict):
    check = check_value(0.9267, ours, reference_images=300)
    # V = s^2 (1 + 1/3) + p(1-p)/300; df (Welch-Satterthwaite) ~ 14.6 -> t = 2.14; half-width ~ 0.0405
    assert check.half_width == pytest.approx(0.0405, abs=5e-4)
    assert check.verdict == verdict


def test_value_claim_on_a_large_test_set_is_tighter():
    assert check_value(0.9911, Sample(0.9870, 0.0005, 3), reference_images=10_000).verdict == "worse"
    assert check_value(0.9911, Sample(0.9905, 0.0005, 3), reference_images=10_000).verdict == "reproduced"


def test_value_claim_with_one_seed():
    inside = check_value(0.9267, Sample(0.93, 0.0, 1), reference_images=300)
    assert inside.verdict == "reproduced" and "1 seed" in inside.note  # within the binomial part alone
    outside = check_value(0.9267, Sample(0.99, 0.0, 1), reference_images=300)
    assert outside.verdict == "not distinguishable" and "no seed-to-seed spread" in outside.note


def test_rule_constants():
    assert (stats.ALPHA, stats.BETA, stats.VALUE_LEVEL) == (0.05, 0.2, 0.95)
