"""Semantic segmentation with a U-Net: one class per pixel (2D and 3D).

Masks are integer images whose pixel values are class numbers: 0 (background), 1, 2, …
A binary mask saved with the values 0 and 255 (or 0 and any other single value) is
recognised and read as classes 0 and 1, and the training log says so.

The network has one output channel per class; a softmax turns them into class
probabilities. It is trained with cross-entropy plus soft Dice: cross-entropy learns
every pixel, Dice measures the overlap of each class as a whole, so that a class that
covers few pixels (membranes, small cells) weighs as much as the background. With
``class_weights: auto`` (the default) the cross-entropy also weighs each class by the
inverse square root of its share of the training pixels, computed from the masks.

``mode: boundary`` (the U-Net baseline of the StarDist paper, Schmidt et al. 2018) reads
the masks as instance masks (one number per object) and learns three classes:
background (0), object boundary (1) and object interior (2). Touching objects are then
separated because each has its own interior, from which the object is grown back over
its boundary.

Instances (``--instances``) come from the class map: in boundary mode by growing the
interiors; otherwise from the connected regions of each class other than 0, optionally
split by a seeded watershed (``instances: watershed``) where round objects touch.
``instances: outlines`` is for two-class masks whose class 0 is the outline *between*
cells (membranes in EM, cell borders in epithelia): the regions where the network is
sure of class 1 (probability above ``seed_threshold``) are grown over the outlines,
downhill in the probability of class 0, until they meet, so every pixel belongs to a cell
and a gap in a predicted membrane no longer merges two cells. After training the seed
threshold is chosen on the validation images (lowest adapted Rand error).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn
from torch.nn import functional as F

from deepscope.config import TaskConfigBase, _Section
from deepscope.errors import DeepscopeError
from deepscope.tasks.base import Task, register_task

if TYPE_CHECKING:
    from deepscope.data.normalize import PercentileNormalizer
    from deepscope.data.validation import Finding

MAX_CLASSES = 255
_SEED_DEPTH = 2.0  # watershed: a dent shallower than this (pixels) does not split an object
_MAX_WEIGHT = 50.0  # largest automatic class weight relative to the smallest
_IMBALANCE_SHARE = 0.2  # a class below this share of the pixels makes pixel accuracy misleading
DEFAULT_SEED_THRESHOLD = 0.9
"""instances 'outlines': seed threshold used until one is chosen on validation images."""
_MIN_SEED_SIZE = 10  # instances 'outlines': smaller confident specks (pixels) start no cell


# ----------------------------------------------------------------------------- configs


class SemanticSettings(_Section):
    """Settings of the semantic segmentation task."""

    classes: int | None = Field(
        None,
        ge=2,
        le=MAX_CLASSES,
        description="Number of classes, background (0) included: 2 for object/background "
        "masks, more for masks with several classes. Default 2 (3 in boundary mode).",
    )
    mode: Literal["classes", "boundary"] = Field(
        "classes",
        description="'classes': masks hold class numbers. 'boundary': masks hold one number "
        "per object (instance masks); the network learns background, boundary and "
        "interior, which separates touching objects.",
    )
    class_names: list[str] | None = Field(
        None, description="Names of the classes for reports, e.g. ['membrane', 'cell']."
    )
    class_weights: Literal["auto"] | list[float] | None = Field(
        "auto",
        description="'auto': weigh each class in the loss by how rare it is in the training "
        "masks; a list gives one weight per class; null weighs every pixel alike.",
    )
    dice_weight: float = Field(
        1.0, ge=0.0, le=10.0, description="Weight of the Dice term added to the cross-entropy."
    )
    threshold: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="Two classes only: a pixel is class 1 when its probability exceeds this. "
        "Default: the threshold chosen by 'deepscope qc', else 0.5.",
    )
    instances: Literal["components", "watershed", "outlines"] = Field(
        "components",
        description="How objects are found for --instances (classes mode): 'components' "
        "(connected regions), 'watershed' (also splits touching round objects) or "
        "'outlines' (two classes where class 0 is the membrane or border between cells, "
        "e.g. EM: cells are grown from their sure parts until they meet).",
    )
    seed_threshold: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="instances 'outlines' only: probability of class 1 a pixel needs to "
        "start a cell. Default: the value chosen on the validation images after training, "
        f"else {DEFAULT_SEED_THRESHOLD}.",
    )
    min_object_size: int = Field(
        0, ge=0, description="Objects smaller than this many pixels are dropped from instances."
    )
    predict_instances: bool = Field(
        False, description="Also write an instance label image (<name>_instances.tif)."
    )
    save_probabilities: bool = Field(
        False, description="Also write the class probabilities (<name>_probabilities.tif)."
    )

    @property
    def n_classes(self) -> int:
        """The number of classes the network predicts."""
        if self.mode == "boundary":
            return 3
        return self.classes or 2

    @model_validator(mode="after")
    def _check(self) -> SemanticSettings:
        n = self.n_classes
        if self.mode == "boundary" and self.classes not in (None, 3):
            raise ValueError(
                "boundary mode always has 3 classes (background, boundary, interior); "
                "leave out classes (--classes)"
            )
        if isinstance(self.class_weights, list):
            if len(self.class_weights) != n:
                raise ValueError(
                    f"class_weights has {len(self.class_weights)} numbers but there are {n} "
                    "classes; give one weight per class, or 'auto'"
                )
            if any(w <= 0 for w in self.class_weights):
                raise ValueError("class_weights must all be positive")
        if self.class_names is not None and len(self.class_names) != n:
            raise ValueError(
                f"class_names has {len(self.class_names)} names but there are {n} classes"
            )
        if self.threshold is not None and n != 2:
            raise ValueError("threshold applies to two classes only; leave it out")
        if self.instances == "outlines" and (n != 2 or self.mode != "classes"):
            raise ValueError(
                "instances 'outlines' needs two classes (0 = outline between cells, 1 = cell) "
                "in classes mode; use 'components' or 'watershed'"
            )
        if self.seed_threshold is not None and self.instances != "outlines":
            raise ValueError("seed_threshold applies to instances 'outlines' only; leave it out")
        return self


class SemanticConfig(TaskConfigBase):
    """Config of the semantic segmentation task."""

    task: Literal["semantic"] = "semantic"
    semantic: SemanticSettings = Field(default_factory=SemanticSettings)


# -------------------------------------------------------------------------- masks


class MaskError(ValueError):
    """A mask that is not a valid class image: ``problem`` and ``fix`` in plain words."""

    def __init__(self, problem: str, fix: str):
        super().__init__(f"{problem} → {fix}")
        self.problem, self.fix = problem, fix


def class_names(settings: SemanticSettings) -> list[str]:
    """Display names of the classes (from the config, else defaults by mode)."""
    if settings.class_names:
        return list(settings.class_names)
    if settings.mode == "boundary":
        return ["background", "boundary", "interior"]
    if settings.n_classes == 2:
        return ["background", "foreground"]
    return [f"class {c}" for c in range(settings.n_classes)]


def mask_problem(mask: np.ndarray) -> tuple[str, str] | None:
    """Say why ``mask`` cannot be a label/class image, or None when it can.

    Parameters
    ----------
    mask
        A mask, channel-first (C, *spatial) as read, any dtype.

    Returns
    -------
    (problem, fix) or None
    """
    if mask.ndim >= 3 and mask.shape[0] != 1:
        return (
            f"this mask has {mask.shape[0]} channels (a colour or multi-channel image), but a "
            "mask must be one grey image whose pixel values are class numbers.",
            "save the mask as a single-channel 8-bit or 16-bit image whose values are 0 for "
            "background and 1, 2, … for the classes (Fiji: Image > Type > 8-bit), or check "
            "the axes (--axes).",
        )
    data = np.asarray(mask)
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)):
            return None  # reported by the shared NaN check
        if np.any(data != np.round(data)):
            return (
                "this mask holds fractional values (e.g. "
                f"{float(data[data != np.round(data)].flat[0]):.3g}); a mask must hold whole "
                "class numbers, not intensities or probabilities.",
                "threshold the image into classes (Fiji: Image > Adjust > Threshold, then "
                "save as 8-bit), or give the mask that was drawn, not a smoothed copy.",
            )
    if data.size and data.min() < 0:
        return (
            f"this mask holds negative values (down to {data.min()}); class numbers start at 0.",
            "save a mask with 0 for background and 1, 2, … for the classes.",
        )
    return None


def _binary_value(values: np.ndarray) -> int | None:
    """The non-zero value of a {0, v} (v > 1) mask, else None."""
    if len(values) == 2 and values[0] == 0 and values[1] > 1:
        return int(values[1])
    if len(values) == 1 and values[0] > 1:
        return int(values[0])
    return None


def boundary_classes(instances: np.ndarray) -> np.ndarray:
    """Turn an instance mask into background (0) / boundary (1) / interior (2) classes.

    Parameters
    ----------
    instances
        Integer array (*spatial) with 0 for background and one number per object.

    Returns
    -------
    numpy.ndarray
        uint8 array of the same shape: 1 on the pixels of an object that touch another
        object or the background, 2 on the other object pixels, 0 elsewhere.
    """
    from skimage.segmentation import find_boundaries

    labels = np.asarray(instances).astype(np.int64, copy=False)
    out = np.zeros(labels.shape, dtype=np.uint8)
    inside = labels > 0
    out[inside] = 2
    out[find_boundaries(labels, mode="inner") & inside] = 1
    return out


def mask_to_classes(mask: np.ndarray, settings: SemanticSettings) -> tuple[np.ndarray, str | None]:
    """Turn a mask into the class map the network learns.

    Parameters
    ----------
    mask
        A mask (*spatial) or (1, *spatial) with whole-number values.
    settings
        The task settings (number of classes and mode).

    Returns
    -------
    classes, note
        uint8 class map (*spatial); ``note`` says in words how the values were read
        when they were mapped (a binary 0/255 mask), else None.

    Raises
    ------
    MaskError
        When a value is not a valid class number, with what to do in plain words.
    """
    data = np.asarray(mask)
    if data.ndim >= 3 and data.shape[0] == 1:
        data = data[0]
    problem = mask_problem(data[None])
    if problem is not None:
        raise MaskError(*problem)
    values = np.unique(data)
    binary = _binary_value(values)
    if settings.mode == "boundary":
        from skimage.measure import label

        note = None
        ints = data.astype(np.int64)
        if binary is not None:
            ints = label(ints > 0, connectivity=1)
            note = (
                f"the mask holds only 0 and {binary}: objects were taken as its connected "
                f"regions of {binary} (touching objects cannot be told apart in such a mask)"
            )
        return boundary_classes(ints), note
    n = settings.n_classes
    if binary is not None and n == 2:
        names = class_names(settings)
        note = (
            f"binary mask with values 0 and {binary}: read as 0 → class 0 "
            f"({names[0]}), {binary} → class 1 ({names[1]})"
        )
        return (data > 0).astype(np.uint8), note
    top = int(values.max()) if values.size else 0
    if top >= n:
        many = len(values) > n + 1
        hint = (
            f"; it has {len(values)} different values, so it may be an instance mask (one "
            "number per object): use --boundary to learn separated objects from it"
            if many
            else ""
        )
        if many and _looks_like_an_image(data, len(values)):
            raise MaskError(
                f"this looks like a picture, not a mask: its {len(values)} different values "
                "are scattered over the image as grey levels are, where a mask has a few "
                "class numbers (or one number per object) in solid regions.",
                "check that the masks folder holds the masks and the images folder the "
                "images (were --images and --masks swapped?).",
            )
        raise MaskError(
            f"this mask holds the value {top}, but the model has {n} classes (0 to {n - 1}){hint}.",
            f"if the values are class numbers, set the number of classes to {top + 1} "
            f"(--classes {top + 1}, setting semantic.classes).",
        )
    return data.astype(np.uint8), None


def _looks_like_an_image(data: np.ndarray, n_values: int) -> bool:
    """Whether a "mask" with ``n_values`` values has them scattered, as a grey image has.

    In a class or instance mask each value covers a few solid regions; in a picture each
    grey level is spread over many small pieces (more than 3 regions per value here).
    """
    from skimage.measure import label

    regions = int(label(np.asarray(data), background=-1, connectivity=1).max())
    return regions > 3 * n_values


def class_counts(class_map: np.ndarray, n_classes: int) -> np.ndarray:
    """Number of pixels of each class (int64 array of length ``n_classes``)."""
    return np.bincount(np.asarray(class_map, np.int64).ravel(), minlength=n_classes)[:n_classes]


def compute_class_weights(
    class_maps: Sequence[np.ndarray], n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Loss weights that make rare classes count: inverse square root of their share.

    Weights are ``share ** -0.5``, scaled so that their mean is 1 and capped at
    ``_MAX_WEIGHT`` times the smallest. The square root softens plain inverse
    frequency, which over-corrects (the network then marks too many pixels as the rare
    class). A class absent from every mask gets the largest weight found.

    Parameters
    ----------
    class_maps
        Class maps (integer arrays) of the training masks.
    n_classes
        Number of classes.

    Returns
    -------
    weights, shares
        float64 arrays of length ``n_classes``: the weights and each class's share of
        the pixels.
    """
    counts = np.zeros(n_classes, dtype=np.float64)
    for cm in class_maps:
        counts += class_counts(cm, n_classes)
    shares = counts / max(counts.sum(), 1.0)
    present = shares > 0
    weights = np.ones(n_classes, dtype=np.float64)
    if present.any():
        weights[present] = shares[present] ** -0.5
        weights[~present] = weights[present].max()
        weights = np.minimum(weights, weights.min() * _MAX_WEIGHT)
        weights /= weights.mean()
    return weights, shares


