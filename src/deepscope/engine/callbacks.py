"""Lightning callbacks: per-epoch history, progress with ETA, stop requests, atomic saves."""

from __future__ import annotations

import csv
import io
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.nn.modules.batchnorm import _BatchNorm

from deepscope.data.io import atomic_write_text

HISTORY_FIELDS = ["epoch", "train_loss", "val_loss", "learning_rate", "seconds", "best"]


def _fmt_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def read_history(path: Path) -> list[dict[str, Any]]:
    """Read a ``metrics.csv`` written by :class:`History` (empty list when absent)."""
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


class History(L.Callback):
    """Write ``metrics.csv`` (one row per epoch) atomically at the end of each epoch.

    On resume, rows of epochs that are being trained again are dropped first.
    """

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict[str, Any]] = []
        self._epoch_start = time.monotonic()
        self._best = math.inf

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Load earlier rows (resume) and drop those at or after the current epoch."""
        start = trainer.current_epoch
        self.rows = [r for r in read_history(self.path) if int(r["epoch"]) < start]
        vals = [float(r["val_loss"]) for r in self.rows if r.get("val_loss") not in ("", None)]
        self._best = min(vals, default=math.inf)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start the epoch clock."""
        self._epoch_start = time.monotonic()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Append the epoch's losses and rewrite the file (the main process only)."""
        if not trainer.is_global_zero:
            return
        m = trainer.callback_metrics
        val = float(m["val_loss"]) if "val_loss" in m else math.nan
        is_best = val < self._best
        self._best = min(self._best, val) if not math.isnan(val) else self._best
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else math.nan
        self.rows.append(
            {
                "epoch": trainer.current_epoch,
                "train_loss": float(m.get("train_loss_epoch", math.nan)),
                "val_loss": val,
                "learning_rate": lr,
                "seconds": round(time.monotonic() - self._epoch_start, 3),
                "best": int(is_best),
            }
        )
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.path, buf.getvalue())


class ProgressReport(L.Callback):
    """One line per epoch with losses, speed and the remaining time of the whole training.

    ``listener`` (optional) receives a dict per epoch, for the web app or the API.
    """

    def __init__(
        self,
        max_epochs: int,
        max_minutes: float | None,
        listener: Callable[[dict[str, Any]], None] | None = None,
        stream: Any = None,
    ):
        self.max_epochs = max_epochs
        self.max_seconds = max_minutes * 60 if max_minutes else None
        self.listener = listener
        self.stream = stream or sys.stderr
        self._t0 = time.monotonic()
        self._first_epoch = 0
        self._best = math.inf

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Remember where this (possibly resumed) training started."""
        self._t0 = time.monotonic()
        self._first_epoch = trainer.current_epoch
        best = getattr(trainer.checkpoint_callback, "best_model_score", None)
        self._best = float(best) if best is not None else math.inf

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Print and publish the epoch summary with an ETA (the main process only)."""
        if not trainer.is_global_zero:
            return
        epoch = trainer.current_epoch + 1
        done = epoch - self._first_epoch
        elapsed = time.monotonic() - self._t0
        per_epoch = elapsed / max(done, 1)
        remaining = per_epoch * (self.max_epochs - epoch)
        if self.max_seconds is not None:
            timer_elapsed = _timer_elapsed(trainer)
            remaining = min(remaining, max(0.0, self.max_seconds - timer_elapsed))
        m = trainer.callback_metrics
        train = float(m.get("train_loss_epoch", math.nan))
        val = float(m.get("val_loss", math.nan))
        mark = ""
        if val < self._best:
            self._best, mark = val, "  (best so far)"
        line = (
            f"epoch {epoch}/{self.max_epochs}  train loss {train:.5f}  val loss {val:.5f}"
            f"  {per_epoch:.1f} s/epoch  elapsed {_fmt_duration(elapsed)}"
            f"  ETA {_fmt_duration(remaining)}{mark}"
        )
        print(line, file=self.stream, flush=True)
        if self.listener:
            self.listener(
                {
                    "epoch": epoch,
                    "max_epochs": self.max_epochs,
                    "train_loss": train,
                    "val_loss": val,
                    "elapsed_s": elapsed,
                    "eta_s": remaining,
                }
            )


def _timer_elapsed(trainer: L.Trainer) -> float:
    for cb in trainer.callbacks:
        if isinstance(cb, SessionTimer):
            return cb.time_elapsed("train")
    return 0.0


