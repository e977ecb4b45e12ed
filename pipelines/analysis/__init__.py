"""Analyses of trained models (loss landscape, ...): pure computation, no MLflow."""
