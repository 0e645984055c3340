"""Build the Lightning trainer (checkpoints, time budget, progress) and run it."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from deepscope.config import TrainingConfig
from deepscope.engine import performance
from deepscope.engine.callbacks import (
    AtomicCheckpointIO,
    DistinctPatchesPerProcess,
    History,
    ProgressReport,
    RecalibrateBatchNorm,
    SessionTimer,
    StopFile,
    StopWhenDiverged,
)

BEST = "best.ckpt"
_IGNORED_WARNINGS = (
    ".*Checkpoint directory.*exists and is not empty.*",
    ".*does not have many workers.*",
    ".*GPU available but not used.*",
    ".*LeafSpec.*",
    ".*predict_dataloader.*",
)
LAST = "last.ckpt"


def periodic_name(epoch: int) -> str:
    """File name of the checkpoint kept at the end of (1-based) ``epoch``."""
    return f"epoch_{epoch:04d}.ckpt"


class _PeriodicCheckpoint(ModelCheckpoint):
    """Keep every K-th epoch under a stable name (``epoch_0010.ckpt``)."""

    def __init__(self, dirpath: Path, every: int):
        super().__init__(
            dirpath=dirpath,
            filename="epoch_{epoch:04d}",
            auto_insert_metric_name=False,
            every_n_epochs=every,
            save_top_k=-1,
            save_on_train_epoch_end=True,
            # The name ignores ``ver``: a re-trained epoch (after resume) replaces its file.
            enable_version_counter=False,
        )

    def format_checkpoint_name(
        self, metrics: dict, filename: str | None = None, ver: Any = None
    ) -> str:
        """Name checkpoints by the 1-based number of finished epochs."""
        epoch = int(metrics.get("epoch", 0)) + 1
        return str(Path(self.dirpath) / periodic_name(epoch))


def build_trainer(
    run_dir: Path,
    cfg: TrainingConfig,
    listener: Callable[[dict[str, Any]], None] | None = None,
    show_bar: bool = True,
    devices: int = 1,
    nodes: int = 1,
    find_unused_parameters: bool = False,
) -> tuple[L.Trainer, ModelCheckpoint]:
    """Create the trainer with deepscope's callbacks; return it and the best-model callback.

    With ``devices`` processes on each of ``nodes`` computers (see
    :mod:`deepscope.engine.distributed`) it trains with Lightning's DDP strategy.

    Lightning's live progress bar is shown only when ``show_bar`` and the output is a
    terminal: in a log file (a cluster job, ``> log.txt``) it would leave one stale frame,
    and the one line per epoch with its ETA (``ProgressReport``) says all of it there.
    """
    ckpt_dir = run_dir / "checkpoints"
    best = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best",
        monitor="val_loss",
        mode="min",
        save_top_k=1,
        enable_version_counter=False,
        save_on_train_epoch_end=True,
    )
    # Not ``save_last=True`` on ``best``: Lightning writes that only in epochs where a
    # top-k checkpoint was saved, i.e. when val_loss improved, so it would lag behind.
    last = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename=LAST.removesuffix(".ckpt"),
        monitor=None,
        save_top_k=1,
        enable_version_counter=False,
        save_on_train_epoch_end=True,
    )
    callbacks: list[L.Callback] = [
        best,
        _PeriodicCheckpoint(ckpt_dir, cfg.checkpoint_every),
        last,
        History(run_dir / "metrics.csv"),
        ProgressReport(cfg.epochs, cfg.max_minutes, listener),
        StopFile(run_dir / "STOP"),
        RecalibrateBatchNorm(),
        StopWhenDiverged(),
        DistinctPatchesPerProcess(),
    ]
    if cfg.max_minutes:
        callbacks.append(SessionTimer(duration=timedelta(minutes=cfg.max_minutes)))
    accelerator = performance.choose_accelerator()
    precision = performance.choose_precision(cfg.precision, accelerator)
    strategy: Any = "auto"
    if devices * nodes > 1:
        from lightning.pytorch.strategies import DDPStrategy

        # A frozen encoder (--freeze-encoder) or frozen blocks get no gradient, which DDP
        # must then look for (it warns of the cost when nothing is frozen).
        strategy = DDPStrategy(find_unused_parameters=find_unused_parameters)
    trainer = L.Trainer(
        default_root_dir=run_dir,
        max_epochs=cfg.epochs,
        accelerator=accelerator,
        devices=devices,
        num_nodes=nodes,
        strategy=strategy,
        precision=precision,
        callbacks=callbacks,
        logger=False,
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=show_bar and sys.stdout.isatty(),
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        deterministic=False,
    )
    return trainer, best


def fit(
    module: L.LightningModule,
    train_loader: DataLoader,
    val_loader: DataLoader,
    run_dir: Path,
    cfg: TrainingConfig,
    resume_from: Path | None = None,
    listener: Callable[[dict[str, Any]], None] | None = None,
    show_bar: bool = True,
    devices: int = 1,
    nodes: int = 1,
) -> L.Trainer:
    """Train ``module``; resume from ``resume_from`` (a Lightning checkpoint) if given.

    ``devices`` processes per computer on ``nodes`` computers train together (DDP).
    """
    performance.tune_allocator()
    performance.setup_threads(processes=devices)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    # Lightning's start-up banners and tips mean nothing to our users; warnings still show.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        for message in _IGNORED_WARNINGS:
            warnings.filterwarnings("ignore", message)
        trainer, _ = build_trainer(
            run_dir,
            cfg,
            listener,
            show_bar,
            devices,
            nodes,
            find_unused_parameters=bool(getattr(module, "freezes_parameters", True)),
        )
        trainer.fit(
            module,
            train_dataloaders=train_loader,
            val_dataloaders=val_loader,
            ckpt_path=str(resume_from) if resume_from else None,
        )
    return trainer


def load_checkpoint_state(path: Path) -> dict:
    """Load a Lightning checkpoint on the CPU (raises on a damaged file)."""
    return torch.load(path, map_location="cpu", weights_only=False)