def describe_shares(shares: np.ndarray, names: Sequence[str]) -> str:
    """Say each class's share of the pixels, e.g. "background 78.0 %, membrane 22.0 %"."""
    return ", ".join(f"{n} {100 * s:.1f} %" for n, s in zip(names, shares, strict=True))


# ------------------------------------------------------------------------- losses


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """One minus the mean soft Dice coefficient over classes.

    Parameters
    ----------
    logits
        Network outputs (N, C, *spatial).
    target
        Class numbers (N, *spatial), long.

    Returns
    -------
    torch.Tensor
        Scalar; classes absent from both target and prediction count as perfect.
    """
    probs = torch.softmax(logits, dim=1)
    onehot = F.one_hot(target, logits.shape[1]).movedim(-1, 1).to(probs.dtype)
    axes = (0,) + tuple(range(2, logits.ndim))
    inter = (probs * onehot).sum(axes)
    total = probs.sum(axes) + onehot.sum(axes)
    dice = (2 * inter + 1.0) / (total + 1.0)
    return 1.0 - dice.mean()


def segmentation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    class_weights: torch.Tensor | None = None,
    dice_weight: float = 1.0,
) -> torch.Tensor:
    """Cross-entropy (optionally class-weighted) plus ``dice_weight`` × soft Dice loss."""
    weight = class_weights.to(logits.device, logits.dtype) if class_weights is not None else None
    loss = F.cross_entropy(logits, target, weight=weight)
    if dice_weight > 0:
        loss = loss + dice_weight * soft_dice_loss(logits, target)
    return loss


