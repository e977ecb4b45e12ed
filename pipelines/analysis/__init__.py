"""Analyses of trained models, each a run of its own; ``landscape`` is the computation, with no MLflow."""
