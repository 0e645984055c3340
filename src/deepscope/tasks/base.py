"""The interface every task implements, and the task registry.

A task owns its config, how its model is built, how a training batch becomes a loss,
and how a network output becomes a result. Everything else (data, engine, tiling, QC
plumbing, model folders) is shared.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from torch import nn

from deepscope.config import TaskConfigBase
from deepscope.engine.models import build_model

if TYPE_CHECKING:
    from deepscope.data.normalize import PercentileNormalizer
    from deepscope.data.validation import Finding

_TASKS: dict[str, type[Task]] = {}


class Task(ABC):
    """Base class of task plugins.

    Subclasses set the class attributes and implement :meth:`training_loss`.
    """

    name: ClassVar[str]
    title: ClassVar[str]
    description: ClassVar[str]
    config_class: ClassVar[type[TaskConfigBase]]
    needs_targets: ClassVar[bool] = False
    #: Whether targets are images normalised like inputs (False for label/class masks).
    normalize_targets: ClassVar[bool] = True
    #: Whether inputs are normalised per image by default (``data.normalize_per_image``).
    normalize_per_image: ClassVar[bool] = False
    #: Which quality-control family scores this task (see ``deepscope.workflow.qc``).
    qc_kind: ClassVar[str] = "restoration"

    def __init__(self, config: TaskConfigBase):
        self.config = config

    def out_channels(self, in_channels: int) -> int:
        """Number of network output channels for ``in_channels`` input channels."""
        return in_channels

    def build_model(self, in_channels: int) -> nn.Module:
        """Build the task's network from its config."""
        m = self.config.model
        return build_model(
            m.architecture,
            dims=self.config.data.spatial_dims,
            in_channels=in_channels,
            out_channels=self.out_channels(in_channels),
            depth=m.depth,
            base_channels=m.base_channels,
            batch_norm=m.batch_norm,
            dropout=m.dropout,
            residual=m.residual,
            **self.extra_model_kwargs(),
        )

    def divisibility(self) -> int:
        """Spatial sizes given to the network must be multiples of this number.

        The U-Net needs ``2 ** depth``; tasks whose network subsamples further (StarDist's
        grid) return more. Stored in the model folder and used by the tiler.
        """
        return 2**self.config.model.depth

    def output_stride(self) -> tuple[int, ...] | None:
        """Per-axis factor by which the network's output is smaller than its input.

        None (the default) for networks whose output has the input's size. Prediction
        stitches such outputs at the reduced size and then repeats each value to the
        image's size (see ``workflow.predict.predict_raw``).
        """
        return None

    def extra_model_kwargs(self) -> dict:
        """Return task-specific architecture options (e.g. N2V2)."""
        return {}

    @abstractmethod
    def training_loss(
        self,
        model: nn.Module,
        batch: dict[str, torch.Tensor],
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Return the scalar loss of ``model`` on a batch (dict of tensors).

        ``generator`` seeds any random choice (used for a reproducible validation loss).
        """

    def postprocess(self, output: np.ndarray) -> np.ndarray:
        """Turn a de-normalised network output (C, *spatial) into the task's result."""
        return output

    def denormalize_output(
        self, output: np.ndarray, normalizer: PercentileNormalizer
    ) -> np.ndarray:
        """Map a raw network output (C, *spatial) back to image intensities.

        ``normalizer`` is the target normaliser (the input's for tasks without targets).
        Tasks whose extra output channels are not intensities (e.g. an uncertainty)
        override this.
        """
        return normalizer.denormalize(output)

    def side_outputs(self, output: np.ndarray) -> dict[str, np.ndarray]:
        """Extra result images of a de-normalised output, written beside the result.

        Returns a dict ``suffix -> array (C, *spatial)``; ``deepscope predict`` writes
        each as ``<name>_<suffix>.tif``. None by default.
        """
        return {}

    def extra_checks(
        self,
        image_path: Path,
        image_cf: np.ndarray,
        target_path: Path | None,
        target_cf: np.ndarray | None,
    ) -> list[Finding]:
        """Return the task's own data findings for ``validate`` (see ``validate_dataset``)."""
        return []


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator registering a task under ``cls.name``."""
    _TASKS[cls.name] = cls
    return cls


def get_task(name: str) -> type[Task]:
    """Return the task class registered as ``name``."""
    try:
        return _TASKS[name]
    except KeyError:
        raise KeyError(
            f"unknown task {name!r}; available tasks: {', '.join(sorted(_TASKS))}"
        ) from None


def available_tasks() -> list[str]:
    """Names of all registered tasks."""
    return sorted(_TASKS)