def softmax_np(logits: np.ndarray) -> np.ndarray:
    """Softmax over the first (channel) axis, float32."""
    z = np.asarray(logits, dtype=np.float32)
    z = z - z.max(axis=0, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=0, keepdims=True)
    return z


# ---------------------------------------------------------------------- instances


def _relabel(labels: np.ndarray, min_size: int) -> np.ndarray:
    from skimage.morphology import remove_small_objects
    from skimage.segmentation import relabel_sequential

    if min_size > 0 and labels.max() > 0:
        labels = remove_small_objects(labels, min_size=min_size)
    labels = relabel_sequential(labels)[0]
    dtype = np.uint16 if labels.max() < 2**16 else np.uint32
    return labels.astype(dtype)


def components(class_map: np.ndarray) -> np.ndarray:
    """Label the connected regions of every class other than 0 (int64, 0 = background).

    Regions are connected through faces only (4-connected in 2D, 6 in 3D), so objects
    that touch at a corner stay apart.
    """
    from skimage.measure import label

    out = np.zeros(class_map.shape, dtype=np.int64)
    offset = 0
    for c in np.unique(class_map):
        if c == 0:
            continue
        lab = label(class_map == c, connectivity=1)
        out[lab > 0] = lab[lab > 0] + offset
        offset += int(lab.max())
    return out


