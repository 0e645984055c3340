"""What the exporter needs to know about each task: one small entry per task.

The BioImage.IO exporter (:mod:`deepscope.export.bioimageio`) is generic: inputs,
pre-processing (the stored normalisation as a fixed ``scale_linear``), weights, test
tensors, cover and documentation are the same for every task. What differs is described
here by a :class:`TaskExport` entry, registered with :func:`register_export`:

- ``postprocessing``: the spec operations turning the raw network output into the
  exported output (e.g. ``scale_linear`` back to intensities, ``softmax`` to
  probabilities, StarDist's ``stardist_postprocessing``), and
- ``expected_output``: the same transformation computed by deepscope in numpy, which
  gives the package's test output tensor (so ``bioimageio.core.test_model`` checks that
  the spec's operations reproduce deepscope's),
- ``channel_names``, ``output_description``: how the output channels are named/described,
- ``notes``: Markdown for the package README saying what the spec cannot express and
  what deepscope does on top (e.g. the class map, instance labels),
- ``citations`` and ``tags``,
- optionally ``output_axes`` and ``output_dtype``, when the exported output is not a
  float image with one channel per ``channel_names`` entry (StarDist: the spec's
  ``stardist_postprocessing`` turns the network's probability + distance channels into
  instance labels with axes batch, y, x).

Every function of an entry receives the model as ``deepscope predict`` uses it: with
the settings tuned after training (the model folder's ``thresholds.json``) applied by the
exporter, so thresholds in the package and its README are the ones deepscope predicts
with.

A new task (StarDist, classification) becomes exportable by adding one entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from deepscope.workflow.model_folder import TrainedModel


@dataclass(frozen=True)
class Citation:
    """A method reference: plain text and a DOI (no URL, so validation needs no network)."""

    text: str
    doi: str


UNET = Citation(
    "Ronneberger, Fischer & Brox (2015). U-Net: Convolutional networks for biomedical "
    "image segmentation. MICCAI.",
    "10.1007/978-3-319-24574-4_28",
)
N2V = Citation(
    "Krull, Buchholz & Jug (2019). Noise2Void - learning denoising from single noisy images. CVPR.",
    "10.1109/CVPR.2019.00223",
)
N2V2 = Citation(
    "Höck, Buchholz, Schmidt, ... & Jug (2022). N2V2 - fixing Noise2Void checkerboard "
    "artifacts with modified sampling strategies and a tweaked network architecture. "
    "ECCV Workshops.",
    "10.1007/978-3-031-25069-9_33",
)
CARE = Citation(
    "Weigert, Schmidt, Boothe, ... & Myers (2018). Content-aware image restoration: "
    "pushing the limits of fluorescence microscopy. Nature Methods 15, 1090-1097.",
    "10.1038/s41592-018-0216-7",
)
N2N = Citation(
    "Lehtinen, Munkberg, Hasselgren, ... & Aila (2018). Noise2Noise: learning image "
    "restoration without clean data. ICML.",
    "10.48550/arXiv.1803.04189",
)
FNET = Citation(
    "Ounkomol, Seshamani, Maleckar, Collman & Johnson (2018). Label-free prediction of "
    "three-dimensional fluorescence images from transmitted-light microscopy. Nature "
    "Methods 15, 917-920.",
    "10.1038/s41592-018-0111-2",
)
ZERO_COST = Citation(
    "von Chamier, Laine, Jukkala, ... & Henriques (2021). Democratising deep learning for "
    "microscopy with ZeroCostDL4Mic. Nature Communications 12, 2276.",
    "10.1038/s41467-021-22518-0",
)


@dataclass(frozen=True)
class TaskExport:
    """How one task's model is described in a BioImage.IO package (see module docstring)."""

    postprocessing: Callable[[TrainedModel], list[Any]]
    expected_output: Callable[[TrainedModel, np.ndarray], np.ndarray]
    channel_names: Callable[[TrainedModel], list[str]]
    output_description: str
    notes: Callable[[TrainedModel], str]
    citations: Callable[[TrainedModel], list[Citation]]
    tags: tuple[str, ...] = field(default_factory=tuple)
    #: Output axes (spec axis objects) when they are not batch, channel (named by
    #: ``channel_names``) and the input's space axes — e.g. StarDist's instance labels
    #: (batch, y, x) after ``stardist_postprocessing``. Called as ``output_axes(model)``.
    output_axes: Callable[[TrainedModel], list[Any]] | None = None
    #: Data type of the exported output (e.g. "int32" for instance labels), or a function
    #: of the model giving it.
    output_dtype: str | Callable[[TrainedModel], str] = "float32"
    #: Architecture keyword arguments of the exported network on top of the task's
    #: ``model_kwargs`` (StarDist: a channel-last output for the spec's operation). The
    #: weights are the same; deepscope itself builds the network without them.
    network_kwargs: dict[str, Any] = field(default_factory=dict)
    #: For networks with a fixed input size (classifiers): the size (Y, X) and how a raw
    #: (C, Y, X) image is brought to it (resize or crop), which the spec cannot express.
    fixed_input_size: Callable[[TrainedModel], tuple[int, ...]] | None = None
    fit_input: Callable[[TrainedModel, np.ndarray], np.ndarray] | None = None


