"""StarDist instance segmentation: star-convex polygons (2D) and polyhedra (3D).

Each object (typically a nucleus) is described from every pixel inside it by the distances
to its boundary along ``n_rays`` fixed directions (Schmidt et al., MICCAI 2018; Weigert et
al., WACV 2020). The network predicts, on a grid ``grid`` times coarser than the image,

* an object probability (how far inside an object the pixel is: 1 at the centre, falling
  to 0 at the boundary), and
* the ``n_rays`` distances.

Every grid point above the probability threshold proposes a polygon; non-maximum
suppression keeps the most probable of overlapping proposals (overlap above the NMS
threshold) and the kept polygons are painted into a label image. Both thresholds are
tuned on the validation images after training (``thresholds.json`` in the model folder).

The geometry (distances, rays, polygon/polyhedron rendering), the non-maximum
suppression and the matching come from the ``stardist`` package, without TensorFlow.

Masks are instance label images: 0 for background, one integer per object.
"""

from __future__ import annotations

import csv
import functools
import io
import math
import warnings
import zipfile
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator
from pydantic.fields import FieldInfo
from torch import nn
from torch.nn import functional as F

from deepscope.config import DataConfig, ModelConfig, TaskConfigBase, TrainingConfig, _Section
from deepscope.engine.performance import available_cores
from deepscope.errors import DeepscopeError
from deepscope.tasks.base import Task, extra_file_name, image_shape_of, register_task

if TYPE_CHECKING:
    from deepscope.data.normalize import PercentileNormalizer
    from deepscope.data.validation import Finding, ValidationReport

#: Thresholds used when neither the config nor a tuning fixes them (StarDist's defaults).
DEFAULT_PROB_THRESHOLD = 0.5
DEFAULT_NMS_THRESHOLD = 0.4
#: Published loss weights: probability (binary cross-entropy), distances (masked MAE).
PROB_LOSS_WEIGHT = 1.0
DIST_LOSS_WEIGHT = 0.2
#: Weight of the small penalty on distances predicted outside objects.
BACKGROUND_REG = 1e-4
#: Largest weight ``object_weights`` gives one object's pixels (background: 1), so that
#: a sliver of an object cut by the patch border cannot dominate.
MAX_OBJECT_WEIGHT = 10.0
_EPS = 1e-7


# ----------------------------------------------------------------------------- config