def watershed_split(foreground: np.ndarray) -> np.ndarray:
    """Split touching objects of a foreground mask by a seeded watershed.

    Seeds are the centres of the objects: the maxima of the distance to the background
    that stand out by at least ``_SEED_DEPTH`` pixels; each seed is grown over the
    foreground along the distance map. Returns int64 labels.
    """
    from scipy import ndimage
    from skimage.measure import label
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    fg = np.asarray(foreground, bool)
    if not fg.any():
        return np.zeros(fg.shape, dtype=np.int64)
    dist = ndimage.distance_transform_edt(fg)
    seeds = label(h_maxima(dist, _SEED_DEPTH), connectivity=fg.ndim)
    lone = label(fg, connectivity=1)  # objects too small to have a seed keep their own label
    missing = np.setdiff1d(np.unique(lone[fg]), np.unique(lone[seeds > 0]))
    if missing.size:
        extra = np.isin(lone, missing)
        seeds[extra] = lone[extra] + seeds.max()
    return watershed(-dist, seeds, mask=fg).astype(np.int64)


def grow_from_outlines(cell_probability: np.ndarray, seed_threshold: float) -> np.ndarray:
    """Cells separated by outlines: sure cell regions grown until they meet (int64 labels).

    Seeds are the face-connected regions where ``cell_probability`` exceeds
    ``seed_threshold`` (specks under ``_MIN_SEED_SIZE`` pixels dropped); a watershed on
    ``1 - cell_probability`` grows them over the outlines, so the outlines end up as the
    lines where two cells meet and every pixel belongs to a cell. All zeros when no pixel
    is sure enough.
    """
    from skimage.measure import label
    from skimage.segmentation import watershed

    prob = np.asarray(cell_probability, np.float32)
    seeds = label(prob > seed_threshold, connectivity=1)
    specks = np.bincount(seeds.ravel()) < _MIN_SEED_SIZE
    specks[0] = False
    seeds[specks[seeds]] = 0
    if seeds.max() == 0:
        return np.zeros(prob.shape, np.int64)
    return watershed(1.0 - prob, seeds).astype(np.int64)


