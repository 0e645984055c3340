"""8-bit integer prediction of a model folder (``--int8``): which models, which calibration.

The arithmetic is :mod:`deepscope.engine.int8`'s; this module decides whether a loaded
model may use it (``Task.int8_ok`` and the network), finds or makes the calibration (the
model folder's, made after training on the validation images and tied to the weights it
was made with; else the first image predicted), and keeps one 8-bit copy per model.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deepscope.errors import DeepscopeError
from deepscope.workflow.model_folder import TrainedModel
from deepscope.workflow.predict import file_sha256

_INT8: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def int8_network(model: TrainedModel, image: np.ndarray | None = None):
    """The model's network in 8-bit integers (:mod:`deepscope.engine.int8`), made once per model.

    Its calibration is the model folder's (written after training); a folder without one
    for its current weights (trained before 2026-11-30, or another checkpoint chosen
    since) is calibrated on ``image`` (normalised, channel first), the first image
    predicted. Raises DeepscopeError when the network cannot run so.
    """
    from deepscope.engine import int8
    from deepscope.engine.inference import weights_version

    version = weights_version(model.network)
    cached = _INT8.get(model.network)
    if cached is not None and cached[0] == version:  # same weights as when it was made
        return cached[1]
    require_int8(model)
    calibration = int8_calibration_of(model)
    if calibration is None:
        if image is None:
            raise DeepscopeError(
                "this model folder has no 8-bit calibration and no image was given to make one",
                model.folder,
                "leave out --int8",
            )
        calibration = int8.calibrate(model.network, [calibration_crop(image, model)])
        calibration["made_from"] = "the first image predicted"
    net = int8.Int8Network(model.network, calibration)
    net.calibration = calibration
    _INT8[model.network] = (version, net)
    return net


def int8_problem(model: TrainedModel) -> str | None:
    """Why this model cannot predict in 8-bit integers here, or None if it can.

    Segmentation only (``Task.int8_ok``: StarDist, semantic): 8-bit features are enough to
    tell classes and objects apart, not for restoration's intensities.
    """
    from deepscope.engine import int8

    if not model.task.int8_ok:
        return (
            "8-bit prediction is available for StarDist and semantic segmentation models, "
            f"not for {model.config.task} models"
        )
    return int8.network_problem(model.network)


def require_int8(model: TrainedModel, prefix: str = "") -> None:
    """Raise DeepscopeError (``prefix`` + :func:`int8_problem`) if it cannot run in 8 bits."""
    problem = int8_problem(model)
    if problem:
        raise DeepscopeError(prefix + problem, fix="leave out --int8")


def int8_calibration_of(model: TrainedModel) -> dict[str, Any] | None:
    """The model folder's 8-bit calibration, if there is one made for its current weights.

    A calibration records the digest of the ``weights.pt`` it was made with; after another
    checkpoint was made the model's weights it no longer applies (None).
    """
    from deepscope.engine import int8

    calibration = int8.load_calibration(model.folder)
    weights = model.folder / "weights.pt"
    if calibration is None or not weights.is_file():
        return calibration
    digest = calibration.get("weights_sha256")
    return calibration if digest in (None, file_sha256(weights)) else None


def make_int8_calibration(model: TrainedModel, images_cf: Sequence[np.ndarray]) -> dict[str, Any]:
    """The 8-bit calibration of the model's network on raw channel-first images.

    Each image is normalised as for prediction and its central part (at most 1024 pixels
    per axis) is run through the network in full precision. Raises DeepscopeError when the
    network cannot run in 8-bit integers.
    """
    from deepscope.engine import int8

    require_int8(model)
    adapt = getattr(model.task, "adapt_channels", None)
    crops = []
    for image in images_cf:
        image = adapt(image, model.in_channels) if adapt is not None else image
        crops.append(calibration_crop(model.normalizer.normalize(image), model))
    calibration = int8.calibrate(model.network, crops)
    weights = model.folder / "weights.pt"
    if weights.is_file():  # the weights it is valid for (see int8_calibration_of)
        calibration["weights_sha256"] = file_sha256(weights)
    return calibration


def store_int8_calibration(
    model: TrainedModel, images_cf: Sequence[np.ndarray], log: Callable[[str], None] = print
) -> Path | None:
    """Calibrate 8-bit prediction on these images and store it in the model folder.

    Nothing is stored (and nothing said) for networks that cannot run in 8-bit integers
    or when there is no image; see :mod:`deepscope.engine.int8`.
    """
    from deepscope.engine import int8

    if not images_cf or int8_problem(model):
        return None
    calibration = make_int8_calibration(model, images_cf)
    calibration["made_from"] = "the validation images"
    path = int8.save_calibration(model.folder, calibration)
    log(f"8-bit calibration for 'predict --int8' stored in {path}.")
    return path


CALIBRATION_CROP = {2: (1024, 1024), 3: (32, 256, 256)}
"""Largest part of an image (per spatial axis) run in float32 to calibrate ``--int8``;
in 3D smaller, as a whole volume would need many GB of float32 features."""


def calibration_crop(image: np.ndarray, model: TrainedModel, size: Sequence[int] | None = None):
    """A normalised channel-first image as a (1, C, *spatial) tensor the network accepts.

    At most ``size`` (default :data:`CALIBRATION_CROP`) pixels per axis around the
    centre, cut to multiples of the network's divisibility (at least one such block:
    smaller images are padded by reflection).
    """
    import torch

    div = int(model.info["divisibility"])
    size = size or CALIBRATION_CROP[image.ndim - 1]
    crop = []
    for n, most in zip(image.shape[1:], size, strict=True):
        keep = max(div, min(most, n) // div * div)
        start = max(0, (n - keep) // 2)
        crop.append(slice(start, start + keep))
    part = image[(slice(None), *crop)]
    pad = [(0, 0)] + [(0, max(0, div - n)) for n in part.shape[1:]]
    if any(p for _, p in pad):
        part = np.pad(part, pad, mode="reflect" if min(part.shape[1:]) > 1 else "edge")
    return torch.from_numpy(np.ascontiguousarray(part[None], dtype=np.float32))
