"""Reproduction report: claims file, verdict rules, data provenance, end-to-end run."""

from __future__ import annotations

import dataclasses
import json
import math

import mlflow
import pytest
from click.testing import CliRunner

from pipelines.cli import cli
from pipelines.data import load_dataset
from pipelines.parsing import ConfigError
from pipelines.reproduce import run as reproduce
from pipelines.reproduce.claims import CLAIMS_FILE, Claim, Ordering, load_claims
from pipelines.reproduce.report import DataUsed, Measured, document, judge, judge_ordering, markdown
from pipelines.reproduce.stats import Sample
from tests.conftest import real_data

CLAIMS = load_claims()
PARAM_CLAIMS = [c for c in CLAIMS.claims if c.metric == "num_params"]
REAL = DataUsed("real", "real files", "cifar100")
STAND_IN = DataUsed("stand-in", "synthetic", "cifar100")
SUBSET = DataUsed("real", "real copy", "cifar10", "real subset (10,000 train images)", "subset (10,000 train images)")


def test_claims_file_covers_every_notebook_experiment():
    assert set(CLAIMS.experiments) == {
        "lab2_cnn", "pooling", "mnist_arch", "cifar10_arch", "kernel", "depth", "custom", "residual", "keras",
    }  # fmt: skip
    assert len(CLAIMS.claims) >= 60
    assert CLAIMS.experiments["pooling"].classes == "0,33,43"  # the pooling report's classes, not lab 2's
    assert {c.metric for c in CLAIMS.claims} == {
        "test_accuracy", "train_accuracy", "num_params", "train_seconds", "inference_seconds",
    }  # fmt: skip


@pytest.mark.parametrize("claim", PARAM_CLAIMS, ids=lambda c: c.id)
def test_parameter_count_claims_match_exactly(claim):
    assert reproduce.count_params(CLAIMS.experiments[claim.experiment], claim.config) == int(claim.reference)


def test_ordering_claims_name_their_notebook_section_and_configs():
    by_id = {o.id: o for o in CLAIMS.orderings}
    assert {
        "pooling.max_most_accurate", "pooling.stride_fastest", "pooling.stride_overfits_most",
        "pooling.avg_less_accurate_than_max", "cifar10_arch.resnet_overfits", "cifar10_arch.regularisation_narrows_gap",
        "cifar10_arch.fc_does_not_overfit", "cifar10_arch.fc_stays_low", "kernel.accuracy_order",
        "mnist_arch.simple_cnn_above_fc", "mnist_arch.resnet_like_above_fc",
    } <= set(by_id)  # fmt: skip
    assert by_id["kernel.accuracy_order"].configs == ("k5", "k7", "k3", "combo_1x1_3x3")
    assert by_id["cifar10_arch.regularisation_narrows_gap"].pairs([]) == [("resnet_cifar", "resnet_cifar_reg")]
    for o in CLAIMS.orderings:
        assert "§" in o.source and o.statement, o.id
        assert o.comparable or o.why, o.id
    assert {o.experiment for o in CLAIMS.select("kernel").orderings} == {"kernel"}


@pytest.mark.parametrize(
    "entry, error",
    [
        ("kind: best, metric: test_accuracy, configs: [max]", "kind must be one of"),
        ("kind: greater, metric: test_accuracy, configs: [max, nope]", "unknown experiment or config"),
        ("kind: greater, metric: test_accuracy, configs: [max]", "wrong number of configs"),
    ],
)
def test_malformed_ordering_is_one_clear_error(tmp_path, entry, error):
    bad = tmp_path / "claims.yaml"
    bad.write_text(
        CLAIMS_FILE.read_text() + f"  - {{experiment: pooling, name: x, {entry}, source: s, statement: s}}\n"
    )
    with pytest.raises(ConfigError, match=error):
        load_claims(bad)


def test_select_and_bad_names():
    assert set(CLAIMS.select("pooling,keras").experiments) == {"pooling", "keras"}
    assert CLAIMS.select("all") is CLAIMS
    with pytest.raises(ConfigError, match="only must be one of"):
        CLAIMS.select("pooling,nope")