_EXPORTS: dict[str, TaskExport] = {}


def register_export(task: str, entry: TaskExport) -> None:
    """Register how models of ``task`` are exported."""
    _EXPORTS[task] = entry


def get_export(task: str) -> TaskExport | None:
    """Return the export entry of ``task``, or None when the task cannot be exported yet."""
    return _EXPORTS.get(task)


def exportable_tasks() -> list[str]:
    """Names of the tasks with an export entry."""
    return sorted(_EXPORTS)


# ----------------------------------------------------------------------- restoration


def _target_normalizer(model: TrainedModel):  # noqa: ANN202
    return model.target_normalizer or model.normalizer


def _n_image_channels(model: TrainedModel) -> int:
    out = int(model.info["out_channels"])
    probabilistic = model.config.task == "care" and model.config.care.probabilistic
    return out // 2 if probabilistic else out


def _restoration_gain_offset(model: TrainedModel) -> tuple[list[float], list[float]]:
    """Per output channel: intensities = raw * gain + offset (scales of CARE kept raw)."""
    norm = _target_normalizer(model)
    n = _n_image_channels(model)
    gain = [float(h - lo) for lo, h in zip(norm.low, norm.high, strict=True)][:n]
    offset = [float(lo) for lo in norm.low][:n]
    extra = int(model.info["out_channels"]) - n
    return gain + [1.0] * extra, offset + [0.0] * extra


def _restoration_post(model: TrainedModel) -> list[Any]:
    from bioimageio.spec.model.v0_5 import (
        AxisId,
        ScaleLinearAlongAxisKwargs,
        ScaleLinearDescr,
    )

    gain, offset = _restoration_gain_offset(model)
    return [
        ScaleLinearDescr(
            kwargs=ScaleLinearAlongAxisKwargs(axis=AxisId("channel"), gain=gain, offset=offset)
        )
    ]


def _restoration_expected(model: TrainedModel, raw: np.ndarray) -> np.ndarray:
    """Deepscope's de-normalisation of the raw output (C, *spatial); CARE scales stay raw."""
    n = _n_image_channels(model)
    norm = _target_normalizer(model)
    means = norm.denormalize(raw[:n])
    return np.concatenate([means, raw[n:]]).astype(np.float32)


def _restoration_names(model: TrainedModel) -> list[str]:
    n = _n_image_channels(model)
    names = [f"restored{c}" for c in range(n)]
    return names + [f"laplace_scale_raw{c}" for c in range(int(model.info["out_channels"]) - n)]


def _restoration_notes(model: TrainedModel) -> str:
    norm = _target_normalizer(model)
    pct = f"the {model.normalizer.low_pct:g} and {model.normalizer.high_pct:g} percentiles"
    if model.normalizer.per_image:
        text = (
            f"The input is normalised by each image's own percentiles (per channel, {pct} "
            "map to 0 and 1; `scale_range` in `bioimageio.yaml`); during training the "
            "target images were normalised the same way, each by its own percentiles. The "
            "network output is mapped back to intensities with the percentiles of all "
            "training "
            + ("targets" if model.target_normalizer is not None else "images")
            + f" together (low {list(norm.low)}, high {list(norm.high)})."
        )
    else:
        text = (
            "The input is normalised with fixed statistics measured on the training images "
            f"(per channel, {pct} map to 0 and 1; values in `bioimageio.yaml` as "
            "`scale_linear`), and the network output is mapped back to intensities with the "
            + ("target images'" if model.target_normalizer is not None else "same")
            + f" statistics (low {list(norm.low)}, high {list(norm.high)})."
        )
    if model.config.task == "care" and model.config.care.probabilistic:
        n = _n_image_channels(model)
        text += (
            f"\n\nThis is a probabilistic CARE model: output channels 0 to {n - 1} are the "
            f"restored image; channels {n} to {2 * n - 1} are raw Laplace scale outputs `r`, "
            "which the BioImage.IO operations cannot transform. The expected absolute error "
            "per pixel, in intensity units, is `b = (softplus(r) + 0.001) * (high - low)` "
            "(deepscope writes it as `<name>_uncertainty.tif`)."
        )
    return text


