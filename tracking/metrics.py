"""Per-epoch metrics: buffered and sent with ``log_batch`` every few seconds, with a local copy.

One ``log_metric`` call per value is one HTTP round trip (mlflow issue 5269); here a
500-epoch run makes ~10-20 requests. Every value is also appended to a local JSON-lines file
first, so if the server dies mid-run nothing is lost and the run can be re-synced later.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

MAX_PER_REQUEST = 1000  # MLflow's log_batch limit on metrics per call


class MetricLogger:
    def __init__(self, run_id: str | None, local_path: Path | None = None, flush_every_s: float = 10.0):
        self.run_id = run_id  # None: tracking off, only the local file is written
        self.local_path = local_path
        self.flush_every_s = flush_every_s
        self._buffer: list[Metric] = []
        self._last_flush = time.monotonic()
        self._warned = False
        self._client = MlflowClient() if run_id else None
        if local_path:
            local_path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, metrics: dict[str, float], step: int) -> None:
        ts = int(time.time() * 1000)
        if self.local_path:
            with open(self.local_path, "a") as f:
                f.write(json.dumps({"step": step, "timestamp": ts, **metrics}) + "\n")
        if self.run_id:
            self._buffer += [Metric(k, float(v), ts, step) for k, v in metrics.items()]
            if time.monotonic() - self._last_flush >= self.flush_every_s:
                self.flush()

    def flush(self) -> bool:
        """Send what is buffered; on failure keep it (and warn once) so a later flush retries."""
        self._last_flush = time.monotonic()
        while self._buffer and self._client:
            chunk = self._buffer[:MAX_PER_REQUEST]
            try:
                self._client.log_batch(self.run_id, metrics=chunk)
            except Exception as e:
                if not self._warned:
                    warnings.warn(
                        f"tracking server unreachable, metrics buffered and kept in {self.local_path} ({e})",
                        stacklevel=2,
                    )
                    self._warned = True
                return False
            del self._buffer[: len(chunk)]
        return True


def resync(run_id: str, local_path: Path) -> int:
    """Send a run's local metric file to the server (after it was down). Returns values sent."""
    client = MlflowClient()
    have = {
        (m.key, m.step) for key in client.get_run(run_id).data.metrics for m in client.get_metric_history(run_id, key)
    }
    todo = []
    for line in Path(local_path).read_text().splitlines():
        row = json.loads(line)
        step, ts = row.pop("step"), row.pop("timestamp")
        todo += [Metric(k, float(v), ts, step) for k, v in row.items() if (k, step) not in have]
    for i in range(0, len(todo), MAX_PER_REQUEST):
        client.log_batch(run_id, metrics=todo[i : i + MAX_PER_REQUEST])
    return len(todo)