def instances_from_probabilities(
    probabilities: np.ndarray,
    settings: SemanticSettings,
    class_map: np.ndarray,
    seed_threshold: float | None = None,
) -> np.ndarray:
    """Instance labels (*spatial, uint16/uint32) from class probabilities and the class map.

    Parameters
    ----------
    probabilities
        Class probabilities (C, *spatial).
    settings
        Task settings: mode, instance method and smallest object size.
    class_map
        The class map (*spatial) the task's post-processing made of them.
    seed_threshold
        Instances 'outlines': the seed threshold (default: the settings', else
        ``DEFAULT_SEED_THRESHOLD``).
    """
    from skimage.measure import label
    from skimage.segmentation import watershed

    if settings.mode == "boundary":
        seeds = label(class_map == 2, connectivity=1)
        labels = watershed(-probabilities[2], seeds, mask=class_map > 0)
    elif settings.instances == "outlines":
        t = seed_threshold or settings.seed_threshold or DEFAULT_SEED_THRESHOLD
        labels = grow_from_outlines(probabilities[1], t)
    elif settings.instances == "watershed" and settings.n_classes == 2:
        labels = watershed_split(class_map == 1)
    else:
        labels = components(class_map)
    return _relabel(np.asarray(labels, np.int64), settings.min_object_size)