def _restoration_citations(model: TrainedModel) -> list[Citation]:
    task = model.config.task
    method = {"care": [CARE], "n2n": [N2N], "labelfree": [FNET]}.get(task)
    if task == "n2v":
        method = [N2V, N2V2] if model.config.n2v.variant == "n2v2" else [N2V]
    return [*(method or []), UNET, ZERO_COST]


def _restoration_entry(tags: tuple[str, ...], description: str) -> TaskExport:
    return TaskExport(
        postprocessing=_restoration_post,
        expected_output=_restoration_expected,
        channel_names=_restoration_names,
        output_description=description,
        notes=_restoration_notes,
        citations=_restoration_citations,
        tags=tags,
    )


register_export("n2v", _restoration_entry(("denoising", "noise2void", "unet"), "denoised image"))
register_export("n2n", _restoration_entry(("denoising", "noise2noise", "unet"), "denoised image"))
register_export(
    "care",
    _restoration_entry(("restoration", "denoising", "care", "unet"), "restored image"),
)
register_export(
    "labelfree",
    _restoration_entry(
        ("label-free", "in-silico-labeling", "unet"), "predicted fluorescence image"
    ),
)


# ------------------------------------------------------------------------- semantic


def _semantic_post(model: TrainedModel) -> list[Any]:
    from bioimageio.spec.model.v0_5 import AxisId, SoftmaxDescr, SoftmaxKwargs

    return [SoftmaxDescr(kwargs=SoftmaxKwargs(axis=AxisId("channel")))]


def _semantic_expected(model: TrainedModel, raw: np.ndarray) -> np.ndarray:
    return model.task.denormalize_output(raw, model.normalizer).astype(np.float32)


def _probability_names(classes: list[str]) -> list[str]:
    """Channel names ``p_<class>`` the spec accepts (``p_class<i>`` if they would clash)."""
    out = []
    for i, name in enumerate(classes):
        safe = "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in name).strip("_")
        out.append(f"p_{safe or i}")
    return out if len(set(out)) == len(out) else [f"p_class{i}" for i in range(len(out))]


def _semantic_names(model: TrainedModel) -> list[str]:
    from deepscope.tasks.semantic import class_names

    return _probability_names(class_names(model.config.semantic))


def _threshold_origin(configured: float | None, in_use: float | None) -> str:
    """Where a threshold in use comes from: ``"config"``, ``"tuned"`` or ``"default"``.

    ``configured`` is the config's value, ``in_use`` the task's after the model folder's
    tuned settings were applied (None: the default is used).
    """
    if configured is not None:
        return "config"
    return "tuned" if in_use is not None else "default"


def _semantic_notes(model: TrainedModel) -> str:
    from deepscope.tasks.semantic import DEFAULT_SEED_THRESHOLD

    s = model.config.semantic
    task = model.task
    threshold = getattr(task, "threshold", None)
    rule = (
        f"a pixel is class 1 when the probability of class 1 exceeds "
        f"{0.5 if threshold is None else threshold:g} ("
        + {
            "config": "set in the model's config",
            "tuned": "chosen by `deepscope qc`",
            "default": "the default: the model folder holds no tuned threshold",
        }[_threshold_origin(s.threshold, threshold)]
        + ")"
        if s.n_classes == 2 and s.mode == "classes"
        else "each pixel gets the class of highest probability (argmax over channels)"
    )
    text = (
        "The output holds one probability per class and pixel (softmax of the network's "
        f"logits, a BioImage.IO operation). deepscope's class map follows from it: {rule}."
    )
    if s.mode == "boundary":
        text += (
            " The three classes are background, boundary and interior: deepscope makes "
            "one label per object by growing the interiors into the boundaries "
            "(`deepscope predict --instances`); the BioImage.IO operations cannot express "
            "this step."
        )
    elif s.instances == "outlines":
        seed = getattr(task, "seed_threshold", None)
        origin = {
            "config": "set in the model's config",
            "tuned": "chosen on the validation images after training",
            "default": "deepscope's default: the model folder holds no tuned one",
        }[_threshold_origin(s.seed_threshold, seed)]
        text += (
            " Class 0 is the outline between cells: deepscope makes one label per cell "
            "(`deepscope predict --instances`) by growing the regions where the "
            f"probability of class 1 exceeds {DEFAULT_SEED_THRESHOLD if seed is None else seed:g} "
            f"(the seed threshold, {origin}) over the outlines, downhill in the probability "
            "of class 0, until neighbouring cells meet; the BioImage.IO operations cannot "
            "express this step."
        )
    return text