def test_malformed_claims_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "claims.yaml"
    bad.write_text(
        "experiments:\n  x: {notebook: s, dataset: cifar100, epochs: 1, quick_epochs: 1, hardware: T4,"
        " tolerance: 0.1, configs: {a: {model: no_such_model}}}\nclaims: []\n"
    )
    with pytest.raises(ConfigError, match="no_such_model"):
        load_claims(bad)


def _judge(claim, ours, data=REAL, scale="full"):
    return judge(
        claim, ours, data=data, scale=scale, tolerance=0.02, reference_epochs=500,
        our_epochs=500 if scale == "full" else 20, hardware=("Colab T4 GPU", "test CPU"),
    )  # fmt: skip


ACC = Claim("pooling", "max", "test_accuracy", 0.9267, "lab2.2", reference_test_images=300)


# Changed on purpose from the fixed 2-point tolerance: with 3 seeds of std 0.01 and the reference's
# 300 test images (binomial error 1.5 points) the ~95 % interval is ±4.05 points, so 0.95 and 0.89
# (formerly better / worse) are within noise; 0.97 and 0.88 are outside it.
@pytest.mark.parametrize(
    "mean, verdict",
    [(0.9267, "reproduced"), (0.9100, "reproduced"), (0.9500, "reproduced"), (0.8900, "reproduced"),
     (0.9700, "better"), (0.8800, "worse")],
)  # fmt: skip
def test_accuracy_verdicts_use_seed_spread_and_binomial_error(mean, verdict):
    row = _judge(ACC, Measured(mean, 0.01, 3))
    assert row.verdict == verdict
    assert row.extra["diff"] == pytest.approx(mean - 0.9267)
    assert row.extra["half_width"] == pytest.approx(0.0405, abs=5e-4)


def test_accuracy_with_one_seed_at_full_scale():
    assert _judge(ACC, Measured(0.93, 0.0, 1)).verdict == "reproduced"  # within the binomial error alone
    row = _judge(ACC, Measured(0.99, 0.0, 1))
    assert row.verdict == "not distinguishable" and "1 seed" in row.detail


def test_accuracies_on_a_subset_are_labelled_not_compared():
    claim = Claim("kernel", "k5", "test_accuracy", 0.5503, "§2.1", reference_test_images=10000)
    row = _judge(claim, Measured(0.50, 0.01, 3), data=SUBSET)
    assert row.verdict == "not comparable" and row.detail.startswith("subset (10,000 train images)")
    assert "diff" not in row.extra
    time = _judge(Claim("kernel", "k5", "train_seconds", 584.88, "§2.1"), Measured(40.0, 1.0, 3), data=SUBSET)
    assert time.verdict == "ratio" and "subset (10,000 train images)" in time.detail


def test_stand_in_and_quick_accuracies_are_never_compared():
    stand_in = _judge(ACC, Measured(0.99, 0.0, 1), data=STAND_IN)
    assert (stand_in.verdict, stand_in.stand_in) == ("not comparable", True)
    assert "diff" not in stand_in.extra
    quick = _judge(ACC, Measured(0.93, 0.0, 1), scale="quick")
    assert quick.verdict == "not comparable" and "quick scale: 20 of the notebook's 500 epochs" in quick.detail


def test_time_claims_are_ratios_per_epoch_naming_both_machines():
    claim = Claim("pooling", "max", "train_seconds", 98.37, "lab2.2")
    row = _judge(claim, Measured(4.0, 0.0, 1), scale="quick")  # 20 epochs in 4 s = 0.2 s/epoch
    assert row.verdict == "ratio"
    assert row.extra["ratio"] == pytest.approx(0.2 / (98.37 / 500))
    assert "Colab T4 GPU" in row.detail and "test CPU" in row.detail


def test_parameter_mismatch_and_not_comparable_claims():
    claim = Claim("pooling", "max", "num_params", 33219, "spec")
    assert _judge(claim, Measured(33219, 0, 1)).verdict == "reproduced"
    assert _judge(claim, Measured(33220, 0, 1)).verdict == "mismatch"
    odd = Claim("custom", "custom_layers", "test_accuracy", 0.8876, "s", comparable=False, why="data set unknown")
    row = _judge(odd, Measured(0.5, 0, 1))
    assert (row.verdict, row.detail) == ("not comparable", "data set unknown")
    assert _judge(ACC, None).verdict == "not run"