def reference_instances(mask: np.ndarray, settings: SemanticSettings) -> np.ndarray:
    """Ground-truth instances of a QC mask: the mask itself in boundary mode, else regions."""
    data = np.asarray(mask)
    if data.ndim >= 3 and data.shape[0] == 1:
        data = data[0]
    if settings.mode == "boundary":
        values = np.unique(data)
        if _binary_value(values) is not None:
            from skimage.measure import label

            return label(data > 0, connectivity=1)
        return data.astype(np.int64)
    return components(mask_to_classes(data, settings)[0])


# ---------------------------------------------------------------------------- task


@register_task
class SemanticTask(Task):
    """Semantic segmentation: a class for every pixel, from integer class masks."""

    name = "semantic"
    title = "Semantic segmentation (U-Net)"
    description = (
        "Gives every pixel a class (e.g. membrane / cell interior in electron microscopy, "
        "cell / background in bright field, several tissue classes), learnt from images and "
        "masks whose pixel values are class numbers. Can also separate touching cells "
        "(boundary mode) and turn the result into one label per object."
    )
    config_class = SemanticConfig
    tta_ok = True
    #: Its models may predict in 8-bit integers (``predict --int8``).
    int8_ok = True
    needs_targets = True
    normalize_targets = False
    qc_kind = "segmentation"

    def __init__(self, config: TaskConfigBase):
        super().__init__(config)
        s = self.settings
        self.threshold: float | None = s.threshold
        self.seed_threshold: float | None = s.seed_threshold
        self.class_weights: torch.Tensor | None = (
            torch.tensor(s.class_weights, dtype=torch.float32)
            if isinstance(s.class_weights, list)
            else None
        )
        self._seen_counts = np.zeros(s.n_classes, dtype=np.int64)
        self._notes: set[str] = set()

    @property
    def settings(self) -> SemanticSettings:
        """The ``semantic`` section of the config."""
        return self.config.semantic

    @property
    def n_classes(self) -> int:
        """Number of classes (network output channels)."""
        return self.settings.n_classes

    def out_channels(self, in_channels: int) -> int:
        """One output channel (logit) per class."""
        return self.n_classes

    # ------------------------------------------------------------------ training

    def prepare_targets(
        self, masks: list[np.ndarray], log: Callable[[str], None] = print
    ) -> list[np.ndarray]:
        """Turn the training masks into class maps and compute automatic class weights.

        Called by training once the masks are read (channel-first float32). Returns
        class maps (1, *spatial) as float32 (the patch sampler's type).

        Raises
        ------
        DeepscopeError
            When a mask is not a valid class image.
        """
        s = self.settings
        maps, notes = [], set()
        for i, m in enumerate(masks):
            try:
                cm, note = mask_to_classes(m, s)
            except MaskError as err:
                raise DeepscopeError(f"training mask {i + 1}: {err.problem}", fix=err.fix) from None
            maps.append(cm)
            if note:
                notes.add(note)
        for note in sorted(notes):
            log(f"masks: {note}.")
        names = class_names(s)
        weights, shares = compute_class_weights(maps, s.n_classes)
        log(f"class shares of the training pixels: {describe_shares(shares, names)}.")
        if s.class_weights == "auto":
            self.class_weights = torch.tensor(weights, dtype=torch.float32)
            text = ", ".join(f"{n} {w:.2f}" for n, w in zip(names, weights, strict=True))
            log(f"class weights in the loss (rarer classes count more): {text}.")
        return [cm[None].astype(np.float32) for cm in maps]

    def training_loss(
        self,
        model: nn.Module,
        batch: dict[str, torch.Tensor],
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Cross-entropy (class-weighted) plus soft Dice between prediction and mask."""
        logits = model(batch["input"]).float()
        target = batch["target"][:, 0].round().long().clamp_(0, self.n_classes - 1)
        return segmentation_loss(logits, target, self.class_weights, self.settings.dice_weight)

    # ---------------------------------------------------------------- prediction

    def denormalize_output(
        self, output: np.ndarray, normalizer: PercentileNormalizer
    ) -> np.ndarray:
        """Turn the network's logits into class probabilities (softmax over classes)."""
        return softmax_np(output)

    def use_tuned_settings(self, settings: dict[str, Any]) -> None:
        """Use the probability threshold chosen by QC, unless the config fixes one."""
        if self.settings.threshold is None and self.n_classes == 2:
            value = settings.get("foreground_threshold")
            self.threshold = float(value) if value is not None else None
        if self.settings.seed_threshold is None:
            value = settings.get("seed_threshold")
            self.seed_threshold = float(value) if value is not None else None

    def class_map(self, probabilities: np.ndarray) -> np.ndarray:
        """Class map (*spatial, uint8) of class probabilities (C, *spatial)."""
        if self.n_classes == 2 and self.settings.mode == "classes":
            t = 0.5 if self.threshold is None else self.threshold
            return (probabilities[1] > t).astype(np.uint8)
        return np.argmax(probabilities, axis=0).astype(np.uint8)

    def postprocess(self, output: np.ndarray) -> np.ndarray:
        """Return the class map (1, *spatial), uint8."""
        return self.class_map(output)[None]

    def instances(self, probabilities: np.ndarray) -> np.ndarray:
        """Instance labels (*spatial) of class probabilities (see module documentation)."""
        return instances_from_probabilities(
            probabilities, self.settings, self.class_map(probabilities), self.seed_threshold
        )

    def display_range(self) -> tuple[float, float]:
        """Class numbers 0 to classes - 1 span the display (0/1 maps are not black in Fiji)."""
        return (0.0, float(self.n_classes - 1))

    def blockwise_ok(self) -> bool:
        """Class maps are per pixel; instance labels need the whole image at once."""
        return not self.settings.predict_instances

    def side_outputs(self, output: np.ndarray) -> dict[str, np.ndarray]:
        """``instances`` and ``probabilities`` images, when asked for in the settings."""
        out: dict[str, np.ndarray] = {}
        if self.settings.predict_instances:
            out["instances"] = self.instances(output)[None]
        if self.settings.save_probabilities:
            out["probabilities"] = output.astype(np.float32)
        return out

    # ---------------------------------------------------------------- validation

    def extra_checks(
        self,
        image_path: Path,
        image_cf: np.ndarray,
        target_path: Path | None,
        target_cf: np.ndarray | None,
    ) -> list[Finding]:
        """Check that each mask is a class (or instance) image the settings can read."""
        from deepscope.data.validation import Finding

        if target_path is None or target_cf is None:
            return []
        problem = mask_problem(target_cf)
        if problem is not None:
            return [Finding("error", target_path, *problem)]
        if target_cf.shape[1:] != image_cf.shape[1:]:
            return []  # reported by the shared size check
        try:
            cm, note = mask_to_classes(target_cf, self.settings)
        except MaskError as err:
            return [Finding("error", target_path, err.problem, err.fix)]
        if note:
            self._notes.add(note)
        self._seen_counts += class_counts(cm, self.n_classes)
        return []

    def data_summary(self) -> list[str]:
        """Lines on the masks seen by ``extra_checks``: how they were read, class shares."""
        total = self._seen_counts.sum()
        if not total:
            return []
        names = class_names(self.settings)
        shares = self._seen_counts / total
        lines = [f"masks: {n}" for n in sorted(self._notes)]
        lines.append(f"class shares of the mask pixels: {describe_shares(shares, names)}")
        absent = [n for n, s in zip(names, shares, strict=True) if s == 0]
        if absent:
            lines.append(
                f"no mask has a pixel of: {', '.join(absent)}; the model cannot learn a "
                "class it never sees (check --classes)"
            )
        elif shares.min() < _IMBALANCE_SHARE:
            lines.append(
                "the classes are imbalanced: class weights ('auto', the default) and the Dice "
                "loss compensate; judge the model by IoU and Dice, not pixel accuracy"
            )
        return lines