register_export(
    "semantic",
    TaskExport(
        postprocessing=_semantic_post,
        expected_output=_semantic_expected,
        channel_names=_semantic_names,
        output_description="class probabilities",
        notes=_semantic_notes,
        citations=lambda model: [UNET, ZERO_COST],
        tags=("segmentation", "semantic-segmentation", "unet"),
    ),
)


# ------------------------------------------------------------------------- stardist

STARDIST_2D = Citation(
    "Schmidt, Weigert, Broaddus & Myers (2018). Cell detection with star-convex polygons. MICCAI.",
    "10.1007/978-3-030-00934-2_30",
)
STARDIST_3D = Citation(
    "Weigert, Schmidt, Haase, Sugawara & Myers (2020). Star-convex polyhedra for 3D object "
    "detection and segmentation in microscopy. WACV.",
    "10.1109/WACV45572.2020.9093435",
)
#: Border (in grid points) where the NMS ignores candidates; the stardist package's
#: default, which deepscope's own NMS uses too.
STARDIST_BORDER = 2


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return float(np.log(p / (1 - p)))


# 3D: the package holds the network's maps, not labels. A 3D package with the spec's
# ``stardist_postprocessing`` reproduced deepscope's labels, but bioimageio.core's 3D
# operation fails on any image without objects (stardist's ``polyhedron_to_label``
# returns uint16 there and core asserts int32), so such a package cannot pass
# ``test_model``. The maps and the documented post-processing are what the spec allows.


def _stardist_maps(model: TrainedModel) -> bool:
    """Whether the package holds the probability and distance maps (3D) or labels (2D)."""
    return model.task.dims != 2


def _stardist_post(model: TrainedModel) -> list[Any]:
    """The spec's ``stardist_postprocessing`` on the raw output (probability as a logit).

    The network's channel 0 is the logit of the object probability; a threshold ``p`` on
    the probability is the threshold ``logit(p)`` on the logit (the NMS only compares and
    orders the scores), so no activation is needed before the spec's operation. Nothing
    for 3D (see ``_stardist_maps``).
    """
    if _stardist_maps(model):
        return []
    from bioimageio.spec.model.v0_5 import (
        StardistPostprocessingDescr,
        StardistPostprocessingKwargs2D,
    )

    task = model.task
    prob, nms = task.thresholds()
    kwargs = StardistPostprocessingKwargs2D(
        prob_threshold=_logit(prob),
        nms_threshold=nms,
        n_rays=task.n_rays,
        grid=tuple(task.grid),
        b=STARDIST_BORDER,
    )
    return [StardistPostprocessingDescr(kwargs=kwargs)]


def _stardist_expected(model: TrainedModel, raw: np.ndarray) -> np.ndarray:
    """Instance labels (*spatial, 1) from the raw output (1 + n_rays, *grid_spatial).

    The same steps as deepscope's prediction (``stardist`` NMS and rendering, the tuned
    thresholds), without deepscope's final renumbering to 1..n (the spec's operation
    keeps the NMS numbering, which may skip numbers of candidates hidden by others).
    """
    if _stardist_maps(model):  # the network's maps, channels last like the network's
        return np.moveaxis(raw, 0, -1).astype(np.float32)
    from stardist.geometry import polygons_to_label
    from stardist.nms import non_maximum_suppression

    task = model.task
    prob, nms = task.thresholds()
    grid = tuple(task.grid)
    shape = tuple(n * g for n, g in zip(raw.shape[1:], grid, strict=True))
    points, scores, dists = non_maximum_suppression(
        np.ascontiguousarray(np.moveaxis(raw[1:], 0, -1), dtype=np.float32),
        np.ascontiguousarray(raw[0], dtype=np.float32),
        grid=grid,
        prob_thresh=_logit(prob),
        nms_thresh=nms,
        b=STARDIST_BORDER,
    )
    labels = polygons_to_label(dists, points, shape=shape, prob=scores)
    return labels[..., None].astype(np.int32)  # axes as in _stardist_axes