def test_provenance_flags_synthetic_and_digits_and_accepts_known_real_copies(tmp_path):
    from pipelines.data.cifar100 import write_synthetic

    write_synthetic(tmp_path, 5, 5)
    synthetic = reproduce.provenance(load_dataset("cifar100", tmp_path), "cifar100", CLAIMS.real_copies)
    assert synthetic.kind == "stand-in" and "unverified" in synthetic.description
    digits = reproduce.provenance(load_dataset("digits"), "mnist", CLAIMS.real_copies)
    assert digits.kind == "stand-in" and "digits instead of mnist" in digits.description


def test_provenance_of_the_real_cifar10_subset():
    root = real_data("cifar-10-batches-py")
    used = reproduce.provenance(load_dataset("cifar10", root), "cifar10", CLAIMS.real_copies)
    assert used.kind == "real" and used.subset == "subset (10,000 train images)"
    assert used.label == "real subset (10,000 train images)" and "known real copy" in used.description


def test_ordering_rows_in_the_report(tmp_path):
    best = Ordering("pooling", "max_best", "highest", "test_accuracy", ("max",), "lab2.2 §Вывод", "max best")
    samples = {"stride": Sample(0.85, 0.005, 3), "max": Sample(0.93, 0.005, 3), "avg": Sample(0.925, 0.005, 3)}
    row = judge_ordering(best, samples, data=REAL, scale="full", configs=list(samples))
    assert row.verdict == "not distinguishable" and "with 3 seed(s)" in row.detail
    md = markdown([], {"title": "t"}, {}, tmp_path, [row])
    line = next(x for x in md.splitlines() if x.startswith("| pooling.max_best"))
    assert "max 0.9300 ± 0.0050 (n=3)" in line and "not distinguishable" in line
    doc = document([], {"title": "t"}, [row])
    assert doc["orderings"][0]["pairs"][0]["verdict"] == "reproduced"
    assert doc["ordering_counts"] == {"not distinguishable": 1}


def test_provenance_of_the_real_files():
    root = real_data("cifar-100-python")
    assert reproduce.provenance(load_dataset("cifar100", root), "cifar100", CLAIMS.real_copies).kind == "real"
    mnist = reproduce.provenance(load_dataset("mnist", root), "mnist", CLAIMS.real_copies)
    assert mnist.kind == "real" and "official" in mnist.description


def test_bad_options_fail_in_one_line_before_any_run(tracking):
    before = len(mlflow.search_runs(search_all_experiments=True))
    for args in (["--only", "nope"], ["--scale", "huge"], ["--stand-in", "mnist"], ["--seeds", "a"]):
        result = CliRunner().invoke(cli, ["reproduce", *args])
        assert result.exit_code == 2, (args, result.output)
        assert len(result.output.strip().splitlines()) == 1, result.output
    assert len(mlflow.search_runs(search_all_experiments=True)) == before


