"""Per-epoch metrics: buffered and sent with ``log_batch`` every few seconds, with a local copy.

One ``log_metric`` call per value is one HTTP round trip to the tracking server; here a
500-epoch run makes ~10-20 requests. Every value is also appended to a local JSON-lines file
first, so if the server dies mid-run nothing is lost and the run can be re-synced later.

The periodic sends run on a background thread: the server's insert of a batch takes a noticeable
fraction of a second (bench/README.md, tracking overhead), time the training loop would otherwise stand still.
``flush()`` is synchronous: it waits for a send in flight, then sends the rest.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import mlflow
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

MAX_PER_REQUEST = 1000  # MLflow's log_batch limit on metrics per call
RETRY_AFTER_S = 30.0  # first wait after a failed flush, doubled up to MAX_RETRY_AFTER_S
MAX_RETRY_AFTER_S = 300.0
_sender: tuple[int, ThreadPoolExecutor] | None = None  # (pid, one worker thread), made on first use


def _background(fn, *args) -> Future:
    global _sender
    if _sender is None or _sender[0] != os.getpid():  # a forked child has the object, not the thread
        _sender = (os.getpid(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="metric-sender"))
    return _sender[1].submit(fn, *args)


class MetricLogger:
    def __init__(
        self,
        run_id: str | None,
        local_path: Path | None = None,
        flush_every_s: float = 10.0,
        skip: set[tuple[str, int]] | None = None,
    ):
        self.run_id = run_id  # None: tracking off, only the local file is written
        self.local_path = local_path
        self.flush_every_s = flush_every_s
        self.skip = skip or set()  # (key, step) already on the server (a resumed run): never sent twice
        self._buffer: list[Metric] = []
        self._last_flush = time.monotonic()
        self._warned = False
        self._retry_at = 0.0  # while the server is down: no new attempt before this (monotonic)
        self._backoff_s = RETRY_AFTER_S
        self._in_flight: tuple[Future, list[Metric]] | None = None  # a background send and its values
        self._client = MlflowClient() if run_id else None
        if local_path:
            local_path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, metrics: dict[str, float], step: int) -> None:
        ts = int(time.time() * 1000)
        if self.local_path:
            with open(self.local_path, "a") as f:
                f.write(json.dumps({"step": step, "timestamp": ts, **metrics}) + "\n")
        if self.run_id:
            self._buffer += [Metric(k, float(v), ts, step) for k, v in metrics.items() if (k, step) not in self.skip]
            if self._in_flight and self._in_flight[0].done():
                self._settle_in_flight()
            if time.monotonic() - self._last_flush >= self.flush_every_s:
                self._last_flush = time.monotonic()
                if not self._in_flight and self._buffer and time.monotonic() >= self._retry_at:
                    batch, self._buffer = self._buffer, []
                    self._in_flight = (_background(self._send, batch), batch)

    def flush(self, force: bool = False) -> bool:
        """Send what is buffered, now; on failure keep it, warn once, and back off.

        ``force`` (the end of training) tries now and probes the server even with nothing buffered,
        so the calls that end the run know whether to go to the server or to ``pending.json``.

        While the server is down each attempt costs one quick ``/health`` probe, not MLflow's
        retries, so training goes on at full speed; the values stay in memory and in the local file.
        """
        self._last_flush = time.monotonic()
        if not self._client:
            return True
        if self._in_flight:
            self._settle_in_flight()  # its outcome first: values in order, the backoff up to date
        if not (self._buffer or force):
            return True
        if not force and time.monotonic() < self._retry_at:
            return False
        batch, self._buffer = self._buffer, []
        return self._settle(batch, *self._send(batch))

    def _send(self, batch: list[Metric]) -> tuple[int, str | None]:
        """Send ``batch`` in chunks: (values sent, why it stopped or None). Touches no logger state,
        so it can run on the sender thread; everything else happens on the caller's."""
        from tracking.offline import server_reachable

        if not server_reachable():
            return 0, "no answer from /health"
        sent = 0
        for i in range(0, len(batch), MAX_PER_REQUEST):
            chunk = batch[i : i + MAX_PER_REQUEST]
            try:
                self._client.log_batch(self.run_id, metrics=chunk)
            except Exception as e:  # noqa: BLE001 - any failure: keep the values, try again later
                return sent, " ".join(str(e).split())[:200]
            sent += len(chunk)
        return sent, None

    def _settle_in_flight(self) -> None:
        future, batch = self._in_flight
        self._in_flight = None
        self._settle(batch, *future.result())

    def _settle(self, batch: list[Metric], sent: int, error: str | None) -> bool:
        """Record a send's outcome: unsent values back in front of the buffer, or the server back online."""
        from tracking.offline import mark_online

        if error:
            self._buffer[:0] = batch[sent:]
            return self._failed(error)
        if self._retry_at:
            from tracking.offline import warn

            warn(f"tracking server {mlflow.get_tracking_uri()} answers again: {sent} buffered metric values sent")
        self._retry_at, self._backoff_s = 0.0, RETRY_AFTER_S
        mark_online()
        return True

    def _failed(self, reason: str) -> bool:
        from tracking.offline import RESYNC_HINT, mark_offline, warn

        mark_offline(reason)
        self._retry_at = time.monotonic() + self._backoff_s
        self._backoff_s = min(2 * self._backoff_s, MAX_RETRY_AFTER_S)
        if not self._warned:
            warn(
                f"tracking server {mlflow.get_tracking_uri()} unreachable ({reason}); training continues, "
                f"metrics are buffered and kept in {self.local_path}, checkpoints beside it; they are sent "
                f"when it answers again, or run `{RESYNC_HINT.format(run_id=self.run_id)}` later"
            )
            self._warned = True
        return False


def logged_steps(run_id: str, client: MlflowClient | None = None) -> set[tuple[str, int]]:
    """Every (key, step) the server holds for a run."""
    client = client or MlflowClient()
    return {
        (m.key, m.step) for key in client.get_run(run_id).data.metrics for m in client.get_metric_history(run_id, key)
    }


def resync(run_id: str, local_path: Path) -> int:
    """Send a run's local metric file to the server (after it was down). Returns values sent."""
    client = MlflowClient()
    have = logged_steps(run_id, client)
    todo = []
    for line in Path(local_path).read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill: the values before it are whole
            continue
        step, ts = row.pop("step"), row.pop("timestamp")
        for k, v in row.items():
            if (k, step) not in have:  # the first value of a step wins (a resumed run repeats steps)
                have.add((k, step))
                todo.append(Metric(k, float(v), ts, step))
    for i in range(0, len(todo), MAX_PER_REQUEST):
        client.log_batch(run_id, metrics=todo[i : i + MAX_PER_REQUEST])
    return len(todo)