def _stardist_axes(model: TrainedModel) -> list[Any]:
    """Batch, space axes, channels last: labels of the input's size (2D), maps on the grid (3D).

    Channel last: bioimageio.core reads the network's output with these axes, and its
    ``stardist_postprocessing`` gives labels in this layout; so the exported network
    puts its channels last (``network_kwargs``). 3D maps: each space axis is ``grid``
    times smaller than the input's (the axis ``scale``).
    """
    from bioimageio.spec.model import v0_5 as spec

    maps = _stardist_maps(model)
    space = ("z", "y", "x") if maps else ("y", "x")
    return [
        spec.BatchAxis(),
        *[
            spec.SpaceOutputAxis(
                id=spec.AxisId(a),
                size=spec.SizeReference(tensor_id=spec.TensorId("input"), axis_id=spec.AxisId(a)),
                **({"scale": float(g)} if maps else {}),
            )
            for a, g in zip(space, model.task.grid, strict=True)
        ],
        spec.ChannelAxis(channel_names=[spec.Identifier(n) for n in _stardist_channels(model)]),
    ]


def _stardist_channels(model: TrainedModel) -> list[str]:
    """Output channel names: labels (2D), or the maps (3D)."""
    if not _stardist_maps(model):
        return ["instance_labels"]
    return ["probability_logit"] + [f"distance_ray{r}" for r in range(model.task.n_rays)]


def _stardist_threshold_origin(model: TrainedModel) -> str:
    """Where the StarDist thresholds in use come from, in words (for the README)."""
    task, s = model.task, model.config.stardist
    prob = _threshold_origin(s.prob_threshold, task.prob_threshold)
    nms = _threshold_origin(s.nms_threshold, task.nms_threshold)
    if prob == nms:
        return {
            "config": "both set in the model's config",
            "tuned": "both tuned by deepscope after training",
            "default": "StarDist's defaults: the model folder holds no tuned thresholds",
        }[prob]
    words = {
        "config": "set in the model's config",
        "tuned": "tuned by deepscope after training",
        "default": "StarDist's default",
    }
    return f"probability threshold {words[prob]}, overlap threshold {words[nms]}"


def _stardist_notes(model: TrainedModel) -> str:
    task = model.task
    prob, nms = task.thresholds()
    origin = _stardist_threshold_origin(model)
    norm = model.normalizer
    normalised = (
        f"Each image is normalised by its own percentiles ({norm.low_pct:g} % to 0, "
        f"{norm.high_pct:g} % to 1, per channel; the spec's `scale_range`)"
    )
    if _stardist_maps(model):
        grid = "x".join(str(g) for g in task.grid)
        return (
            f"{normalised}.\n\n"
            f"The output is the network's maps on a grid {grid} (z, y, x) times coarser than "
            "the image, channels last: the logit of the object probability (channel 0) and "
            f"the distances to the object's boundary along {task.n_rays} rays (channels 1 to "
            f"{task.n_rays}, in image pixels; ray directions: `stardist.Rays_GoldenSpiral("
            f"{task.n_rays}, anisotropy={task.anisotropy})`). Instance labels are made "
            "from them by the `stardist` package: `non_maximum_suppression_3d` with "
            f"probability threshold {prob:g} (logit {_logit(prob):.4f}) and overlap {nms:g} "
            f"({origin}), grid {tuple(task.grid)}, then `polyhedron_to_label`, as deepscope's "
            "own prediction does. The package does not "
            "include this step as the spec's `stardist_postprocessing`, because "
            "bioimageio.core's 3D version of that step fails on images without objects. "
            "`deepscope import` of this package restores the model with the whole "
            "post-processing (labels, ROIs, measurements)."
        )
    return (
        f"{normalised}, as StarDist does, so images of any brightness or bit depth can be "
        "given.\n\n"
        "The network predicts, on a grid "
        f"{'x'.join(str(g) for g in task.grid)} times coarser than the image, the logit of "
        f"the object probability (channel 0) and the distances to the object's boundary "
        f"along {task.n_rays} rays (channels 1 to {task.n_rays}, in image pixels). The "
        "BioImage.IO operation `stardist_postprocessing` (non-maximum suppression and "
        "rendering of the star-convex polygons, by the `stardist` package) turns these into "
        f"instance labels, with the thresholds deepscope predicts with ({origin}): object "
        f"probability {prob:g} (given to the operation as its logit, {_logit(prob):.4f}, "
        f"because the network outputs logits) and overlap (IoU) {nms:g} for the "
        "suppression. deepscope's own prediction (unless `--prob-threshold` or "
        "`--nms-threshold` are given) gives the same objects, numbered 1..n "
        "without gaps, and also writes ImageJ ROIs and a table of measurements per object."
    )