class StarDistSettings(_Section):
    """Settings of the StarDist task."""

    n_rays: int | None = Field(
        None,
        ge=4,
        le=256,
        description="Number of rays (directions) describing each object. Default 32 in 2D, "
        "96 in 3D.",
    )
    grid: list[int] | None = Field(
        None,
        description="The network predicts on a grid this many times coarser than the image "
        "per axis (powers of 2), which makes it faster. Default [2, 2] in 2D, [1, 2, 2] in 3D.",
    )
    anisotropy: list[float] | None = Field(
        None,
        description="3D: voxel size ratio (Z, Y, X), e.g. [4, 1, 1] when Z steps are 4 times "
        "the pixel size; default: isotropic.",
    )
    prob_threshold: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="Object probability threshold. Default: the value tuned after training "
        "(thresholds.json in the model folder), else 0.5.",
    )
    nms_threshold: float | None = Field(
        None,
        ge=0.0,
        lt=1.0,
        description="Overlap above which the less probable of two candidate objects is "
        "dropped. Default: the tuned value, else 0.4.",
    )
    feature_channels: int = Field(
        128, ge=8, le=512, description="Channels of the layer between the U-Net and the heads."
    )
    object_balance: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="How much small objects count in training: 0 = every pixel counts the "
        "same (StarDist's published loss, where one typical nucleus weighs as much as "
        "twenty tiny ones); 1 = an object smaller than the typical (median) object of the "
        "training masks counts as much as a typical one; in between, its pixels are "
        "weighted by (typical size / its size) to the power object_balance. Typical and "
        "larger objects keep the published weights. Experimental: on the nuclei benchmark it "
        "found more small nuclei, and more false objects, and lowered F1 in 3 of 4 runs.",
    )

    @field_validator("grid")
    @classmethod
    def _check_grid(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and any(g < 1 or g & (g - 1) or g > 8 for g in v):
            raise ValueError(f"grid {v}: every factor must be 1, 2, 4 or 8")
        return v

    @field_validator("anisotropy")
    @classmethod
    def _check_anisotropy(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (len(v) != 3 or any(a <= 0 for a in v)):
            raise ValueError(f"anisotropy {v} must be three positive numbers (Z, Y, X)")
        return v


def _default(section: type[_Section], name: str, **default: Any) -> Any:
    """The shared setting ``name`` of ``section`` with another default (same checks, text)."""
    return FieldInfo.merge_field_infos(section.model_fields[name], **default)


# StarDist's own defaults where they differ from the shared ones: what the stardist
# package uses (depth 3, batch 4, learning rate 3e-4, about 100 steps per epoch, a small
# validation set), with 160-pixel patches (the largest that fits every training image of
# the DSB nuclei benchmark) and intensity scaling. Set up like this, deepscope matched and
# passed the package on that benchmark (benchmarks/RESULTS.md, 2026-11-29, session 6).
class StarDistDataConfig(DataConfig):
    """How images are read, normalised and cut into training patches.

    StarDist's defaults: 160-pixel patches, intensity scaling.
    """

    patch_size: list[int] = _default(DataConfig, "patch_size", default_factory=lambda: [160, 160])
    intensity_jitter: float = _default(DataConfig, "intensity_jitter", default=0.5)


class StarDistModelConfig(ModelConfig):
    """The network: a U-Net whose size the user can choose.

    StarDist's default: depth 3.
    """

    depth: int = _default(ModelConfig, "depth", default=3)


class StarDistTrainingConfig(TrainingConfig):
    """How long and how the network is trained.

    StarDist's defaults: batch 4, 400 patches per epoch, learning rate 3e-4, halved after
    40 epochs without a better validation loss.
    """

    patches_per_epoch: int = _default(TrainingConfig, "patches_per_epoch", default=400)
    batch_size: int = _default(TrainingConfig, "batch_size", default=4)
    learning_rate: float = _default(TrainingConfig, "learning_rate", default=3e-4)
    lr_patience: int = _default(TrainingConfig, "lr_patience", default=40)
    val_patches: int = _default(TrainingConfig, "val_patches", default=32)


class StarDistConfig(TaskConfigBase):
    """Config of the StarDist task."""

    task: Literal["stardist"] = "stardist"
    data: StarDistDataConfig = Field(default_factory=StarDistDataConfig)  # type: ignore[assignment]
    model: StarDistModelConfig = Field(default_factory=StarDistModelConfig)  # type: ignore[assignment]
    training: StarDistTrainingConfig = Field(default_factory=StarDistTrainingConfig)  # type: ignore[assignment]
    stardist: StarDistSettings = Field(default_factory=StarDistSettings)

    @model_validator(mode="after")
    def _check(self) -> StarDistConfig:
        dims = self.data.spatial_dims
        s = self.stardist
        if s.grid is not None and len(s.grid) != dims:
            raise ValueError(f"stardist.grid {s.grid} must have {dims} numbers ({dims}D data)")
        if s.anisotropy is not None and dims != 3:
            raise ValueError("stardist.anisotropy is for 3D data (--3d); leave it out in 2D")
        div = 2**self.model.depth * max(grid_of(self))
        bad = [p for p in self.data.patch_size if p % div]
        if bad:
            raise ValueError(
                f"patch_size {self.data.patch_size} must be divisible by {div} (2 to the power "
                f"of the U-Net depth {self.model.depth}, times the grid {grid_of(self)})"
            )
        return self


def grid_of(config: TaskConfigBase) -> tuple[int, ...]:
    """The grid of a StarDist config, with its default filled in."""
    grid = config.stardist.grid
    if grid is None:
        return (2, 2) if config.data.spatial_dims == 2 else (1, 2, 2)
    return tuple(int(g) for g in grid)


def n_rays_of(config: TaskConfigBase) -> int:
    """The number of rays of a StarDist config, with its default filled in."""
    n = config.stardist.n_rays
    return n if n is not None else (32 if config.data.spatial_dims == 2 else 96)


# ---------------------------------------------------------------------------- targets


def ray_order(n_rays: int, k: int, flip: bool) -> np.ndarray:
    """Which ray of a turned image points where each ray of the original points (2D).

    Ray ``r`` of StarDist 2D points at angle ``2 pi r / n_rays``, ``(sin, cos)`` in
    (row, column). Turning the image ``k`` times by 90 degrees (``numpy.rot90``, which
    takes a step ``(dy, dx)`` to ``(-dx, dy)``) and then mirroring it left-right
    (``(dy, dx)`` to ``(dy, -dx)``) turns the rays with it.

    Returns
    -------
    numpy.ndarray
        ``order[r]``: the ray of the turned image that is ray ``r`` of the original.

    Raises
    ------
    DeepscopeError
        When the rays do not map onto each other (``n_rays`` not a multiple of 4).
    """
    angles = 2 * np.pi * np.arange(n_rays) / n_rays
    rays = np.stack([np.sin(angles), np.cos(angles)], axis=1)  # (n_rays, 2): dy, dx
    turned = rays.copy()
    for _ in range(k % 4):
        turned = np.stack([-turned[:, 1], turned[:, 0]], axis=1)
    if flip:
        turned[:, 1] *= -1
    distance = np.linalg.norm(turned[:, None, :] - rays[None, :, :], axis=2)
    order = distance.argmin(axis=1)
    if not np.allclose(distance[np.arange(n_rays), order], 0, atol=1e-6):
        raise DeepscopeError(
            f"the {n_rays} rays of this model do not map onto each other when the image is "
            "turned by 90 degrees, so test-time augmentation cannot be used",
            fix="leave out --tta (or train with a number of rays that is a multiple of 4)",
        )
    return order


def relabel(labels: np.ndarray) -> np.ndarray:
    """Return ``labels`` renumbered 1..n (0 stays background), as int32."""
    values, inverse = np.unique(np.asarray(labels), return_inverse=True)
    out = inverse.reshape(labels.shape).astype(np.int32)
    if values[0] != 0:
        out += 1
    return out


def star_targets(
    labels: np.ndarray,
    n_rays: int,
    grid: tuple[int, ...],
    rays: Any = None,
    anisotropy: tuple[float, ...] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Training targets of one label patch: object probability and ray distances.

    Parameters
    ----------
    labels
        Instance labels (*spatial), integers, 0 = background. Objects cut by the patch
        border end at the border.
    n_rays
        Number of rays (2D; in 3D the number of ``rays``).
    grid
        Subsampling per axis; the targets are taken at every ``grid``-th pixel.
    rays
        3D only: a ``stardist.Rays_*`` object.
    anisotropy
        3D only: voxel size ratio (Z, Y, X) for the probability.

    Returns
    -------
    prob, dist
        float32 arrays (*spatial / grid) and (n_rays, *spatial / grid).
    """
    from stardist.geometry import star_dist, star_dist3D
    from stardist.utils import edt_prob

    lbl = relabel(labels)
    if lbl.max() >= 2**16:  # the C code reads uint16 labels
        raise ValueError("more than 65535 objects in one patch")
    sub = tuple(slice(None, None, g) for g in grid)
    with warnings.catch_warnings():
        # A patch inside one object: stardist warns (to the user's terminal, in the
        # middle of the progress bar) and assumes background around the patch, which is
        # what the patch-wise targets need; nothing for the user to act on.
        warnings.filterwarnings("ignore", "EDT of constant label image")
        if lbl.ndim == 2:
            prob = edt_prob(lbl)[sub]
            dist = star_dist(lbl, n_rays, grid=grid)
        else:
            prob = edt_prob(lbl, anisotropy=anisotropy)[sub]
            dist = star_dist3D(lbl, rays, grid=grid)
    return prob.astype(np.float32), np.moveaxis(dist, -1, 0).astype(np.float32)


def object_weights(
    labels_grid: np.ndarray, balance: float, typical_size: float | None = None
) -> np.ndarray:
    """Per-pixel weights making small objects count more in the loss (``object_balance``).

    Parameters
    ----------
    labels_grid
        Label patches at the network's grid (N, *grid_spatial), 0 = background.
    balance
        Exponent β: the pixels of an object of ``n`` grid pixels, smaller than
        ``typical_size``, get ``(typical_size / n) ** β``; 0 gives every pixel the same
        weight, 1 every small object the total weight of a typical one.
    typical_size
        Size (grid pixels) from which objects keep the published weight 1; default: the
        median object size of the batch.

    Returns
    -------
    numpy.ndarray
        float32 (N, *grid_spatial): 1 on background and on objects of the typical size or
        larger; above 1 on smaller objects, capped at :data:`MAX_OBJECT_WEIGHT` (so that a
        sliver of an object cut by the patch border cannot dominate).
    """
    weights = np.ones(labels_grid.shape, np.float32)
    inside = labels_grid > 0
    if balance == 0 or not inside.any():
        return weights
    # One id per object of the batch: patch index * (max + 1) + label.
    ids = labels_grid.astype(np.int64) + (int(labels_grid.max()) + 1) * np.arange(
        len(labels_grid)
    ).reshape((-1,) + (1,) * (labels_grid.ndim - 1))
    _, index, sizes = np.unique(ids[inside], return_inverse=True, return_counts=True)
    typical = float(np.median(sizes)) if typical_size is None else float(typical_size)
    w = (typical / sizes[index].astype(np.float64)) ** balance
    weights[inside] = np.clip(w, 1.0, MAX_OBJECT_WEIGHT)
    return weights


def stardist_loss(
    output: torch.Tensor,
    prob: torch.Tensor,
    dist: torch.Tensor,
    object_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """StarDist's published loss of a batch.

    Binary cross-entropy of the object probability, plus 0.2 × the mean absolute error of
    the distances weighted by the true probability (so that the centres of objects count
    most; normalised by the mean weight), plus a 1e-4 penalty on the size of distances
    predicted outside objects. ``object_weight`` (N, *grid_spatial; see
    :func:`object_weights`) multiplies both the cross-entropy and the distance weight of
    each pixel; None = the published loss.

    Parameters
    ----------
    output
        Network output (N, 1 + n_rays, *grid_spatial): probability logit, distances.
    prob
        True object probability (N, *grid_spatial).
    dist
        True distances (N, n_rays, *grid_spatial).
    """
    logit, pred = output[:, 0], output[:, 1:]
    prob_loss = F.binary_cross_entropy_with_logits(logit, prob, weight=object_weight)
    weight = prob[:, None] if object_weight is None else (prob * object_weight)[:, None]
    dist_err = (weight * (pred - dist).abs()).mean() / (weight.mean() + _EPS)
    reg = ((1 - prob[:, None]) * pred.abs()).mean()
    return PROB_LOSS_WEIGHT * prob_loss + DIST_LOSS_WEIGHT * (dist_err + BACKGROUND_REG * reg)


# -------------------------------------------------------------------------- instances


_LOADAVG = "/proc/loadavg"


def nms_threads() -> int:
    """OpenMP threads for the NMS: every core when the others are idle right now, else one.

    The package's NMS is OpenMP code. On a quiet 2-core machine a second thread saves
    ~40 ms (1024x1024, 12,600 candidates: 0.063 vs 0.104 s for the NMS alone), but when the
    cores are busy (a training beside it) its team waits on them: 0.3-13 s measured
    instead of 0.2 s on one thread (benchmarks/RESULTS.md). So the team is only used when
    nothing else is running at this moment: Linux's count of runnable threads
    (``/proc/loadavg``, which includes the thread asking) must be 1. Elsewhere, or when
    it cannot be read, one thread.
    """
    cores = available_cores()
    if cores < 2:
        return 1
    try:
        with open(_LOADAVG) as f:
            running = int(f.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return 1
    return cores if running <= 1 else 1


@functools.cache
def _openmp_controller() -> Any:
    """The loaded OpenMP runtimes as threadpoolctl sees them, found once.

    ``threadpool_limits`` finds the runtimes anew at every call (0.5-1.6 ms, measured
    beside PyTorch); a controller made once sets them in ~10 us. The stardist package
    brings its own OpenMP runtime, so it is loaded before the controller looks.
    """
    import stardist.nms  # noqa: F401
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _nms_thread_limit(function: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``function`` with OpenMP limited to :func:`nms_threads` threads."""

    @functools.wraps(function)
    def limited(*args: Any, **kwargs: Any) -> Any:
        with _openmp_controller().limit(limits=nms_threads(), user_api="openmp"):
            return function(*args, **kwargs)

    return limited


def objects_2d(
    prob: np.ndarray,
    dist: np.ndarray,
    grid: tuple[int, ...],
    prob_threshold: float,
    nms_threshold: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The objects of 2D maps: the package's non-maximum suppression, without rendering.

    Parameters
    ----------
    prob, dist
        Probability (*grid_spatial) and distances (n_rays, *grid_spatial) on the grid.
    grid
        The grid factor per axis.
    prob_threshold, nms_threshold
        Thresholds of the non-maximum suppression.

    Returns
    -------
    points, prob, dist
        Centres (n, 2) in image pixels, probabilities (n,) and distances (n, n_rays), at
        least 1e-3 (the renderer needs positive ones), most probable first.
    """
    from stardist.nms import non_maximum_suppression

    # The NMS copies only the candidates' distances out of the view (a full contiguous
    # copy of the maps cost 15-80 ms on 1024x1024).
    dist_last = np.moveaxis(np.asarray(dist, dtype=np.float32), 0, -1)
    points, scores, dists = non_maximum_suppression(
        dist_last,
        np.ascontiguousarray(prob, dtype=np.float32),
        grid=grid,
        prob_thresh=prob_threshold,
        nms_thresh=nms_threshold,
    )
    return np.asarray(points), np.asarray(scores), np.maximum(dists, 1e-3)


def draw_polygons(
    points: np.ndarray,
    dist: np.ndarray,
    labels: np.ndarray,
    shape: tuple[int, int],
    origin: tuple[int, int] = (0, 0),
) -> np.ndarray:
    """Draw star-convex polygons into a label image of ``shape`` placed at ``origin``.

    The polygons are drawn in the order given, so a later one covers an earlier one
    where they overlap (give them least probable first, as the package does).

    Parameters
    ----------
    points, dist
        Centres (n, 2) in the coordinates of the whole image, and distances (n, n_rays).
    labels
        The number each polygon gets (n,).
    shape, origin
        The region drawn: its size, and its first pixel in the whole image.

    Returns
    -------
    numpy.ndarray
        uint32 label image of ``shape``; 0 where no polygon is.
    """
    from stardist.geometry import dist_to_coord
    from stardist.geometry.geom2d import polygons_to_label_coord

    if not len(points):
        return np.zeros(shape, np.uint32)
    local = np.asarray(points, np.float64) - np.asarray(origin, np.float64)
    coord = dist_to_coord(np.asarray(dist, np.float64), local)
    drawn = polygons_to_label_coord(coord, shape, labels=np.asarray(labels, np.int64) - 1)
    return drawn.astype(np.uint32)


@_nms_thread_limit
def instances_from_maps(
    prob: np.ndarray,
    dist: np.ndarray,
    shape: tuple[int, ...],
    grid: tuple[int, ...],
    prob_threshold: float,
    nms_threshold: float,
    rays: Any = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Objects from probability and distance maps on the grid: NMS, then rendering.

    Parameters
    ----------
    prob
        Object probability on the grid (*grid_spatial).
    dist
        Distances (n_rays, *grid_spatial), in image pixels.
    shape
        The image's spatial shape.
    grid
        The grid factor per axis.
    prob_threshold, nms_threshold
        Thresholds of the non-maximum suppression.
    rays
        3D only: the ``stardist.Rays_*`` object.

    Returns
    -------
    labels, details
        Labels (*shape), uint16 (uint32 above 65535 objects), numbered 1..n; details
        with ``points`` (n, dims; object centres in pixels), ``prob`` (n,) and ``dist``
        (n, n_rays), row ``k - 1`` describing label ``k``.
    """
    from stardist.geometry import polygons_to_label, polyhedron_to_label
    from stardist.nms import non_maximum_suppression_3d

    prob = np.ascontiguousarray(prob, dtype=np.float32)
    if len(shape) == 2:
        points, scores, dists = objects_2d(prob, dist, grid, prob_threshold, nms_threshold)
        labels = polygons_to_label(dists, points, shape=shape, prob=scores)
    else:
        # Polyhedra of zero volume upset the 3D NMS: clip before it.
        dist_last = np.moveaxis(np.asarray(dist, dtype=np.float32), 0, -1)
        dist_last = np.ascontiguousarray(np.maximum(dist_last, 1e-3))
        points, scores, dists = non_maximum_suppression_3d(
            dist_last, prob, rays, grid=grid, prob_thresh=prob_threshold, nms_thresh=nms_threshold
        )
        labels = (
            polyhedron_to_label(dists, points, rays, shape=shape, prob=scores, verbose=False)
            if len(points)
            else np.zeros(shape, np.int32)
        )
    # Label k paints row k - 1; a candidate hidden entirely by more probable ones vanishes.
    present = np.flatnonzero(np.bincount(labels.ravel()))  # sorted, 4x faster than unique
    present = present[present > 0]
    keep = present - 1
    dtype = np.uint16 if len(present) < 2**16 else np.uint32
    if len(present) == 0 or present[-1] == len(present):  # already 1..n: no lookup needed
        out = labels.astype(dtype)
    else:
        lookup = np.zeros(int(present[-1]) + 1, dtype=dtype)
        lookup[present] = np.arange(1, len(present) + 1)
        out = lookup[labels]
    details = {
        "points": np.asarray(points)[keep].reshape(-1, len(shape)),
        "prob": np.asarray(scores, dtype=np.float32)[keep],
        "dist": np.asarray(dists, dtype=np.float32).reshape(-1, dist.shape[0])[keep],
    }
    return out, details


# ------------------------------------------------------------------------------- task


@register_task
class StarDistTask(Task):
    """Instance segmentation of star-convex objects (nuclei) with StarDist."""

    name = "stardist"
    title = "Instance segmentation (StarDist)"
    description = (
        "Finds each object (typically nuclei) one by one, even when they touch, as star-convex "
        "polygons (2D) or polyhedra (3D), learnt from images and instance masks (one number "
        "per object). Gives label images, ImageJ ROIs and per-object measurements."
    )
    config_class = StarDistConfig
    needs_targets = True
    normalize_targets = False
    qc_kind = "instance"
    #: Each image is mapped by its own percentiles (1 %, 99.8 %), as StarDist does.
    normalize_per_image = True
    network_fields = ("n_rays", "grid", "feature_channels")
    #: Files written beside each label image by ``deepscope predict``.
    extra_file_suffixes = ["rois.zip", "measurements.csv"]
    #: 2D only: the rays turn with the image (see :meth:`dihedral_channels`).
    tta_ok = True
    tta_dims = (2,)
    #: Objects, ROIs and measurements read the maps at the grid only.
    reads_grid_output = True
    int8_ok = True

    def __init__(self, config: TaskConfigBase):
        super().__init__(config)
        s = self.settings
        self.prob_threshold = s.prob_threshold
        self.nms_threshold = s.nms_threshold
        self._last: tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]] | None = None
        #: Median object size of the training masks in grid pixels (``object_balance``);
        #: set by :meth:`prepare_targets`, None = each batch's median.
        self._typical_size: float | None = None

    # ------------------------------------------------------------------ settings

    @property
    def settings(self) -> StarDistSettings:
        """The ``stardist`` section of the config."""
        return self.config.stardist

    @property
    def dims(self) -> int:
        """2 or 3."""
        return self.config.data.spatial_dims

    @property
    def grid(self) -> tuple[int, ...]:
        """Grid factor per axis (default filled in)."""
        return grid_of(self.config)

    @property
    def n_rays(self) -> int:
        """Number of rays (default filled in)."""
        return n_rays_of(self.config)

    @property
    def anisotropy(self) -> tuple[float, ...] | None:
        """3D voxel size ratio (Z, Y, X), or None."""
        a = self.settings.anisotropy
        return tuple(a) if a is not None else None

    @cached_property
    def rays(self) -> Any:
        """3D: the golden-spiral rays (``stardist.Rays_GoldenSpiral``); None in 2D."""
        if self.dims != 3:
            return None
        from stardist.rays3d import Rays_GoldenSpiral

        return Rays_GoldenSpiral(self.n_rays, anisotropy=self.anisotropy)

    def thresholds(self) -> tuple[float, float]:
        """(probability, NMS) thresholds in use: config, else tuned, else defaults."""
        p = self.prob_threshold if self.prob_threshold is not None else DEFAULT_PROB_THRESHOLD
        n = self.nms_threshold if self.nms_threshold is not None else DEFAULT_NMS_THRESHOLD
        return float(p), float(n)

    def use_tuned_settings(self, settings: dict[str, Any]) -> None:
        """Use the thresholds tuned after training, unless the config fixes them."""
        if self.settings.prob_threshold is None and settings.get("prob_threshold") is not None:
            self.prob_threshold = float(settings["prob_threshold"])
        if self.settings.nms_threshold is None and settings.get("nms_threshold") is not None:
            self.nms_threshold = float(settings["nms_threshold"])

    # ------------------------------------------------------------------- network

    def out_channels(self, in_channels: int) -> int:
        """One probability channel plus one channel per ray."""
        return 1 + self.n_rays

    def divisibility(self) -> int:
        """U-Net divisibility times the largest grid factor."""
        return 2**self.config.model.depth * max(self.grid)

    def output_stride(self) -> tuple[int, ...]:
        """The network predicts on the grid."""
        return self.grid

    def build_model(self, in_channels: int) -> nn.Module:
        """StarDist network: grid stem, U-Net, probability and distance heads."""
        from deepscope.engine.models.stardist_net import StarDistNet

        return StarDistNet(**self.model_kwargs(in_channels))

    def model_kwargs(self, in_channels: int) -> dict:
        """Keyword arguments of :class:`StarDistNet` (recorded by the export)."""
        m = self.config.model
        return dict(
            dims=self.dims,
            in_channels=in_channels,
            n_rays=self.n_rays,
            grid=list(self.grid),
            depth=m.depth,
            base_channels=m.base_channels,
            batch_norm=m.batch_norm,
            dropout=m.dropout,
            feature_channels=self.settings.feature_channels,
        )

    # ------------------------------------------------------------------ training

    def prepare_targets(
        self, masks: list[np.ndarray], log: Callable[[str], None] = print
    ) -> list[np.ndarray]:
        """Check the masks are label images and fill holes in objects.

        Returns the label images (1, *spatial) as float32 (exact up to 2**24 objects);
        the distance and probability targets are computed per patch after augmentation.

        Raises
        ------
        DeepscopeError
            When a mask is not an instance label image.
        """
        from stardist.utils import fill_label_holes

        out = []
        for i, m in enumerate(masks):
            problem = label_problem(m)
            if problem is not None:
                raise DeepscopeError(f"training mask {i + 1}: {problem[0]}", fix=problem[1])
            lbl = np.asarray(m[0] if m.ndim == self.dims + 1 else m).astype(np.int64)
            out.append(fill_label_holes(lbl)[None].astype(np.float32))
        areas = [np.bincount(o.astype(np.int64).ravel())[1:] for o in out]
        areas = np.concatenate([a[a > 0] for a in areas]) if out else np.zeros(0)
        n_objects = len(areas)
        # object_balance: the typical object, in pixels of the network's grid
        self._typical_size = float(np.median(areas)) / math.prod(self.grid) if n_objects else None
        log(
            f"{n_objects} objects in {len(out)} mask(s); {self.n_rays} rays, grid "
            f"{'x'.join(map(str, self.grid))}."
        )
        return out

    def batch_targets(
        self, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Targets of a batch of label patches (N, 1, *spatial).

        Returns the probability and distances, and the per-pixel object weights of
        ``stardist.object_balance`` (None when it is 0: the published loss).
        """
        probs, dists = [], []
        lbls = np.rint(labels[:, 0].detach().cpu().numpy()).astype(np.int64)
        for lbl in lbls:
            p, d = star_targets(lbl, self.n_rays, self.grid, self.rays, self.anisotropy)
            probs.append(p)
            dists.append(d)
        prob = torch.from_numpy(np.stack(probs)).to(labels.device)
        dist = torch.from_numpy(np.stack(dists)).to(labels.device)
        balance = self.settings.object_balance
        if not balance:
            return prob, dist, None
        sub = (slice(None),) + tuple(slice(None, None, g) for g in self.grid)
        weight = object_weights(lbls[sub], balance, self._typical_size)
        return prob, dist, torch.from_numpy(weight).to(labels.device)

    def training_loss(
        self,
        model: nn.Module,
        batch: dict[str, torch.Tensor],
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """StarDist's loss (see :func:`stardist_loss`); targets come from the label patch."""
        prob, dist, weight = self.batch_targets(batch["target"])
        output = model(batch["input"]).float()
        return stardist_loss(output, prob, dist, weight)

    # ---------------------------------------------------------------- prediction

    def adapt_channels(self, image_cf: np.ndarray, in_channels: int) -> np.ndarray:
        """Read an RGB(A) picture as grey for a one-channel model, and vice versa.

        A one-channel model (e.g. the shipped ``nuclei`` model) given a colour image gets
        the mean of its red, green and blue channels; a three-channel model given a grey
        image gets it three times. Other combinations are left for the channel check.
        """
        c = image_cf.shape[0]
        if in_channels == 1 and c in (3, 4):
            return np.asarray(image_cf[:3], dtype=np.float32).mean(axis=0, keepdims=True)
        if in_channels == 3 and c == 1:
            return np.repeat(image_cf, 3, axis=0)
        return image_cf

    def denormalize_output(
        self, output: np.ndarray, normalizer: PercentileNormalizer
    ) -> np.ndarray:
        """Probability (sigmoid of channel 0) and distances (at least 0, in pixels).

        Written into ``output`` when it is a writable float32 array (prediction's own),
        in PyTorch (multi-threaded): a new 33 x 512 x 512 array for a 1024x1024 image
        cost ~9 ms, mostly the first touch of its memory (benchmarks/RESULTS.md).
        """
        import torch

        out = output
        if not (output.dtype == np.float32 and output.flags.writeable):
            out = np.array(output, dtype=np.float32)
        x = torch.from_numpy(out)
        torch.sigmoid(x[0], out=x[0])
        torch.clamp_min(x[1:], 0, out=x[1:])
        return out

    def dihedral_channels(self, k: int, flip: bool) -> np.ndarray:
        """Output channels of an image turned ``k`` times by 90 degrees, then mirrored.

        The probability stays channel 0; each ray's distance is read from the turned
        image's ray that points the same way (see :func:`ray_order`). 2D only.
        """
        if self.dims != 2:
            raise DeepscopeError(
                "test-time augmentation is available for 2D StarDist models only (the "
                "rays of a 3D model do not map onto each other when the image is turned)",
                fix="leave out --tta",
            )
        return np.concatenate([[0], 1 + ray_order(self.n_rays, k, flip)])

    def grid_maps(self, output: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probability and distances at the network's own grid points.

        ``output`` is image-sized, or already at the grid (a ``GridOutput``, see
        ``workflow.predict.predict_raw(grid=True)``).
        """
        if getattr(output, "image_shape", None) is not None:
            maps = np.asarray(output)
            return maps[0], maps[1:]
        sub = tuple(slice(None, None, g) for g in self.grid)
        return output[0][sub], output[1:][(slice(None),) + sub]

    def instances_with_details(
        self,
        output: np.ndarray,
        prob_threshold: float | None = None,
        nms_threshold: float | None = None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Labels and per-object details of a de-normalised output (1 + n_rays, *spatial).

        ``output`` is what ``workflow.predict.predict_raw`` returns (image-sized, or at the
        grid with ``grid=True``). The
        thresholds default to :meth:`thresholds`. See :func:`instances_from_maps`.
        """
        if (
            prob_threshold is None
            and nms_threshold is None
            and self._last is not None
            and self._last[0] is output
        ):
            return self._last[1], self._last[2]
        p_default, n_default = self.thresholds()
        prob, dist = self.grid_maps(output)
        labels, details = instances_from_maps(
            prob,
            dist,
            image_shape_of(output),
            self.grid,
            p_default if prob_threshold is None else prob_threshold,
            n_default if nms_threshold is None else nms_threshold,
            self.rays,
        )
        if prob_threshold is None and nms_threshold is None:
            self._last = (output, labels, details)  # postprocess, then the extra files
        return labels, details

    def objects(self, output: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The objects of a de-normalised 2D output, found but not drawn (see :func:`objects_2d`).

        Used for images predicted block by block (:mod:`deepscope.workflow.instances_in_blocks`).
        """
        prob, dist = self.grid_maps(output)
        p, n = self.thresholds()
        return _nms_thread_limit(objects_2d)(prob, dist, self.grid, p, n)

    def objects_in_blocks_ok(self) -> bool:
        """Whether images too large for memory may be segmented block by block (2D only)."""
        return self.dims == 2

    def instances(self, output: np.ndarray) -> np.ndarray:
        """Instance labels (*spatial) of a de-normalised output."""
        return self.instances_with_details(output)[0]

    def postprocess(self, output: np.ndarray) -> np.ndarray:
        """Return the label image (1, *spatial)."""
        return self.instances(output)[None]

    def write_extra_files(
        self,
        raw: np.ndarray,
        result: np.ndarray,
        image_cf: np.ndarray,
        result_path: Path,
        overwrite: bool,
    ) -> dict[str, str]:
        """Write ``<name>_rois.zip`` (ImageJ ROIs) and ``<name>_measurements.csv``."""
        from deepscope.data.io import atomic_write_bytes, atomic_write_text

        labels, details = self.instances_with_details(raw)
        rois = result_path.with_name(extra_file_name(result_path.name, "rois.zip"))
        table = result_path.with_name(extra_file_name(result_path.name, "measurements.csv"))
        atomic_write_bytes(rois, roi_zip_bytes(details, self.rays), overwrite=overwrite)
        atomic_write_text(table, measurements_csv(labels, image_cf, details), overwrite=overwrite)
        return {"rois": rois.name, "measurements": table.name}

    def object_measurements(self, raw: np.ndarray, image_cf: np.ndarray) -> dict[str, np.ndarray]:
        """The columns of ``<name>_measurements.csv`` of a de-normalised output, in memory.

        See :func:`measurements`.
        """
        labels, details = self.instances_with_details(raw)
        return measurements(labels, image_cf, details)

    # ---------------------------------------------------------------- validation

    def check_training_data(self, images: Path, targets: Path | None = None) -> ValidationReport:
        """Check the training data; a default patch size first shrinks to fit the images.

        StarDist's default patches (160 pixels) are larger than some data sets' images.
        When the user did not choose a patch size, it becomes the largest that fits the
        smallest image (a multiple of the network's divisibility, see
        :func:`fit_default_patch`), and the report says so; a patch size the user chose
        is kept, and images smaller than it are errors as for every task.
        """
        from deepscope.data.validation import Finding

        before = list(self.config.data.patch_size)
        fitted = fit_default_patch(self.config, Path(images), self.divisibility())
        if fitted is not None:
            self.config = self.config.model_copy(
                update={"data": self.config.data.model_copy(update={"patch_size": fitted})}
            )
        report = super().check_training_data(images, targets)
        if fitted is not None:
            report.findings.append(
                Finding(
                    "warning",
                    Path(images),
                    f"the default training patch size {' × '.join(map(str, before))} is "
                    "larger than the smallest image, so patches of "
                    f"{' × '.join(map(str, fitted))} pixels are used.",
                    "nothing to do; to choose yourself, give a patch size (option "
                    "--patch-size, setting data.patch_size).",
                )
            )
            report.summary["warnings"] = len(report.warnings)
        return report

    def extra_checks(
        self,
        image_path: Path,
        image_cf: np.ndarray,
        target_path: Path | None,
        target_cf: np.ndarray | None,
    ) -> list[Finding]:
        """Masks must be instance label images (more checks: ``stardist_checks``)."""
        from deepscope.data.validation import Finding

        if target_path is None or target_cf is None:
            return []
        problem = label_problem(target_cf)
        if problem is not None:
            return [Finding("error", target_path, *problem)]
        try:
            from deepscope.tasks import stardist_checks
        except ImportError:
            return []
        check = getattr(stardist_checks, "check_mask", None)
        return list(check(self, image_path, image_cf, target_path, target_cf)) if check else []


def fit_default_patch(config: TaskConfigBase, images: Path, divisibility: int) -> list[int] | None:
    """The default patch size shrunk to fit the smallest image of ``images``, or None.

    Only the files' headers are read; files that cannot be opened are left to the data
    check, which reports them.

    Parameters
    ----------
    config
        The task's config; its ``data`` section gives the patch size, axes and 2D/3D.
    images
        The folder of training images.
    divisibility
        Patch sides are multiples of this number, and never smaller than it (the data
        check then reports images smaller than that as too small).

    Returns
    -------
    list of int or None
        The fitted patch size; None when the user chose the patch size
        (``data.patch_size`` was given) or the default already fits every image.
    """
    from deepscope.data.io import list_images, spatial_shape

    data = config.data
    if "patch_size" in data.model_fields_set:
        return None
    try:
        paths = list_images(images)
    except DeepscopeError:
        return None  # the data check says what is wrong with the folder
    smallest: list[int] | None = None
    for path in paths:
        try:
            spatial = spatial_shape(path, data.axes, data.spatial_dims)
        except DeepscopeError:
            continue
        smallest = list(spatial) if smallest is None else list(map(min, smallest, spatial))
    if smallest is None:
        return None
    fitted = [
        max(divisibility, min(p, s // divisibility * divisibility))
        for p, s in zip(data.patch_size, smallest, strict=True)
    ]
    return fitted if fitted != list(data.patch_size) else None


def label_problem(mask: np.ndarray) -> tuple[str, str] | None:
    """Say why ``mask`` (channel-first) is not an instance label image, or None.

    Returns
    -------
    (problem, fix) or None
    """
    data = np.asarray(mask)
    if data.ndim >= 3 and data.shape[0] != 1:
        return (
            f"this mask has {data.shape[0]} channels (a colour or multi-channel image), but a "
            "StarDist mask must be one grey label image: 0 for background and one number per "
            "object.",
            "save the labels as a single-channel 16-bit image (e.g. Fiji: Image > Type > "
            "16-bit on a label image), or check the axes (--axes).",
        )
    if data.dtype.kind == "f":
        finite = np.isfinite(data)
        if not finite.all():
            return None  # reported by the shared NaN check
        if np.any(data != np.round(data)):
            return (
                "this mask holds fractional values; a label image holds whole numbers (0 for "
                "background, 1, 2, … one per object).",
                "give the label image as drawn (e.g. exported from Fiji's Label Editor or "
                "napari), not a smoothed or resized copy.",
            )
    if data.size and data.min() < 0:
        return (
            f"this mask holds negative values (down to {data.min()}).",
            "give a label image with 0 for background and 1, 2, … for the objects.",
        )
    return None


# ------------------------------------------------------------------------ exports


def roi_zip_bytes(details: dict[str, np.ndarray], rays: Any = None) -> bytes:
    """An ImageJ/Fiji ROI set (zip) of the objects.

    2D: one polygon per object (its star-convex outline), named by its label.
    3D: one point per object at its centre, on its Z slice (ImageJ ROIs are 2D; the
    label image holds the full shapes).
    """
    from roifile import ROI_TYPE, ImagejRoi

    points = details["points"]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        if points.shape[1] == 2 and len(points):
            from stardist.geometry import dist_to_coord

            coords = dist_to_coord(details["dist"], points)  # (n, 2, n_rays): y, x
            for k, c in enumerate(coords, start=1):
                roi = ImagejRoi.frompoints(np.stack([c[1], c[0]], axis=1), name=f"{k:05d}")
                roi.roitype = ROI_TYPE.POLYGON
                zf.writestr(f"{k:05d}.roi", roi.tobytes())
        else:
            for k, (z, y, x) in enumerate(points, start=1):
                roi = ImagejRoi.frompoints(np.array([[x, y]], float), name=f"{k:05d}", z=int(z))
                roi.roitype = ROI_TYPE.POINT
                zf.writestr(f"{k:05d}.roi", roi.tobytes())
    return buf.getvalue()


def measurements_csv(
    labels: np.ndarray, image_cf: np.ndarray, details: dict[str, np.ndarray]
) -> str:
    """CSV text: one row per object with label, centroid, area/volume, mean intensities, prob.

    Columns: those of :func:`measurements`.
    """
    return columns_csv(measurements(labels, image_cf, details))


def measurements(
    labels: np.ndarray, image_cf: np.ndarray, details: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Per-object measurements of a label image, one entry per object, by column name.

    Columns: ``label``, ``centroid_z`` (3D), ``centroid_y``, ``centroid_x``, ``area``
    (2D, pixels) or ``volume`` (3D, voxels), ``mean_intensity`` (one channel) or
    ``mean_intensity_ch0``, ``…_ch1`` … (several), ``probability``.

    Parameters
    ----------
    labels
        Instance labels (*spatial), as drawn from ``details``.
    image_cf
        The image the objects were found in, channel first (C, *spatial).
    details
        The objects' details from :meth:`StarDistTask.instances_with_details` (``prob``).
    """
    from skimage.measure import regionprops_table

    dims = labels.ndim
    intensity = np.moveaxis(np.asarray(image_cf, dtype=np.float32), 0, -1)
    props = regionprops_table(
        labels.astype(np.int32),
        intensity_image=intensity,
        properties=("label", "centroid", "area", "intensity_mean"),
    )
    n_ch = intensity.shape[-1]
    means = np.stack(
        [
            props[f"intensity_mean-{c}" if f"intensity_mean-{c}" in props else "intensity_mean"]
            for c in range(n_ch)
        ],
        axis=1,
    )
    centroids = np.stack([props[f"centroid-{i}"] for i in range(dims)], axis=1)
    return measurement_columns(
        props["label"], centroids, props["area"], means, details["prob"][props["label"] - 1]
    )


def measurement_columns(
    labels: np.ndarray,
    centroids: np.ndarray,
    sizes: np.ndarray,
    means: np.ndarray,
    prob: np.ndarray,
) -> dict[str, Any]:
    """The columns of ``NAME_measurements.csv``, one entry per object.

    Parameters
    ----------
    labels
        Object labels (n,).
    centroids
        (n, dims) in pixels, Z Y X order.
    sizes
        Pixels (2D: ``area``) or voxels (3D: ``volume``) per object (n,).
    means
        Mean intensity per object and channel (n, channels).
    prob
        Probability per object (n,).
    """
    dims = centroids.shape[1]
    columns: dict[str, Any] = {"label": labels}
    for i, a in enumerate(["z", "y", "x"][-dims:]):
        columns[f"centroid_{a}"] = np.round(centroids[:, i], 2)
    columns["area" if dims == 2 else "volume"] = np.asarray(sizes).astype(np.int64)
    n_ch = means.shape[1]
    for c in range(n_ch):
        columns["mean_intensity" if n_ch == 1 else f"mean_intensity_ch{c}"] = np.round(
            means[:, c], 3
        )
    columns["probability"] = np.round(prob, 4)
    return columns


def columns_csv(columns: dict[str, Any]) -> str:
    """CSV text of equally long columns, one row per entry, the names as header."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in zip(*columns.values(), strict=True):
        writer.writerow(row)
    return out.getvalue()
