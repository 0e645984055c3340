"""The interface every task implements, and the task registry.

A task owns its config, how its model is built, how a training batch becomes a loss,
and how a network output becomes a result. Everything else (data, engine, tiling, QC
plumbing, model folders) is shared.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from deepscope.config import TaskConfigBase
from deepscope.engine.models import build_model

if TYPE_CHECKING:
    from deepscope.data.normalize import PercentileNormalizer
    from deepscope.data.validation import Finding, ValidationReport

_TASKS: dict[str, type[Task]] = {}


@dataclass
class TrainingData:
    """What a task that prepares its own training data returns (see ``Task.make_datasets``).

    Attributes
    ----------
    train, val
        Torch datasets whose items are dicts of tensors with at least ``"input"``.
    normalizer
        The input normalisation fitted on the training data (saved with the model).
    in_channels
        Channels of the network input.
    axes
        Axes of the first input file (recorded in the model folder).
    n_images
        Number of images used (training and validation).
    sampler
        An optional sampler for the training loader (e.g. class-balanced sampling).
    shuffle
        Shuffle the training items each epoch (datasets that are not already random).
    target_normalizer
        The target normalisation, for tasks that have one.
    split
        Optional JSON-able record of the split, saved as ``split.json`` in the run.
    """

    train: Any
    val: Any
    normalizer: PercentileNormalizer
    in_channels: int
    axes: str
    n_images: int
    sampler: Any = None
    shuffle: bool = False
    target_normalizer: PercentileNormalizer | None = None
    split: dict[str, Any] | None = None
    #: Raw (not normalised) validation images and targets, for tuning after training
    #: (e.g. StarDist's thresholds); None when the task has no targets.
    raw_validation: tuple[list, list] | None = None


class GridOutput(np.ndarray):
    """A strided network's output (C, *grid_spatial) at its own grid, with the image's shape.

    What :func:`predict_raw` gives with ``grid=True``; ``image_shape`` is the spatial shape
    of the image it was predicted from (``[..., i]`` covers pixels ``i * stride`` to
    ``(i + 1) * stride - 1``, the last block cut at the image's edge).
    """

    image_shape: tuple[int, ...] | None

    def __new__(cls, array: np.ndarray, image_shape: Sequence[int]) -> GridOutput:
        """Wrap ``array`` (no copy) with the image's spatial shape."""
        obj = np.asarray(array).view(cls)
        obj.image_shape = tuple(int(n) for n in image_shape)
        return obj

    def __array_finalize__(self, obj: Any) -> None:
        """Views and copies keep the image shape (numpy calls this for each)."""
        self.image_shape = getattr(obj, "image_shape", None)


def image_shape_of(output: np.ndarray) -> tuple[int, ...]:
    """The image's spatial shape of a :func:`predict_raw` output (C, *spatial), grid or not."""
    shape = getattr(output, "image_shape", None)
    return tuple(shape) if shape is not None else tuple(output.shape[1:])


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
    #: True for tasks with one result per image (e.g. a class) instead of an image:
    #: training uses ``make_datasets``, prediction writes a table, QC reads labels.
    image_level: ClassVar[bool] = False
    #: True for tasks whose network output turns with the image (a flipped image gives
    #: the flipped output, its channels re-ordered by :meth:`dihedral_channels`), so that
    #: prediction may average over the 8 flips and 90-degree rotations (``--tta``).
    tta_ok: ClassVar[bool] = False
    #: True for tasks with a strided network (``output_stride``) whose ``postprocess``,
    #: ``instances``, ``side_outputs`` and extra files read only the network's own grid:
    #: prediction then hands them a ``GridOutput`` instead of repeating every value to
    #: the image's size (see ``workflow.predict.predict_raw``).
    reads_grid_output: ClassVar[bool] = False
    #: True for tasks whose networks may predict in 8-bit integers (``predict --int8``,
    #: see ``deepscope.engine.int8``): segmentation, where 8-bit features suffice.
    int8_ok: ClassVar[bool] = False
    #: The image dimensionalities (2 and/or 3) for which ``tta_ok`` holds.
    tta_dims: ClassVar[tuple[int, ...]] = (2, 3)
    #: Settings of the task's own section that shape the network's weights beyond the
    #: shared ``model`` section; ``--from`` takes those the user left unset from the
    #: model to start from when it is of the same task.
    network_fields: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def tta_allowed(cls, config: dict[str, Any]) -> bool:
        """Whether a model trained with ``config`` (a saved config as a dict) allows ``--tta``.

        ``tta_ok`` by default; a task whose views depend on its training (classification)
        narrows it.
        """
        return cls.tta_ok

    def __init__(self, config: TaskConfigBase):
        self.config = config

    def out_channels(self, in_channels: int) -> int:
        """Number of network output channels for ``in_channels`` input channels."""
        return in_channels

    def build_model(self, in_channels: int) -> nn.Module:
        """Build the task's network from its config."""
        return build_model(self.config.model.architecture, **self.model_kwargs(in_channels))

    def model_kwargs(self, in_channels: int) -> dict:
        """Keyword arguments of the architecture class for ``in_channels`` input channels.

        Export (BioImage.IO's ``architecture.kwargs``) records exactly these, so that the
        network can be rebuilt outside deepscope.
        """
        m = self.config.model
        return dict(
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

    def dihedral_channels(self, k: int, flip: bool) -> np.ndarray | None:
        """Output channel order of an image turned ``k`` times by 90 degrees, then mirrored.

        For test-time augmentation: entry ``c`` is the channel of the turned image's output
        that speaks for channel ``c`` of the original's. None (the default): the channels
        do not depend on the orientation (intensities, class scores).
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
        override this. ``output`` is prediction's own array, used for nothing else:
        an override may write its result into it and return it (StarDist does).
        """
        return normalizer.denormalize(output)

    def blockwise_ok(self) -> bool:
        """Whether images may be predicted block by block (for images larger than memory).

        True only when the result and side outputs at a pixel depend on the network output
        near that pixel (restoration, class maps); False (the safe default) for results
        that need the whole image at once, such as instance labels.
        """
        return False

    def objects_in_blocks_ok(self) -> bool:
        """Whether instance results may be found block by block, then drawn (StarDist 2D).

        Such a task gives ``objects(output)`` and is predicted by
        :mod:`deepscope.workflow.instances_in_blocks` when an image is too large for memory.
        """
        return False

    def freezes_blocks(self) -> bool:
        """Whether the task keeps some of its own weights fixed in some epochs."""
        return False

    def display_range(self) -> tuple[float, float] | None:
        """Fixed display range of the result image, for results whose values are codes.

        Written into ImageJ TIFFs (``min``/``max``), so that e.g. a class map of 0 and 1
        is not shown black in Fiji (which shows 8-bit images from 0 to 255). None (the
        default): viewers choose, as for intensities.
        """
        return None

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

    # ---------------------------------------------------------------- generic hooks
    # Tasks whose data are not folders of images cut into patches override these; the
    # defaults keep the shared patch pipeline of ``deepscope.workflow.training``.

    def check_training_data(self, images: Path, targets: Path | None = None) -> ValidationReport:
        """Check the training data (``deepscope validate`` and the start of ``train``).

        The default checks folders of images (and targets) with ``validate_dataset``.
        A task may complete ``self.config`` from the data here (e.g. class names).
        """
        from deepscope.data.validation import validate_dataset

        return validate_dataset(
            type(self), self.config, images, targets, extra_checks=self.extra_checks
        )

    def make_datasets(
        self,
        report: ValidationReport,
        run_dir: Path,
        resume: bool,
        log: Callable[[str], None],
    ) -> TrainingData | None:
        """Build the training and validation datasets; None = the shared patch pipeline."""
        return None

    def parameter_groups(self, model: nn.Module) -> list[dict[str, Any]] | None:
        """Optimiser parameter groups (e.g. a lower learning rate for some layers).

        None (the default) trains every parameter at ``training.learning_rate``.
        """
        return None

    def on_epoch_start(self, model: nn.Module, epoch: int) -> str | None:
        """Called at the start of each training epoch (0-based), e.g. to freeze layers.

        Returns a line for the training log, or None.
        """
        return None


def extra_file_name(result_name: str, suffix: str) -> str:
    """Name of a non-image file written beside a result: ``cell.tif`` → ``cell_<suffix>``."""
    stem = result_name.removesuffix(".ome.zarr").removesuffix(".tif")
    return f"{stem}_{suffix}"


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