register_export(
    "stardist",
    TaskExport(
        postprocessing=_stardist_post,
        expected_output=_stardist_expected,
        channel_names=_stardist_channels,
        output_description="instance labels (0 = background, one number per object); 3D: "
        "the network's probability (logit) and ray-distance maps on the grid",
        notes=_stardist_notes,
        citations=lambda model: [
            STARDIST_3D if _stardist_maps(model) else STARDIST_2D,
            UNET,
            ZERO_COST,
        ],
        tags=("segmentation", "instance-segmentation", "stardist", "nuclei"),
        output_axes=_stardist_axes,
        output_dtype=lambda model: "float32" if _stardist_maps(model) else "int32",
        network_kwargs={"channel_last_output": True},
    ),
)


# ------------------------------------------------------------------------- classify

RESNET = Citation(
    "He, Zhang, Ren & Sun (2016). Deep residual learning for image recognition. CVPR.",
    "10.1109/CVPR.2016.90",
)
VGG = Citation(
    "Simonyan & Zisserman (2015). Very deep convolutional networks for large-scale image "
    "recognition. ICLR.",
    "10.48550/arXiv.1409.1556",
)


def _classify_expected(model: TrainedModel, raw: np.ndarray) -> np.ndarray:
    """Class probabilities (K,) of one image: softmax of the class scores."""
    return model.task.postprocess(raw[None])[0].astype(np.float32)


def _classify_axes(model: TrainedModel) -> list[Any]:
    from bioimageio.spec.model import v0_5 as spec

    return [
        spec.BatchAxis(),
        spec.ChannelAxis(channel_names=[spec.Identifier(n) for n in _classify_names(model)]),
    ]


def _classify_names(model: TrainedModel) -> list[str]:
    return _probability_names(model.task.class_names)


def _classify_size(model: TrainedModel) -> tuple[int, ...]:
    return tuple(int(s) for s in model.config.classify.image_size)


def _classify_fit(model: TrainedModel, image_cf: np.ndarray) -> np.ndarray:
    from deepscope.data.classes import fit_to_size

    c = model.config.classify
    return fit_to_size(image_cf, c.image_size, c.fit)


def _classify_notes(model: TrainedModel) -> str:
    c = model.config.classify
    names = ", ".join(f"{i}: {n}" for i, n in enumerate(model.task.class_names))
    how = (
        "resized (bilinear) to"
        if c.fit == "resize"
        else "centre-cropped (mirror-padded when smaller) to"
    )
    return (
        f"Each image is {how} {c.image_size[0]}x{c.image_size[1]} pixels before the "
        "network; BioImage.IO has no operation for this, so give images of that size "
        "(deepscope does it itself). The input is then normalised "
        + (
            "by each image's own percentiles (`scale_range`)"
            if model.normalizer.per_image
            else "with fixed statistics of the training images (`scale_linear`)"
        )
        + ". The output holds one probability per "
        f"class (softmax of the class scores, a BioImage.IO operation), in this order: "
        f"{names}. The predicted class is the most probable one."
    )


def _classify_citations(model: TrainedModel) -> list[Citation]:
    arch = model.config.model.architecture
    method = {"resnet18": [RESNET], "unet_encoder": [UNET]}.get(arch, [VGG])
    return [*method, ZERO_COST]


register_export(
    "classify",
    TaskExport(
        postprocessing=_semantic_post,  # softmax over the channel (class) axis
        expected_output=_classify_expected,
        channel_names=_classify_names,
        output_description="class probabilities",
        notes=_classify_notes,
        citations=_classify_citations,
        tags=("classification", "image-classification"),
        output_axes=_classify_axes,
        fixed_input_size=_classify_size,
        fit_input=_classify_fit,
    ),
)