def test_reproduce_quick_pooling_end_to_end(tracking, tmp_path, capsys):
    """`reproduce --scale quick --only pooling` on synthetic CIFAR-100 against the test server."""
    from pipelines.data.cifar100 import write_synthetic

    data = tmp_path / "data"
    write_synthetic(data, per_class_train=20, per_class_test=8, classes=[0, 33, 43])
    fast = dataclasses.replace(CLAIMS.experiments["pooling"], quick_epochs=2)
    claims = dataclasses.replace(CLAIMS, experiments={**CLAIMS.experiments, "pooling": fast})
    out = tmp_path / "report"
    r = reproduce.run("pooling", "quick", "auto", str(data), "digits", str(out), "repro-test", claims=claims)

    rows = {row["id"]: row for row in json.loads((out / "report.json").read_text())["rows"]}
    assert set(rows) == {c.id for c in CLAIMS.claims if c.experiment == "pooling"}
    for config in ("stride", "max", "avg"):
        assert rows[f"pooling.{config}.num_params"]["verdict"] == "reproduced"
        acc = rows[f"pooling.{config}.test_accuracy"]
        assert acc["verdict"] == "not comparable" and acc["stand_in"] is True
        assert 0.0 <= acc["ours"]["mean"] <= 1.0 and acc["ours"]["n"] == 1
        assert "unverified" in acc["data"]["description"] and acc["data"]["label"] == "unverified cifar100 files"
        assert rows[f"pooling.{config}.train_seconds"]["verdict"] == "not comparable"
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    assert "QUICK SCALE" in md and "QUICK SCALE" in html
    flagged = [line for line in md.splitlines() if line.startswith("| pooling.") and "STAND-IN" in line]
    flagged = [line for line in flagged if line.split("|")[1].strip() in rows]  # value claims, not orderings
    assert html.count("class='standin'") >= 8
    assert len(flagged) == 8  # 3 test acc + 2 train acc + 3 train time rows; not the 3 parameter counts
    assert "data:image/png;base64," in html and "src='figures" not in html  # self-contained
    assert "| pooling.max.num_params | SPEC S1" in md
    doc = json.loads((out / "report.json").read_text())
    ordering_ids = {o["id"] for o in doc["orderings"]}
    assert "pooling.max_most_accurate" in ordering_ids and len(r.orderings) == len(ordering_ids)
    assert "Orderings (the notebooks' conclusions)" in md and "Orderings (the notebooks' conclusions)" in html

    client = mlflow.MlflowClient()
    parent = client.get_run(r.run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["step"] == "reproduce"
    assert parent.data.metrics["claims_reproduced"] == 3
    assert parent.data.metrics["orderings"] == len(ordering_ids)
    assert {a.path for a in client.list_artifacts(r.run_id, "report")} == {
        "report/report.md", "report/report.html", "report/report.json",
    }  # fmt: skip
    study = client.get_run(r.study_runs["pooling"])
    assert study.data.tags["mlflow.parentRunId"] == r.run_id
    assert study.info.experiment_id == parent.info.experiment_id
    assert study.data.metrics["trials"] == 3 and study.data.metrics["trials_reused"] == 0

    again = reproduce.run("pooling", "quick", "auto", str(data), "digits", str(out), "repro-test", claims=claims)
    assert client.get_run(again.study_runs["pooling"]).data.metrics["trials_reused"] == 3
    assert [row.ours.mean for row in again.rows] == [row.ours.mean for row in r.rows]
    capsys.readouterr()
    args = ("pooling", "quick", "auto", str(data), "digits", str(out), "repro-test")
    planned = reproduce.run(*args, claims=claims, plan=True)
    assert planned is None and "3 of 3 trials reused; estimate 0.0 s" in capsys.readouterr().err


def test_orderings_judged_from_a_study_summary(tmp_path):
    """Per-seed trial metrics -> the study summary (as `study` builds it) -> ordering verdicts."""
    import pandas as pd

    from pipelines.comparison import METRIC_KEYS, summarize
    from pipelines.data.cifar100 import write_synthetic
    from pipelines.reproduce.report import judge_orderings

    write_synthetic(tmp_path, per_class_train=1, per_class_test=100, classes=[0, 33, 43])
    ds = load_dataset("cifar100", tmp_path, [0, 33, 43])  # 300 test images, as the notebook's
    per_seed = {  # config -> (test accuracy, train accuracy, train seconds) per seed
        "stride": [(0.86, 1.0, 10.0), (0.85, 1.0, 10.5), (0.87, 1.0, 9.8)],
        "max": [(0.93, 1.0, 30.0), (0.92, 1.0, 31.0), (0.935, 1.0, 29.5)],
        "avg": [(0.925, 0.99, 30.5), (0.93, 0.99, 30.0), (0.92, 0.99, 31.0)],
    }
    runs = []
    for config, values in per_seed.items():
        for seed, (test, train, secs) in enumerate(values):
            metrics = dict.fromkeys(METRIC_KEYS, float("nan"))
            metrics.update(test_accuracy=test, train_accuracy=train, overfit_gap=train - test, train_seconds=secs)
            runs.append({"config": config, "seed": str(seed), "run_id": f"{config}{seed}", "name": config, **metrics})
    book = CLAIMS.select("pooling")
    rows = {r.ordering.id: r for r in judge_orderings(book, {"pooling": summarize(pd.DataFrame(runs))},
                                                      {"pooling": REAL}, "full", {"pooling": ds})}  # fmt: skip
    assert rows["pooling.stride_fastest"].verdict == "reproduced"
    assert rows["pooling.stride_overfits_most"].verdict == "reproduced"
    assert rows["pooling.max_most_accurate"].verdict == "not distinguishable"  # max vs avg: 0.3 points apart
    assert math.isinf(rows["pooling.max_most_accurate"].seeds_needed)  # below what 300 images can resolve
    assert rows["pooling.avg_more_stable"].verdict == "not comparable"
    assert rows["pooling.max_most_accurate"].samples["max"].n == 3


def _synthetic_pooling_data(tmp_path):
    from pipelines.data.cifar100 import write_synthetic

    data = tmp_path / "data"
    write_synthetic(data, per_class_train=20, per_class_test=8, classes=[0, 33, 43])
    return data


def test_plan_prints_each_configuration_with_an_estimate_and_creates_no_run(tracking, tmp_path):
    data = _synthetic_pooling_data(tmp_path)
    before = len(mlflow.search_runs(search_all_experiments=True))
    args = ["reproduce", "--only", "pooling", "--scale", "quick", "--data-dir", str(data), "--plan", "true"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    text = result.stderr
    assert "pooling: 3 configurations x 1 seed(s)" in text and "0 of 3 trials reused" in text
    assert "data stand-in" in text and "total estimate" in text
    for config in ("stride", "max", "avg"):
        line = next(x for x in text.splitlines() if x.strip().startswith(f"{config}:"))
        value = float(line.split(":")[1].split()[0])
        assert value > 0 and math.isfinite(value), line
    assert len(mlflow.search_runs(search_all_experiments=True)) == before
    assert "reproduce run" not in result.stdout


def test_max_minutes_too_small_leaves_every_experiment_out(tracking, tmp_path):
    data = _synthetic_pooling_data(tmp_path)
    out = tmp_path / "report"
    r = reproduce.run("pooling", "quick", "auto", str(data), "digits", str(out), "repro-budget", max_minutes=0.0001)
    doc = json.loads((out / "report.json").read_text())
    for row in doc["rows"]:
        expected = "reproduced" if row["metric"] == "num_params" else "not run (time)"  # counts need no training
        assert row["verdict"] == expected, row["id"]
    assert doc["orderings"] and all(o["verdict"] == "not run (time)" for o in doc["orderings"])
    assert r.counts["not run (time)"] == sum(c.metric != "num_params" for c in CLAIMS.select("pooling").claims)
    assert r.study_runs == {}
    children = mlflow.search_runs(experiment_names=["repro-budget"], filter_string="tags.step != 'reproduce'")
    assert children.empty  # no study, no trial: only the parent run with its report
    assert "not run (time)" in (out / "report.md").read_text() and "notruntime" in (out / "report.html").read_text()
    parent = mlflow.MlflowClient().get_run(r.run_id)
    assert parent.data.metrics["claims_not_run_time"] == r.counts["not run (time)"]


def test_estimate_is_positive_and_finite_for_every_model_of_an_experiment():
    import numpy as np

    from pipelines.data import Dataset
    from pipelines.reproduce.claims import IMAGE_SHAPES
    from pipelines.reproduce.plan import trial_seconds
    from pipelines.study import Variant, plan_study

    exp = CLAIMS.experiments["mnist_arch"]
    shape = IMAGE_SHAPES[exp.dataset]
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (256, *shape), dtype=np.uint8)
    y = np.arange(256) % 10
    ds = Dataset("mnist", x, y, x[:64], y[:64], list(range(10)), [str(i) for i in range(10)], (0.5,), (0.25,), "test")
    variants = [Variant(label, *exp.variant_options(label)) for label in exp.configs]
    plan = plan_study("mnist_arch", seeds="0", epochs="1", dataset="mnist", variants=variants)
    assert {s.train_cfg.model for s in plan.trials} == {"fcnet", "simple_cnn", "resnet_like"}
    for spec in plan.trials:
        seconds = trial_seconds(spec, ds, 1)
        assert seconds > 0 and math.isfinite(seconds), spec.label
