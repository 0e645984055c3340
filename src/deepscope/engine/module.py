"""The one LightningModule shared by all tasks: the task plugin supplies model and loss."""

from __future__ import annotations

import lightning as L
import torch

from deepscope.errors import DeepscopeError
from deepscope.tasks.base import Task


def memory_format(spatial_dims: int) -> torch.memory_format:
    """Channels-last layout for 2D or 3D convolutions (faster with oneDNN and on GPUs)."""
    return torch.channels_last if spatial_dims == 2 else torch.channels_last_3d


def encoder_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Return the encoder of a U-Net-like model: its down-sampling blocks and bottleneck.

    Raises
    ------
    DeepscopeError
        When the architecture has no ``encoders`` and ``bottleneck`` to freeze.
    """
    parts = [getattr(model, name, None) for name in ("encoders", "bottleneck")]
    if any(p is None for p in parts):
        raise DeepscopeError(
            f"the {type(model).__name__} network has no encoder that can be frozen",
            fix="set training.freeze_encoder_epochs to 0 (leave out --freeze-encoder)",
        )
    return [p for p in parts if p is not None]


def gradients_finite(grads: list[torch.Tensor]) -> bool:
    """Whether every value of every gradient is finite (no NaN, no infinity).

    One ``isfinite`` per tensor (~2 ms per step for StarDist's 70 tensors on 2 cores).
    PyTorch's fused multi-tensor check (private API of its gradient scaler) takes 0.1 ms
    but made no measurable difference to StarDist epochs (-0.6 % and +3.4 % in two A/Bs),
    so it is not used (benchmarks/finite_check_ab.py, benchmarks/RESULTS.md).
    """
    return bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())


class TaskModule(L.LightningModule):
    """Train ``task``'s network with the task's loss.

    Parameters
    ----------
    task
        The task plugin, holding the validated config.
    in_channels
        Number of channels of the input images.
    """

    def __init__(self, task: Task, in_channels: int):
        super().__init__()
        self.task = task
        self.in_channels = in_channels
        self.model = task.build_model(in_channels)
        self._format = memory_format(task.config.data.spatial_dims)
        self.model.to(memory_format=self._format)
        #: Optimiser steps skipped because a gradient was not finite (this session).
        self.skipped_steps = 0
        #: Names of encoder parameters trained even while the encoder is frozen: those
        #: the model to start from had no fitting weights for (they start new).
        self.train_while_frozen: set[str] = set()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Skip the step when a gradient is not finite, instead of ruining every weight.

        One NaN in one gradient turns all weights into NaN at the next step, and the
        training is lost. On CPUs, oneDNN's bf16 weight gradient of 3D convolutions on
        small blocks (e.g. 2 x 16 x 16 voxels, the bottom of a U-Net given 8-plane
        patches) sometimes returns NaN from finite inputs when it runs on two threads
        (measured: 3 of 150 calls; never on one thread or in fp32). Skipping such a step,
        as mixed-precision training does for overflows, loses one batch.
        """
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if not grads or gradients_finite(grads):
            return
        optimizer.zero_grad(set_to_none=True)  # parameters without gradient are not updated
        self.skipped_steps += 1
        if self.skipped_steps in (1, 10, 100, 1000):
            print(  # deepscope trains in one process; self.print needs a trainer
                f"note: {self.skipped_steps} training step(s) skipped so far because a "
                "gradient was not a number (a rare fault of bf16 arithmetic; if it happens "
                "often, train with --precision 32)"
            )

    # ------------------------------------------------------------ encoder freezing

    @property
    def freezes_parameters(self) -> bool:
        """Whether some weights get no gradient in some epochs (a frozen encoder or blocks).

        A multi-process training (DDP) must then look for unused weights at every step.
        """
        return bool(self.task.config.training.freeze_encoder_epochs) or self.task.freezes_blocks()

    @property
    def encoder_frozen(self) -> bool:
        """Whether the encoder is kept fixed in the current epoch."""
        freeze = self.task.config.training.freeze_encoder_epochs
        return bool(freeze) and self.current_epoch < freeze

    def on_train_epoch_start(self) -> None:
        """Freeze the encoder during the first ``training.freeze_encoder_epochs`` epochs.

        Its weights (convolutions and batch-norm scales and offsets) get no gradient,
        except those in ``train_while_frozen`` (weights the start model did not provide).
        Its batch-norm statistics, like every layer's, are re-estimated on the new images
        before each validation (``RecalibrateBatchNorm``), which adapts the transferred
        encoder to them.
        """
        if self.task.config.training.freeze_encoder_epochs:
            frozen = self.encoder_frozen
            for module in encoder_modules(self.model):
                module.requires_grad_(not frozen)
            for name, param in self.model.named_parameters():
                if name in self.train_while_frozen:  # new weights: nothing to keep fixed
                    param.requires_grad_(True)
        message = self.task.on_epoch_start(self.model, self.current_epoch)  # task's own hook
        if message:
            self.print(message)

    def _prepare(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ndim = self.task.config.data.spatial_dims + 2  # image tensors; labels stay as they are
        return {
            k: v.contiguous(memory_format=self._format) if v.ndim == ndim else v
            for k, v in batch.items()
        }

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Loss of one training batch."""
        loss = self.task.training_loss(self.model, self._prepare(batch))
        self.log(
            "train_loss",
            loss,
            on_step=True,
            on_epoch=True,
            prog_bar=True,
            batch_size=len(batch["input"]),
            sync_dist=self.trainer.world_size > 1,  # the epoch's mean over every process
        )
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Loss on validation patches; random choices are seeded so epochs are comparable."""
        gen = torch.Generator().manual_seed(1000 + batch_idx)
        loss = self.task.training_loss(self.model, self._prepare(batch), generator=gen)
        self.log(
            "val_loss",
            loss,
            on_epoch=True,
            prog_bar=True,
            batch_size=len(batch["input"]),
            sync_dist=True,  # several processes: every one decides on the same mean
        )

    def configure_optimizers(self) -> dict:
        """AdamW, learning rate halved when the validation loss stops improving.

        On CPUs and CUDA GPUs AdamW runs fused (one kernel for all weights instead of a
        loop over them): 3.2 -> 0.8 ms per step for the 2 M weights of StarDist's network
        on the 2-core development machine (benchmarks/RESULTS.md).
        """
        t = self.task.config.training
        params = self.task.parameter_groups(self.model) or self.model.parameters()
        fused = self.device.type in ("cpu", "cuda")
        opt = torch.optim.AdamW(
            params, lr=t.learning_rate, weight_decay=t.weight_decay, fused=fused or None
        )
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=t.lr_patience)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val_loss"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Store what is needed to rebuild the network from the checkpoint alone."""
        checkpoint["deepscope"] = {
            "config": self.task.config.model_dump(mode="json"),
            "in_channels": self.in_channels,
        }
