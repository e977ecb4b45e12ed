"""One tracked training run: what ``train``, ``segment``, study trials and ``gradients`` share.

    with training_run("train-x", experiment_id, resume_run_id=rid, tags={...}) as session:
        if session.is_new:
            log_params(...)
        state = session.fit(model, data, cfg, precision=...)  # cfg: recipe(), seed, eval_every, checkpoint_every
        session.log_trained(model, model_config, state)

``training_run`` opens the run (``tracked_run``, system metrics included). On resume it first
sends what the interrupted attempt kept locally (``pending.json``, the local metric file: it may
have lost its server) and never logs a step the server already holds. ``Session.fit`` fetches
the checkpoint from the run when it is not on this machine, logs every epoch through one
``MetricLogger`` (local copy included), flushes with ``force`` (a dead server is found in
seconds, the rest is kept locally) and uploads the checkpoint at the end, even when training
fails or is stopped. The callers pass what differs: loss, prediction, validation, extra
per-epoch metrics, a hook, run name, params and tags.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
import torch.nn as nn

from pipelines.trained import CHECKPOINT, checkpoint_dir, log_trained
from pipelines.trainer import TrainState, fit
from tracking import tracked_run
from tracking.artifacts import download, log_file
from tracking.metrics import MetricLogger


class RunConfig(Protocol):
    """What ``Session.fit`` reads from a train or segmentation config."""

    seed: int
    eval_every: int
    checkpoint_every: int

    def recipe(self) -> dict: ...


ExtraMetrics = Callable[[int], dict[str, float]]  # epoch -> more metrics to log with the epoch's own
EpochHook = Callable[[int, dict[str, float]], None]  # (epoch, metrics) after they are logged


def place(model: nn.Module, device) -> nn.Module:
    """The model on ``device``, channels_last: NHWC input permuted to NCHW is channels_last already."""
    return model.to(device, memory_format=torch.channels_last)


@dataclass
class Session:
    """An open training run: its id, whether it resumes, and where its local files are."""

    run_id: str
    resumed: bool
    tracking: bool = True
    skip: set[tuple[str, int]] | None = field(default=None, repr=False)  # (key, step) the server holds

    @property
    def is_new(self) -> bool:
        return not self.resumed

    @property
    def folder(self) -> Path:
        return checkpoint_dir(self.run_id)

    @property
    def checkpoint(self) -> Path:
        return self.folder / "last.pt"

    @property
    def local_metrics(self) -> Path:
        return self.folder / "metrics.jsonl"

    def fit(
        self,
        model: nn.Module,
        data: dict[str, torch.Tensor],
        cfg: RunConfig,
        *,
        precision: str,
        checkpoints: bool = True,
        progress: bool = True,
        extra_metrics: ExtraMetrics | None = None,
        on_epoch: EpochHook | None = None,
        **hooks,
    ) -> TrainState:
        """``trainer.fit`` on ``data`` (the tensors of ``fit_tensors``: ``x_train``, ``y_train``, ``x_test``,
        ``y_test`` and optionally ``x_val``, ``y_val``) with ``cfg``'s recipe, seed and cadences, every
        epoch logged.

        ``extra_metrics(epoch)`` adds to what the epoch logs; ``on_epoch(epoch, metrics)`` runs after
        the epoch is logged and sent (a scheduler may stop the process in it: nothing stays buffered).
        ``hooks``: ``loss_fn``, ``predict_fn``, ``validate`` for ``trainer.fit``.
        ``checkpoints``: keep and upload a checkpoint (resumable from any machine that sees the server).
        """
        ckpt = self.checkpoint if checkpoints else None
        if ckpt is not None and self.resumed and not ckpt.exists():
            self._fetch_checkpoint(ckpt)
        logger = MetricLogger(self.run_id if self.tracking else None, local_path=self.local_metrics, skip=self.skip)

        def epoch_done(epoch: int, metrics: dict[str, float]) -> None:
            logger.log({**metrics, **extra_metrics(epoch)} if extra_metrics else metrics, epoch)
            if on_epoch:
                logger.flush()
                on_epoch(epoch, metrics)

        try:
            return fit(
                model,
                **data,
                recipe=cfg.recipe(),
                seed=cfg.seed,
                precision=precision,
                eval_every=cfg.eval_every,
                checkpoint_every=cfg.checkpoint_every,
                checkpoint_path=ckpt,
                resume=self.resumed,
                on_epoch=epoch_done,
                progress=progress,
                **hooks,
            )
        finally:
            logger.flush(force=True)  # a dead server is found here in seconds: the rest is kept locally
            if ckpt is not None and ckpt.exists():
                log_file(ckpt, Path(CHECKPOINT).parent.as_posix())

    def log_trained(self, model: nn.Module, model_config: dict, state: TrainState, metrics: bool = True) -> dict:
        """Weights, model config, history and (with ``metrics``) timings and size into this run."""
        return log_trained(model, model_config, state, metrics=metrics)

    def _fetch_checkpoint(self, ckpt: Path) -> None:
        """Resume on another machine: the checkpoint the run logged (none yet: start at epoch 0, same run)."""
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp, contextlib.suppress(Exception):
            shutil.move(download(self.run_id, CHECKPOINT, tmp), ckpt)


@contextmanager
def training_run(
    run_name: str,
    experiment_id: str | None,
    *,
    resume_run_id: str | None = None,
    nested: bool = False,
    tags: dict[str, str] | None = None,
    system_metrics: bool = False,
    tracking: bool = True,
) -> Iterator[Session]:
    """Open (or, with ``resume_run_id``, resume) a tracked training run; yields its ``Session``.

    ``tracking=False``: the run exists, but epochs go to the local metric file only.
    """
    with tracked_run(
        run_name,
        experiment_id,
        nested=nested,
        tags=tags,
        run_id=resume_run_id,
        system_metrics=system_metrics and tracking,
    ) as rid:
        session = Session(rid, resumed=resume_run_id is not None, tracking=tracking)
        if session.resumed and tracking:
            session.skip = catch_up(rid, session.local_metrics)
        yield session


def catch_up(run_id: str, local_metrics: Path) -> set[tuple[str, int]]:
    """Before a resumed run goes on: send what its interrupted attempt kept locally (records of a lost
    server, the local metric file); returns the (key, step) pairs the server holds, not to log twice."""
    from tracking.metrics import logged_steps, resync
    from tracking.offline import replay_pending

    replay_pending(run_id, end=False)
    if local_metrics.exists():
        resync(run_id, local_metrics)
    return logged_steps(run_id)
