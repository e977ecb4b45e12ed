"""Studies and compare: the pooling study end to end on digits, resume, champion, compare."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from pipelines.parsing import ConfigError
from tests.conftest import module_tracking

# ---- plans: every parameter checked before any run ----


def test_study_table_names_every_notebook_comparison():
    from models import list_models
    from pipelines.study import STUDIES, make_train_cfg

    assert set(STUDIES) == {"pooling", "mnist_arch", "cifar10_arch", "kernel", "depth", "custom", "residual", "keras"}
    for name, study in STUDIES.items():
        assert len(study.variants) >= 2, name
        for v in study.variants:
            assert v.model in list_models()
            make_train_cfg(v.model, **v.options)  # every option is a valid parameter
    assert [v.options["pooling"] for v in STUDIES["pooling"].variants] == ["stride", "max", "avg"]


def test_plan_resolves_trials_and_scale():
    from pipelines.study import QUICK_EPOCHS, plan_study

    plan = plan_study("pooling", seeds="0,1", scale="quick", dataset="digits")
    assert [t.run_name for t in plan.trials] == ["stride-s0", "stride-s1", "max-s0", "max-s1", "avg-s0", "avg-s1"]
    assert {t.train_cfg.recipe()["epochs"] for t in plan.trials} == {QUICK_EPOCHS}
    assert plan.trials[1].train_cfg.seed == 1 and plan.trials[2].train_cfg.pooling == "max"
    assert plan_study("pooling", seeds="3").trials[0].train_cfg.recipe()["epochs"] == 500  # the seed's epochs
    assert plan_study("pooling").data_cfg.dataset == "cifar100"

    adhoc = plan_study("mine", configs="fcnet;simple_cnn:lr=0.01,optimizer=sgd", seeds="0", epochs="3")
    assert adhoc.data_cfg.dataset == "mnist"  # the first model's data set
    assert [t.label for t in adhoc.trials] == ["fcnet", "simple_cnn:lr=0.01,optimizer=sgd"]
    assert adhoc.trials[1].train_cfg.recipe()["lr"] == 0.01 and adhoc.trials[1].train_cfg.recipe()["epochs"] == 3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "nope"}, "study must be one of pooling, mnist_arch, cifar10_arch, kernel"),
        ({"name": "pooling", "seeds": "0,0"}, "seeds must not repeat"),
        ({"name": "pooling", "seeds": "a"}, "seeds must be comma-separated integers"),
        ({"name": "pooling", "scale": "huge"}, "scale must be one of full, quick"),
        ({"name": "x", "configs": "nomodel"}, "configs model must be one of"),
        ({"name": "x", "configs": "fcnet:lr=abc"}, "lr must be a number"),
        ({"name": "x", "configs": "fcnet:colour=red"}, "configs: 'colour=red' must be key=value with key one of"),
        ({"name": "pooling", "dataset": "imagenet"}, "dataset must be one of"),
    ],
)
def test_bad_study_parameters_are_one_line_errors(kwargs, message):
    from pipelines.study import plan_study

    with pytest.raises(ConfigError, match=message):
        plan_study(**kwargs)


def test_cli_bad_study_name_fails_before_any_run(tracking):
    from pipelines.cli import cli

    result = CliRunner().invoke(cli, ["study", "no_such_study", "--experiment", "study-bad"])
    assert result.exit_code == 2
    assert "error: study must be one of pooling, mnist_arch" in result.output
    assert MlflowClient().get_experiment_by_name("study-bad") is None
    assert MlflowClient().get_experiment_by_name("study-no_such_study") is None


def test_rank_ties_go_to_the_faster_configuration():
    import pandas as pd

    from pipelines.comparison import summarize
    from pipelines.study import select_champion

    df = pd.DataFrame(
        [
            {"config": "slow", "seed": "0", "run_id": "a", "name": "a", "test_accuracy": 0.9, "train_seconds": 9.0},
            {"config": "fast", "seed": "0", "run_id": "b", "name": "b", "test_accuracy": 0.9, "train_seconds": 3.0},
            {"config": "bad", "seed": "0", "run_id": "c", "name": "c", "test_accuracy": 0.5, "train_seconds": 1.0},
        ]
    )
    assert select_champion(summarize(df)) == ("fast", "slow")


# ---- the pooling study end to end on digits (one study, shared by the tests below) ----


@pytest.fixture(scope="module")
def pooling_study(mlflow_server, tmp_path_factory):
    """Crash after two children, resume (same parent, two reused), then an idempotent third run."""
    import pipelines.study as study

    with module_tracking(mlflow_server, tmp_path_factory.mktemp("study-ckpt")) as mp:
        plan = study.plan_study("pooling", seeds="0,1", epochs="1", dataset="digits")

        real_run_trial, calls = study.run_trial, []

        def crash_on_third(*args, **kwargs):
            calls.append(args[0].run_name)
            if len(calls) == 3:
                raise RuntimeError("simulated crash")
            return real_run_trial(*args, **kwargs)

        mp.setattr(study, "run_trial", crash_on_third)
        with pytest.raises(RuntimeError, match="simulated crash"):
            study.run_study(plan, registered_model_name="digits-pooling-test")
        mp.setattr(study, "run_trial", real_run_trial)
        resumed = study.run_study(plan, registered_model_name="digits-pooling-test")
        again = study.run_study(plan, registered_model_name="digits-pooling-test")
        yield {"plan": plan, "resumed": resumed, "again": again}


def _trials(client, exp_id, parent_id):
    return client.search_runs([exp_id], f"tags.mlflow.parentRunId = '{parent_id}' and tags.step = 'trial'")


def test_pooling_study_parent_children_table_and_figures(tracking, pooling_study):
    client = MlflowClient()
    r = pooling_study["resumed"]
    parent = client.get_run(r.run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["step"] == "study"
    assert parent.data.params["study.seeds"] == "0,1" and parent.data.params["study.name"] == "pooling"
    trials = _trials(client, r.experiment_id, r.run_id)
    assert len(trials) == 6 and all(t.info.status == "FINISHED" for t in trials)
    for t in trials:  # the same metric names as `main`, in every child
        for key in ("test_accuracy", "test_macro_f1", "train_accuracy", "overfit_gap", "train_seconds"):
            assert key in t.data.metrics, key
        for key in ("seconds_per_epoch", "inference_ms_per_image", "num_params", "test_acc"):
            assert key in t.data.metrics, key
        assert [m.step for m in client.get_metric_history(t.info.run_id, "test_acc")] == [1]
        assert t.data.tags["params_hash"] and t.data.tags["config"] in ("stride", "max", "avg")
    summary = r.summary
    assert list(summary["n"]) == [2, 2, 2] and set(summary["config"]) == {"stride", "max", "avg"}
    assert {"test_accuracy_mean", "test_accuracy_std", "overfit_gap_mean", "num_params_mean"} <= set(summary.columns)
    files = {f.path for d in ("comparison", "figures") for f in client.list_artifacts(r.run_id, d)}
    assert {
        "comparison/summary.csv",
        "comparison/summary.json",
        "comparison/runs.csv",
        "figures/accuracy_curves.png",
        "figures/accuracy_vs_time.png",
        "figures/confusion_matrices.png",
    } <= files
    note = parent.data.tags["mlflow.note.content"]
    assert "Verdict: champion" in note and "stride vs max pooling vs average pooling" in note
    assert "test acc" in r.text and "±" in r.text


def test_crashed_study_resumes_and_rerun_is_idempotent(tracking, pooling_study):
    client = MlflowClient()
    resumed, again = pooling_study["resumed"], pooling_study["again"]
    assert sum(t.reused for t in resumed.trials) == 2  # the two finished before the crash
    assert all(t.reused for t in again.trials)
    assert again.run_id == resumed.run_id  # same study spec: the same parent re-opened
    assert [t.run_id for t in again.trials] == [t.run_id for t in resumed.trials]
    # Only the six children ever trained: the crash left none half-done and nothing ran twice.
    exp = resumed.experiment_id
    all_trials = client.search_runs([exp], "tags.step = 'trial'")
    assert len(all_trials) == 6
    assert not client.search_runs([exp], "attributes.status = 'RUNNING'")
    assert again.registered == resumed.registered  # no new model versions on a re-run


def test_champion_and_challenger_registered_by_the_rule(tracking, pooling_study):
    client = MlflowClient()
    r = pooling_study["resumed"]
    ranked = list(r.summary["config"])
    champion = client.get_model_version_by_alias("digits-pooling-test", "champion")
    challenger = client.get_model_version_by_alias("digits-pooling-test", "challenger")
    assert champion.tags["config"] == ranked[0] == r.champion
    assert challenger.tags["config"] == ranked[1] == r.challenger
    assert champion.tags["study"] == "pooling"
    means = dict(zip(r.summary["config"], r.summary["test_accuracy_mean"]))
    assert means[ranked[0]] >= means[ranked[1]] >= means[ranked[2]]
    assert len(client.search_model_versions("name = 'digits-pooling-test'")) == 2


def test_exporting_the_runner_up_never_moves_champion(tracking, pooling_study):
    """Ranked by mean over seeds, the runner-up's best seed may beat the champion's: champion stays on the first."""
    from pipelines.comparison import runs_frame
    from pipelines.data import load_dataset
    from pipelines.study import _best_run, register
    from tracking.queries import get_run_record

    r = pooling_study["resumed"]
    df = runs_frame([get_run_record(t.run_id) for t in r.trials])
    best = {c: _best_run(df, c) for c in df["config"].unique()}
    worst_best, top_best = min(best, key=lambda c: best[c][1]), max(best, key=lambda c: best[c][1])
    assert best[top_best][1] > best[worst_best][1]  # one epoch on digits: the seeds' best runs differ
    # A ranking (as if by mean over seeds) whose first configuration has the weaker best seed.
    summary = r.summary.set_index("config").loc[[worst_best, top_best]].reset_index()
    registered = register(df, summary, load_dataset("digits"), "digits-pooling-ranked", "pooling")
    client = MlflowClient()
    champion = client.get_model_version_by_alias("digits-pooling-ranked", "champion")
    challenger = client.get_model_version_by_alias("digits-pooling-ranked", "challenger")
    assert champion.tags["train_run_id"] == best[worst_best][0] and champion.tags["config"] == worst_best
    assert challenger.tags["train_run_id"] == best[top_best][0] and challenger.tags["config"] == top_best
    assert champion.version != challenger.version == registered["challenger"]


def test_compare_by_experiment_and_by_run_ids(tracking, pooling_study):
    from pipelines.cli import cli

    r = pooling_study["resumed"]
    ids = [t.run_id for t in r.trials]
    by_exp = CliRunner().invoke(cli, ["compare", "study-pooling"])
    assert by_exp.exit_code == 0, by_exp.output
    assert "compare run" in by_exp.output and "6 runs" in by_exp.output
    for config in ("stride", "max", "avg"):
        assert config in by_exp.output
    by_ids = CliRunner().invoke(cli, ["compare", ",".join(ids[:4]), "--no-log"])
    assert by_ids.exit_code == 0, by_ids.output
    assert "compare run" not in by_ids.output and "avg" not in by_ids.output  # 4 runs: stride and max only
    parent = CliRunner().invoke(cli, ["compare", r.run_id, "--no-log"])  # a study parent expands to its trials
    assert parent.exit_code == 0 and "avg" in parent.output

    client = MlflowClient()
    (cmp_run,) = client.search_runs([r.experiment_id], "tags.step = 'compare'")
    assert cmp_run.info.status == "FINISHED"
    files = {f.path for f in client.list_artifacts(cmp_run.info.run_id, "comparison")}
    assert "comparison/summary.csv" in files

    bad = CliRunner().invoke(cli, ["compare", "no-such-experiment"])
    assert bad.exit_code == 2 and "neither a run id nor an experiment name" in bad.output


@pytest.mark.slow
def test_study_on_ray_executor_and_rerun_reuses(tracking):
    """Children as Ray Tune trials (one Ray session for both runs): same table; the re-run trains nothing."""
    from pipelines.ray_trials import ray_runtime
    from pipelines.study import plan_study, run_study

    configs = "pooling_cnn:pooling=stride;pooling_cnn:pooling=max"
    plan = plan_study("ray_pool", configs=configs, seeds="0", epochs="1", dataset="digits")
    with ray_runtime(num_cpus=2):
        first = run_study(plan, executor="ray", max_concurrent=2)
        again = run_study(plan, executor="ray", max_concurrent=2)
    client = MlflowClient()
    trials = _trials(client, first.experiment_id, first.run_id)
    assert len(trials) == 2 and all(t.info.status == "FINISHED" for t in trials)
    assert {t.data.tags["config"] for t in trials} == set(first.summary["config"])
    assert not any(t.reused for t in first.trials) and all(t.reused for t in again.trials)
    assert again.run_id == first.run_id and not first.registered
    assert not client.search_runs([first.experiment_id], "attributes.status = 'RUNNING'")
