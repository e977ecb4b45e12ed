"""``python -m pipelines``: runs the command line of ``pipelines.cli``."""

if __name__ == "__main__":
    from pipelines.cli import cli

    cli()
