"""Comparisons of several runs: study, compare, sweep, reproduce."""

from __future__ import annotations

import click

from pipelines.cli.app import cli, entry_point, experiment_option
from pipelines.params import click_params, param, parsed


@cli.command()
@click_params("study")
@experiment_option
@entry_point
def study(name, configs, seeds, scale, epochs, dataset, data_dir, classes, device, precision, experiment, **kw):
    """A reference notebook's comparison: a child run per (configuration, seed), table + figures, champion registered.

    NAME: pooling, mnist_arch, cifar10_arch, kernel, depth, custom, residual, keras (or any name with --configs).
    Re-running skips children that already FINISHED with the same params.
    """
    from pipelines import study as step

    plan = step.plan_study(name, configs, seeds, scale, epochs, dataset, data_dir, classes, device, precision)
    r = step.run_study(
        plan,
        experiment=experiment or None,
        registered_model_name=kw["registered_model_name"],
        executor=kw["executor"],
        batch_seeds=kw["batch_seeds"],
        ray_address=kw["ray_address"] or None,
        max_concurrent=param("max_concurrent", "study").parse(kw["max_concurrent"]),
    )
    click.echo(r.text)
    reused = sum(t.reused for t in r.trials)
    click.echo(
        f"study run {r.run_id}: champion {r.champion}"
        + (f", challenger {r.challenger}" if r.challenger else "")
        + (f"; registered {', '.join(f'{k}={v}' for k, v in r.registered.items())}" if r.registered else "")
        + f"; {len(r.trials)} trials ({reused} reused), {r.seconds:.1f} s"
    )


def _refs(raw: tuple[str, ...]) -> list[str]:
    return [p for item in raw for p in item.replace(",", " ").split() if p]


@cli.command()
@click_params("compare")
@click.option("--log/--no-log", default=True, show_default=True, help="Also record table and figures as a run.")
@experiment_option
@entry_point
def compare(runs, log, experiment):
    """Compare finished runs: RUNS are run ids, study/sweep parent ids or experiment names."""
    from pipelines import compare as step

    r = step.run(_refs(runs), experiment=experiment or None, log=log)
    click.echo(r.text)
    if r.run_id:
        click.echo(f"compare run {r.run_id}: {len(r.run_ids)} runs")


@cli.command()
@click_params("sweep")
@experiment_option
@entry_point
def sweep(executor, ray_address, max_concurrent, experiment, **kw):
    """Hyper-parameter sweep (lr, batch size, weight decay): Optuna TPE + ASHA, trials on Ray or in-process."""
    from pipelines import sweep as step

    plan = step.plan_sweep(**kw)
    r = step.run_sweep(
        plan,
        experiment=experiment or None,
        executor=executor,
        ray_address=ray_address or None,
        max_concurrent=param("max_concurrent", "sweep").parse(max_concurrent),
    )
    click.echo(r.text)
    best = r.best
    click.echo(
        f"sweep run {r.run_id}: "
        + (
            f"best {best['config']} val_acc {best['val_acc']:.4f} test_accuracy {best['test_accuracy']:.4f}"
            if best
            else "no trial completed"
        )
        + f", {r.seconds:.1f} s"
    )


@cli.command()
@click_params("reproduce")
@experiment_option
@entry_point
def reproduce(only, scale, seeds, data_dir, stand_in, out, device, precision, plan, max_minutes, experiment):
    """Re-run the reference notebooks' experiments and write a report: each claim beside our value, with a verdict.

    Parameter counts are checked without training; finished trials with the same params are reused.
    The plan (trials, reuse, estimated time) is printed first; --plan true stops there.
    """
    from pipelines.reproduce import run as step

    r = step.run(
        only,
        scale,
        seeds,
        data_dir,
        stand_in,
        out,
        experiment or None,
        device,
        precision,
        **parsed("reproduce", plan=plan, max_minutes=max_minutes),
    )
    if r is None:
        return
    click.echo(f"reproduce run {r.run_id}: " + ", ".join(f"{k} {v}" for k, v in r.counts.items()))
    click.echo(f"report: {r.out_dir / 'report.html'} and report.md")
