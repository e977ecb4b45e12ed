"""Analyses of trained models, each a run of its own: landscape, gradients, features, invariance."""

from __future__ import annotations

import click

from pipelines.cli.app import cli, entry_point, experiment_option
from pipelines.config import data_config_from, train_config_from
from pipelines.params import click_params, param, parsed


@cli.command()
@click_params("landscape")
@experiment_option
@entry_point
def landscape(model, experiment, **raw):
    """Loss landscape (1-D curve, 2-D contour, 3-D surface) of a trained model on its test split."""
    from pipelines.analysis import landscape_run

    result = landscape_run.landscape(model, **parsed("landscape", **raw), experiment=experiment or None)
    rid, m = result.run_id, result.metrics
    click.echo(
        f"landscape run {rid}: loss_center {m['loss_center']:.4f}, sharpness {m.get('sharpness', float('nan')):.4f}, "
        f"{m['grid_points']} grid points in {m['grid_seconds']:.1f} s ({m['points_per_second']:.1f}/s)"
    )


@cli.command()
@click_params("gradients")
@experiment_option
@entry_point
def gradients(source, experiment, **raw):
    """Train with per-layer gradient statistics per epoch (gradient flow); flags vanishing/exploding layers."""
    from pipelines.analysis import gradient_flow
    from pipelines.analysis.source import resolve_train_run
    from pipelines.train import configs_from_run

    if source:
        source = resolve_train_run(source)
        data_cfg, cfg = configs_from_run(source)
        if (epochs := param("epochs", "gradients").parse(raw["epochs"])) is not None:
            cfg = cfg.with_recipe(epochs=epochs, raw={"epochs": raw["epochs"]})
    else:
        data_cfg, cfg = data_config_from(raw), train_config_from(raw)
    result = gradient_flow.gradients(data_cfg, cfg, source or None, experiment or None)
    rid, flags = result.run_id, result.flags
    click.echo(f"gradients run {rid}: " + "; ".join(f"{k} {','.join(v) or 'none'}" for k, v in flags.items()))


@cli.command()
@click_params("features")
@experiment_option
@entry_point
def features(model, n_images, max_maps, experiment):
    """First-layer filters and activations, and the feature maps after every conv layer, as image grids."""
    from pipelines.analysis import feature_maps

    v = parsed("features", n_images=n_images, max_maps=max_maps)
    result = feature_maps.features(model, v["n_images"], v["max_maps"], experiment or None)
    rid, m = result.run_id, result.metrics
    click.echo(f"features run {rid}: {int(m['conv_layers'])} conv layers")


@cli.command()
@click_params("invariance")
@experiment_option
@entry_point
def invariance(fc_model, cnn_model, max_shift, experiment):
    """Test accuracy and prediction agreement of an FC model and a CNN under horizontal/vertical shifts."""
    from pipelines.analysis import invariance as invariance_run

    shift = param("max_shift", "invariance").parse(max_shift)
    result = invariance_run.invariance(fc_model, cnn_model, shift, experiment or None)
    rid, df = result.run_id, result.table
    last = df[df["shift"] == df["shift"].max()]
    click.echo(
        f"invariance run {rid}: at the largest shift "
        + ", ".join(f"{r.model} {r.axis} acc {r.accuracy:.3f} agree {r.agreement:.3f}" for r in last.itertuples())
    )
