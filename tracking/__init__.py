"""Everything that talks to MLflow: run lifecycle, metric batching, artifacts, registry, server.

Nothing outside this package imports mlflow's client API, so an MLflow upgrade touches one
folder and the pipeline code reads as plain PyTorch.
"""

from tracking.errors import RunKilled, TrackingError
from tracking.runs import active_run_id, configure, experiment_id_for, tracked_run

__all__ = ["RunKilled", "TrackingError", "active_run_id", "configure", "experiment_id_for", "tracked_run"]
