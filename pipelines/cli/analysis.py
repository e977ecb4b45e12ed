"""Analyses of trained models, each a run of its own: landscape, gradients, features, invariance."""

from __future__ import annotations

import click

from pipelines.cli.app import cli, entry_point, experiment_option
from pipelines.config import (
    AUTO,
    data_config_from,
    parse_choice,
    parse_device,
    parse_float,
    parse_int,
    train_config_from,
)
from pipelines.params import click_params


@cli.command()
@click_params("landscape")
@experiment_option
@entry_point
def landscape(model, mode, seed1, seed2, step1d, step2d, limit, max_points, device, experiment):
    """Loss landscape (1-D curve, 2-D contour, 3-D surface) of a trained model on its test split."""
    from pipelines.analysis import runs

    cap = None if str(max_points).strip().lower() in ("", "none", "0") else parse_int("max_points", max_points, 3)
    result = runs.landscape(
        model,
        parse_choice("mode", mode, ("seed", "li")),
        parse_int("seed1", seed1, 0),
        parse_int("seed2", seed2, 0),
        parse_float("step1d", step1d),
        parse_float("step2d", step2d),
        parse_float("limit", limit),
        cap,
        parse_device(device),
        experiment or None,
    )
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
    from pipelines.analysis import runs
    from pipelines.train import configs_from_run

    if source:
        source = runs.resolve_train_run(source)
        data_cfg, cfg = configs_from_run(source)
        if str(raw["epochs"]).strip().lower() != AUTO:
            cfg.epochs = parse_int("epochs", raw["epochs"])
    else:
        data_cfg, cfg = data_config_from(raw), train_config_from(raw)
    result = runs.gradients(data_cfg, cfg, source or None, experiment or None)
    rid, flags = result.run_id, result.flags
    click.echo(f"gradients run {rid}: " + "; ".join(f"{k} {','.join(v) or 'none'}" for k, v in flags.items()))


@cli.command()
@click_params("features")
@experiment_option
@entry_point
def features(model, n_images, max_maps, experiment):
    """First-layer filters and activations, and the feature maps after every conv layer, as image grids."""
    from pipelines.analysis import runs

    result = runs.features(model, parse_int("n_images", n_images), parse_int("max_maps", max_maps), experiment or None)
    rid, m = result.run_id, result.metrics
    click.echo(f"features run {rid}: {int(m['conv_layers'])} conv layers")


@cli.command()
@click_params("invariance")
@experiment_option
@entry_point
def invariance(fc_model, cnn_model, max_shift, experiment):
    """Test accuracy and prediction agreement of an FC model and a CNN under horizontal/vertical shifts."""
    from pipelines.analysis import runs

    result = runs.invariance(fc_model, cnn_model, parse_int("max_shift", max_shift, 0), experiment or None)
    rid, df = result.run_id, result.table
    last = df[df["shift"] == df["shift"].max()]
    click.echo(
        f"invariance run {rid}: at the largest shift "
        + ", ".join(f"{r.model} {r.axis} acc {r.accuracy:.3f} agree {r.agreement:.3f}" for r in last.itertuples())
    )