class SessionTimer(Timer):
    """Lightning's time budget, counted per session: a resumed run gets a fresh budget.

    ``--max-minutes`` means "train for at most this long now", so the elapsed time stored
    in the checkpoint is deliberately not restored.
    """

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Ignore the previous session's elapsed time."""


class RecalibrateBatchNorm(L.Callback):
    """Recompute batch-norm statistics with the current weights before each validation.

    Batch norm keeps running averages of activation statistics that lag behind the
    weights; after a short training (minutes on a CPU) the lag is large and the network
    in evaluation mode can be worse than the noisy input (measured: 17.7 dB instead of
    22.7 dB on the demo). Re-estimating the statistics over a few unmasked training
    batches, with the final weights, removes the lag; validation, checkpoints and the
    exported model all use the recalibrated statistics.

    It runs ``max_batches`` batches, or fewer when they would hold more than ``patches``
    patches: with the demo's batches of 64, eight batches were as many forward passes as
    the epoch's whole training and cost a third of each epoch on an AVX2 CPU
    (benchmarks/RESULTS.md); 128 patches of 64 x 64 pixels are still half a million
    values per channel for each statistic.
    """

    def __init__(self, max_batches: int = 8, patches: int = 128):
        self.max_batches = max_batches
        self.patches = patches

    def batches(self, batch_size: int) -> int:
        """How many batches of ``batch_size`` patches to recalibrate on."""
        return max(1, min(self.max_batches, -(-self.patches // max(1, batch_size))))

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Re-estimate the statistics (only while fitting)."""
        if trainer.state.fn != "fit" or trainer.sanity_checking:
            return
        norms = [m for m in pl_module.modules() if isinstance(m, _BatchNorm)]
        loader = trainer.train_dataloader
        if not norms or loader is None:
            return
        dataset, batch_size = loader.dataset, loader.batch_size or 1
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the recalibration batches
        was_training = pl_module.training
        pl_module.train()
        fmt = getattr(pl_module, "_format", torch.contiguous_format)
        try:
            with torch.no_grad(), trainer.precision_plugin.forward_context():
                for _ in range(self.batches(batch_size)):
                    idx = torch.randint(len(dataset), (batch_size,)).tolist()
                    x = torch.stack([dataset[i]["input"] for i in idx]).to(pl_module.device)
                    pl_module.model(x.contiguous(memory_format=fmt))
        finally:
            for m, momentum in zip(norms, momenta, strict=True):
                m.momentum = momentum
            pl_module.train(was_training)


class StopWhenDiverged(L.Callback):
    """Stop when the validation loss is no longer a number: the training has diverged.

    Every later epoch would be wasted; the best checkpoint (from before) is kept.
    ``epoch`` is the 1-based epoch whose validation gave NaN or infinity (None if none).
    """

    def __init__(self) -> None:
        self.epoch: int | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Check the epoch's validation loss (only while fitting)."""
        if trainer.state.fn != "fit" or trainer.sanity_checking:
            return
        loss = trainer.callback_metrics.get("val_loss")
        if loss is not None and not bool(torch.isfinite(torch.as_tensor(loss))):
            self.epoch = trainer.current_epoch + 1
            trainer.should_stop = True


class StopFile(L.Callback):
    """Stop gracefully (keeping the best model) when a file named STOP appears in the run.

    This is how the web app's stop button ends a training; from a shell, create the
    file (``touch RUN/STOP``).
    """

    def __init__(self, path: Path):
        self.path = path

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        """Check for the stop file after every batch (all processes stop together)."""
        stop = self.path.exists()
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            trainer.should_stop = True


class DistinctPatchesPerProcess(L.Callback):
    """Give each process of a multi-process training its own random patches.

    Every process starts from the same seed (the same initial weights); without this
    they would all draw the same training patches and augmentations. Rank 0 keeps the
    seed's own sequence, so a one-process training is unchanged.
    """

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Re-seed the training patches and the global generators by process rank."""
        rank = trainer.global_rank
        if trainer.world_size < 2 or rank == 0:
            return
        loader = trainer.train_dataloader
        dataset = getattr(loader, "dataset", None)
        if dataset is not None and hasattr(dataset, "rng") and hasattr(dataset, "seed"):
            dataset.rng = np.random.default_rng((int(dataset.seed), rank))
        torch.manual_seed(int(torch.initial_seed()) + rank)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints to a temporary file and rename, so a crash never leaves half a file."""

    def save_checkpoint(self, checkpoint: dict, path: Any, storage_options: Any = None) -> None:
        """Save ``checkpoint`` atomically at ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.partial")
        try:
            with tmp.open("wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
