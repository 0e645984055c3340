"""Quality control for image restoration (Noise2Void, Noise2Noise, CARE).

On held-out image/target pairs the model is compared with two references a
microscopist understands: the raw (noisy) input and the best simple Gaussian filter.
:func:`evaluate_restoration` writes per-image metrics, a summary, figures (drawn by
:mod:`deepscope.workflow.qc_figures`) and a self-contained HTML report.

Every method is scored twice against the target:

* **matched** (``psnr_matched``, ...): after a least-squares fit of gain and offset
  that maps the output onto the target (:func:`affine_match`), as in the CARE paper
  (Weigert et al. 2018) and CSBDeep. Noisy and clean images are often recorded or saved
  with different brightness and contrast (e.g. each stretched to 8 bit on its own);
  matching removes that difference, so the score measures the restoration. The
  report's verdict, the Gaussian baseline's sigma and the best checkpoint use it.
* **raw** (``psnr``, ...): the output as it is.

All methods share one intensity scale: unless a ``data_range`` is given, PSNR and SSIM
use the target's ``max - min`` for each image.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.metrics import normalized_root_mse, peak_signal_noise_ratio, structural_similarity

from deepscope.data.io import atomic_write_text
from deepscope.errors import DeepscopeError, OutputError
from deepscope.workflow import qc_figures as figures
from deepscope.workflow.qc_figures import (
    METHOD_LABELS,
    METRIC_LABELS,
    ImageViews,
    finite_or_nan,
    metric_label,
)
from deepscope.workflow.report import HtmlReport, format_value, safe_filename

__all__ = [
    "DEFAULT_SIGMAS",
    "METRICS",
    "Progress",
    "affine_match",
    "pearson_r",
    "uncertainty_calibration",
    "best_gaussian_sigma",
    "evaluate_restoration",
    "gaussian_baseline",
    "restoration_metrics",
]

Predict = Callable[[np.ndarray], np.ndarray]
Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``; see :func:`evaluate_restoration`."""

RAW_METRICS = ("psnr", "ssim", "nrmse", "mae")
MATCHED_METRICS = tuple(f"{m}_matched" for m in RAW_METRICS)
INVARIANT_METRICS = ("pearson_r",)
"""Metrics that brightness/contrast matching does not change (so they exist once)."""
METRICS = RAW_METRICS + MATCHED_METRICS + INVARIANT_METRICS
"""Keys of every metrics dict: raw ones, the same after :func:`affine_match`, then
the Pearson correlation with the target (``pearson_r``)."""
CALIBRATION_BINS = 10
_CALIBRATION_SAMPLES = 200_000  # pixels per image used for the calibration plot
METHODS = ("model", "input", "gaussian")
DEFAULT_SIGMAS: tuple[float, ...] = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)
MAX_FIGURE_IMAGES = 8

_METRIC_HELP = {
    "psnr": "Peak signal-to-noise ratio against the target, in decibels. Higher is better; "
    "+3 dB means the squared error is halved.",
    "ssim": "Structural similarity: how well local structures (edges, textures) match the "
    "target, from 0 to 1 (1 = identical). Higher is better.",
    "nrmse": "Root-mean-square error divided by the target's intensity range (max − min). "
    "Lower is better; 0.05 means errors of about 5 % of the range.",
    "mae": "Mean absolute difference from the target, in the images' own intensity units. "
    "Lower is better.",
    "pearson_r": "Pearson correlation between the output and the target, pixel by pixel, "
    "from −1 to 1 (1 = perfectly proportional), as reported for label-free prediction "
    "(fnet). It ignores brightness and contrast. Higher is better.",
    "matched / raw": "Matched: the output's brightness and contrast (a gain and an offset) "
    "were first fitted to the target by least squares, as in the CARE paper, so only the "
    "restoration is scored. Raw: the output as it is; also penalises any difference in "
    "brightness or contrast.",
}
_MATCHING_REASON = (
    "The images were compared after matching brightness and contrast to the clean (target) "
    "image, because noisy and clean images are often recorded or saved with different "
    "brightness and contrast, and a direct comparison would mostly measure that difference "
    "rather than the noise that was removed."
)
_HISTORY_COLUMNS = {
    "train_loss": ("train_loss", "train_loss_epoch"),
    "val_loss": ("val_loss", "val_loss_epoch"),
}


# --------------------------------------------------------------------------- metrics


def restoration_metrics(
    prediction: np.ndarray,
    target: np.ndarray,
    data_range: float | None = None,
    channel_axis: int | None = None,
) -> dict[str, float]:
    """Score a restored image against its ground-truth target, raw and intensity-matched.

    Parameters
    ----------
    prediction
        Restored image, same shape as ``target``.
    target
        Ground truth: 2D (YX) or 3D (ZYX), plus one channel axis if ``channel_axis``
        is given, e.g. (C, Y, X) or (C, Z, Y, X).
    data_range
        Intensity range used by PSNR and SSIM. Defaults to ``target.max() -
        target.min()``: it is computed on the target, so that a model output, the raw
        input and a baseline scored against the same target share one scale.
    channel_axis
        Index of the channel axis, or None for single-channel images. SSIM is
        computed per channel and averaged; the other metrics pool all channels.

    Returns
    -------
    dict of str to float
        ``psnr`` (dB, ``inf`` when identical), ``ssim`` (mean SSIM, scikit-image,
        window 7 or the smallest spatial size if smaller), ``nrmse`` (RMSE divided by
        the target's max − min, scikit-image ``"min-max"`` normalisation) and ``mae``
        (mean absolute error) of the prediction as it is; then ``psnr_matched``,
        ``ssim_matched``, ``nrmse_matched`` and ``mae_matched``, the same metrics of
        ``affine_match(prediction, target)`` (see :func:`affine_match`).

    Raises
    ------
    DeepscopeError
        If the shapes differ, the dimensionality is not 2D/3D, values are not
        finite, or the target is constant and no ``data_range`` is given.
    """
    metrics, _, _ = _score(prediction, target, data_range, channel_axis, full=False)
    return metrics


def affine_match(
    prediction: np.ndarray, target: np.ndarray, *, channel_axis: int | None = None
) -> np.ndarray:
    """Map a prediction onto its target by the least-squares gain and offset.

    Finds ``a`` and ``b`` minimising ``sum((a * prediction + b - target) ** 2)`` and
    returns ``a * prediction + b``: the scale-invariant comparison of the CARE paper
    (Weigert et al. 2018, CSBDeep), which ignores differences in brightness and
    contrast between prediction and target but keeps every other error.

    Parameters
    ----------
    prediction
        Image to map, same shape as ``target``.
    target
        Ground truth, 2D/3D with an optional channel axis.
    channel_axis
        Index of the channel axis; each channel then gets its own gain and offset.

    Returns
    -------
    numpy.ndarray
        float64 array shaped like ``target``. A constant prediction (channel) is
        mapped to the target's mean.

    Raises
    ------
    DeepscopeError
        On a shape mismatch, a dimensionality other than 2D/3D or non-finite values.
    """
    channel_axis = _check_image(target, channel_axis, "The target")
    _check_same_shape(prediction, target, None)
    return _affine_fit(
        _finite_float(prediction, "prediction", None),
        _finite_float(target, "target", None),
        channel_axis,
    )


def _affine_fit(pred: np.ndarray, true: np.ndarray, channel_axis: int | None) -> np.ndarray:
    """Least-squares ``a * pred + b`` ≈ ``true`` per channel (float64, validated input)."""
    axes = tuple(axis for axis in range(true.ndim) if axis != channel_axis)
    centred = pred - pred.mean(axis=axes, keepdims=True)
    true_mean = true.mean(axis=axes, keepdims=True)
    variance = np.sum(centred * centred, axis=axes, keepdims=True)
    covariance = np.sum(centred * (true - true_mean), axis=axes, keepdims=True)
    gain = np.divide(covariance, variance, out=np.zeros_like(variance), where=variance > 0)
    return true_mean + gain * centred


def _score(
    prediction: np.ndarray,
    target: np.ndarray,
    data_range: float | None,
    channel_axis: int | None,
    *,
    full: bool,
    name: str | None = None,
) -> tuple[dict[str, float], np.ndarray, np.ndarray | None]:
    """Return (raw and matched metrics, matched prediction, SSIM map of it if ``full``)."""
    channel_axis = _check_image(target, channel_axis, _label("target", name))
    _check_same_shape(prediction, target, name)
    pred, true = (
        _finite_float(prediction, "prediction", name),
        _finite_float(target, "target", name),
    )
    rng = _data_range(true, data_range, name)
    matched = _affine_fit(pred, true, channel_axis)
    raw, _ = _metric_set(pred, true, rng, channel_axis, full=False)
    fitted, ssim_map = _metric_set(matched, true, rng, channel_axis, full=full)
    metrics = {**raw, **{f"{key}_matched": value for key, value in fitted.items()}}
    metrics["pearson_r"] = pearson_r(pred, true, channel_axis=channel_axis)
    return metrics, matched, ssim_map


def pearson_r(
    prediction: np.ndarray, target: np.ndarray, *, channel_axis: int | None = None
) -> float:
    """Pearson correlation coefficient of prediction and target over all pixels.

    Parameters
    ----------
    prediction, target
        Images of the same shape.
    channel_axis
        Index of the channel axis; the coefficient is then computed per channel and
        averaged.

    Returns
    -------
    float
        From -1 to 1; NaN when the prediction or the target is constant (a channel).
    """
    pred = np.asarray(prediction, dtype=np.float64)
    true = np.asarray(target, dtype=np.float64)
    if channel_axis is None:
        pred, true = pred[None], true[None]
    else:
        pred, true = np.moveaxis(pred, channel_axis, 0), np.moveaxis(true, channel_axis, 0)
    values = []
    for p, t in zip(pred.reshape(len(pred), -1), true.reshape(len(true), -1), strict=True):
        p, t = p - p.mean(), t - t.mean()
        denominator = math.sqrt(float(np.dot(p, p)) * float(np.dot(t, t)))
        values.append(float(np.dot(p, t)) / denominator if denominator > 0 else math.nan)
    return float(np.mean(values))


def _metric_set(
    pred: np.ndarray, true: np.ndarray, rng: float, channel_axis: int | None, *, full: bool
) -> tuple[dict[str, float], np.ndarray | None]:
    """Compute the four metrics of validated float arrays and, if ``full``, the SSIM map."""
    ssim = structural_similarity(
        true,
        pred,
        data_range=rng,
        channel_axis=channel_axis,
        win_size=_ssim_win_size(true.shape, channel_axis),
        full=full,
    )
    ssim_value, ssim_map = ssim if full else (ssim, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        metrics = {
            "psnr": _psnr(pred, true, rng),
            "ssim": float(ssim_value),
            "nrmse": float(normalized_root_mse(true, pred, normalization="min-max")),
            "mae": float(np.mean(np.abs(pred - true))),
        }
    return metrics, ssim_map


def _check_same_shape(prediction: np.ndarray, target: np.ndarray, name: str | None) -> None:
    if np.shape(prediction) != np.shape(target):
        raise DeepscopeError(
            f"{_label('prediction', name)} has shape {np.shape(prediction)} but the target "
            f"has shape {np.shape(target)}.",
            fix="Prediction and target must have the same axes and size.",
        )


def _psnr(prediction: np.ndarray, target: np.ndarray, data_range: float) -> float:
    with np.errstate(divide="ignore"):
        return float(peak_signal_noise_ratio(target, prediction, data_range=data_range))


def _label(what: str, name: str | None) -> str:
    return f"The {what} of image '{name}'" if name is not None else f"The {what}"


def _check_image(image: np.ndarray, channel_axis: int | None, what: str) -> int | None:
    """Check that ``image`` has 2 or 3 spatial axes; return the non-negative channel axis."""
    if channel_axis is not None:
        if not -image.ndim <= channel_axis < image.ndim:
            raise DeepscopeError(
                f"{what} has {image.ndim} axes, so channel_axis={channel_axis} does not exist.",
                fix="Pass the index of the channel axis (0 for channel-first) or None.",
            )
        channel_axis %= image.ndim
    spatial = image.ndim - (channel_axis is not None)
    if spatial not in (2, 3):
        channels = " plus one channel axis" if channel_axis is not None else ""
        raise DeepscopeError(
            f"{what} has shape {image.shape}: expected 2D (YX) or 3D (ZYX){channels}.",
            fix="Remove singleton axes, or pass channel_axis for multi-channel images.",
        )
    return channel_axis


def _finite_float(image: np.ndarray, what: str, name: str | None) -> np.ndarray:
    array = np.asarray(image, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise DeepscopeError(
            f"{_label(what, name)} contains NaN or infinite values.",
            fix="Check the image file and, for a prediction, the model (diverged training?).",
        )
    return array


def _data_range(target: np.ndarray, data_range: float | None, name: str | None) -> float:
    if data_range is not None:
        if not data_range > 0:
            raise ValueError(f"data_range must be positive, got {data_range}")
        return float(data_range)
    value = float(target.max() - target.min())
    if value == 0:
        raise DeepscopeError(
            f"{_label('target', name)} is constant, so it gives no intensity scale for "
            "PSNR and SSIM.",
            fix="Remove this image from the QC set, or pass data_range explicitly.",
        )
    return value


def _ssim_win_size(shape: tuple[int, ...], channel_axis: int | None) -> int:
    """Largest odd SSIM window up to 7 that fits every spatial axis."""
    smallest = min(size for axis, size in enumerate(shape) if axis != channel_axis)
    win = min(7, smallest)
    win -= 1 - win % 2
    if win < 3:
        raise DeepscopeError(
            f"An image of shape {shape} is too small for SSIM (each spatial axis needs "
            "at least 3 pixels).",
            fix="Use larger QC images.",
        )
    return win


# ------------------------------------------------------------------ gaussian baseline


def gaussian_baseline(
    image: np.ndarray, sigma: float, *, channel_axis: int | None = None
) -> np.ndarray:
    """Smooth an image with a Gaussian filter over its spatial axes only.

    Parameters
    ----------
    image
        2D or 3D image, optionally with a channel axis.
    sigma
        Standard deviation in pixels, the same along every spatial axis (Z included).
    channel_axis
        Index of the channel axis (not smoothed), or None.

    Returns
    -------
    numpy.ndarray
        Filtered image, same shape; float32 input stays float32, else float64.
    """
    channel_axis = _check_image(image, channel_axis, "The image")
    dtype = np.result_type(image.dtype, np.float32)
    sigmas = [0.0 if axis == channel_axis else float(sigma) for axis in range(image.ndim)]
    return ndimage.gaussian_filter(np.asarray(image, dtype=dtype), sigma=sigmas)


def best_gaussian_sigma(
    inputs: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    *,
    channel_axis: int | None = None,
    data_range: float | None = None,
    matched: bool = True,
) -> float:
    """Choose the Gaussian-filter baseline's sigma that maximises mean PSNR.

    The baseline is tuned on the QC set itself, so it is the strongest Gaussian
    filter the model could be compared with.

    Parameters
    ----------
    inputs, targets
        Matching noisy inputs and ground-truth targets (same shapes pairwise).
    sigmas
        Candidate standard deviations in pixels.
    channel_axis
        Index of the channel axis (never smoothed across), or None.
    data_range
        Passed to PSNR; defaults to each target's ``max - min``.
    matched
        Score the filtered images after :func:`affine_match` (the default, as
        :func:`evaluate_restoration` does), or as they are.

    Returns
    -------
    float
        The candidate sigma with the highest mean PSNR (the first one on ties).
    """
    return _best_sigma(inputs, targets, sigmas, channel_axis, data_range, matched, lambda: None)


def _best_sigma(
    inputs: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    sigmas: Sequence[float],
    channel_axis: int | None,
    data_range: float | None,
    matched: bool,
    advance: Callable[[], None],
) -> float:
    """:func:`best_gaussian_sigma`, calling ``advance()`` after each candidate sigma."""
    if len(inputs) != len(targets) or not inputs:
        raise ValueError("inputs and targets must be non-empty and of the same length")
    if not sigmas:
        raise ValueError("sigmas must contain at least one value")
    channel_axis = _check_image(np.asarray(targets[0]), channel_axis, "The target")
    trues = [np.asarray(t, dtype=np.float64) for t in targets]
    ranges = [_data_range(t, data_range, None) for t in trues]
    scores = []
    for sigma in sigmas:
        psnrs = []
        for noisy, true, rng in zip(inputs, trues, ranges, strict=True):
            smooth = gaussian_baseline(noisy, sigma, channel_axis=channel_axis).astype(np.float64)
            if matched:
                smooth = _affine_fit(smooth, true, channel_axis)
            psnrs.append(_psnr(smooth, true, rng))
        scores.append(np.mean(psnrs))
        advance()
    return float(sigmas[int(np.argmax(scores))])


def _stage(progress: Progress | None, stage: str, total: int) -> Callable[[], None]:
    """Report ``(stage, 0, total)`` now and return a function that reports one more done."""
    if progress is None:
        return lambda: None
    done = 0
    progress(stage, done, total)

    def advance() -> None:
        nonlocal done
        done += 1
        progress(stage, done, total)

    return advance


# ----------------------------------------------------------------------- evaluation


def evaluate_restoration(
    pairs: Sequence[tuple[str, np.ndarray, np.ndarray]],
    predict: Predict,
    out_dir: str | Path,
    *,
    channel_axis: int | None = None,
    checkpoint_predicts: Mapping[str, Predict] | None = None,
    history_csv: str | Path | None = None,
    title: str = "Restoration quality control",
    model_info: Mapping[str, Any] | None = None,
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    data_range: float | None = None,
    max_figure_images: int = MAX_FIGURE_IMAGES,
    progress: Progress | None = None,
    uncertainty: Predict | None = None,
) -> dict[str, Any]:
    """Evaluate a restoration model on QC pairs and write metrics, figures and a report.

    The model is compared with the raw input and with the Gaussian filter whose sigma
    maximises the mean matched PSNR on these pairs (:func:`best_gaussian_sigma`).
    Every method is scored raw and after :func:`affine_match` onto the target; the
    report's verdict and the best checkpoint use the matched scores.

    Parameters
    ----------
    pairs
        ``(name, input, target)`` triples; input and target are float arrays of the
        same shape, 2D/3D, channel-first when ``channel_axis`` is given.
    predict
        Callable mapping an input array to a restored array of the same shape.
    out_dir
        Output folder (created). Receives ``figures/*.png``, then ``metrics.csv``,
        ``summary.json`` and ``report.html``, all written atomically once every score
        is known (``report.html`` last).
    channel_axis
        Index of the channel axis of every image, or None.
    checkpoint_predicts
        Optional checkpoint name → predict callable. Each is scored like the model;
        the best one (highest matched PSNR, then matched SSIM) is flagged. Names
        containing ``epoch=N`` / ``epoch_N`` are plotted against the epoch.
    history_csv
        Optional training ``metrics.csv`` with an ``epoch`` column and ``train_loss``
        and/or ``val_loss`` (``*_epoch`` variants accepted); other columns and empty
        cells are ignored, several rows of one epoch are averaged.
    title
        Report title.
    model_info
        Optional key/value pairs shown as a table (model name, training data, ...).
    sigmas
        Candidate sigmas for the Gaussian baseline.
    data_range
        Fixed intensity range for PSNR/SSIM; default: each target's ``max - min``.
    max_figure_images
        Per-image figures are drawn for the first this-many images only (the tables
        and CSV always hold every image).
    progress
        Optional ``progress(stage, done, total)``, called with ``done = 0`` when a
        stage starts and after each step of it. Stages, in order: ``"baseline"``
        (one step per candidate sigma), ``"images"`` (per QC pair), ``"checkpoints"``
        (per checkpoint and pair; only with checkpoints) and ``"figures"`` (per
        figure). An exception raised by it stops the evaluation before
        ``summary.json`` and ``report.html`` are written.
    uncertainty
        Optional callable mapping an input array to the model's predicted per-pixel
        uncertainty (expected absolute error, in the target's units, same shape), e.g.
        probabilistic CARE's Laplace scale. The report then shows it beside the error
        of each example image and a calibration plot, and the summary gets an
        ``"uncertainty"`` entry (see :func:`uncertainty_calibration`).

    Returns
    -------
    dict
        The summary, as written to ``summary.json``: ``{"model": {...}, "input":
        {...}, "gaussian": {..., "sigma"}, "checkpoints": [{"name", ..., "best"},
        ...], "n_images"}``. Each method's dict and each checkpoint hold the mean over
        images of every key in :data:`METRICS`: ``psnr``, ``ssim``, ``nrmse``,
        ``mae`` (raw) and ``psnr_matched``, ``ssim_matched``, ``nrmse_matched``,
        ``mae_matched``, and ``pearson_r``. Non-finite numbers (PSNR of an exact
        match is infinite) are stored as None, so the file is strict JSON.
    """
    _check_pairs(pairs, channel_axis, data_range)
    channel_axis = _check_image(pairs[0][2], channel_axis, "The target")
    curves = _read_history(Path(history_csv)) if history_csv is not None else None
    out_dir = _prepare_out_dir(Path(out_dir))
    sigma = _best_sigma(
        [x for _, x, _ in pairs],
        [y for _, _, y in pairs],
        sigmas,
        channel_axis,
        data_range,
        True,
        _stage(progress, "baseline", len(sigmas)),
    )
    rows: list[dict[str, Any]] = []
    views: list[ImageViews] = []
    calibration: list[tuple[np.ndarray, np.ndarray]] = []
    advance = _stage(progress, "images", len(pairs))
    for index, (name, noisy, target) in enumerate(pairs):
        image_rows, image_views = _evaluate_image(
            name,
            noisy,
            target,
            predict,
            sigma,
            channel_axis,
            data_range,
            keep_views=index < max_figure_images,
            uncertainty=uncertainty,
            calibration=calibration,
        )
        rows.extend(image_rows)
        views.extend([image_views] if image_views is not None else [])
        advance()
    checkpoints = _evaluate_checkpoints(
        checkpoint_predicts or {}, pairs, channel_axis, data_range, progress
    )
    summary = _json_safe(_summarise(rows, sigma, checkpoints, len(pairs)))
    if uncertainty is not None:
        summary["uncertainty"] = _json_safe(
            uncertainty_calibration([u for u, _ in calibration], [e for _, e in calibration])
        )

    n_figures = 1 + bool(summary["checkpoints"]) + (curves is not None) + 2 * len(views)
    n_figures += (1 + len(views)) if uncertainty is not None else 0
    report = _build_report(
        title,
        out_dir,
        summary,
        rows,
        views,
        curves,
        model_info,
        data_range,
        _stage(progress, "figures", n_figures),
    )
    atomic_write_text(out_dir / "metrics.csv", _metrics_csv(rows))
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2, allow_nan=False))
    report.write(out_dir / "report.html")
    return summary


def _prepare_out_dir(out_dir: Path) -> Path:
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(
            "The QC output location is a file, not a folder.", out_dir, "Choose a folder."
        )
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    return out_dir


def _check_pairs(
    pairs: Sequence[tuple[str, np.ndarray, np.ndarray]],
    channel_axis: int | None,
    data_range: float | None,
) -> None:
    """Fail before any work on empty input, duplicate names, bad shapes or constant targets."""
    if not pairs:
        raise DeepscopeError(
            "There are no QC image pairs to evaluate.",
            fix="Provide at least one (name, input, target) pair, e.g. a qc/ folder.",
        )
    duplicates = sorted(n for n, k in Counter(name for name, _, _ in pairs).items() if k > 1)
    if duplicates:
        raise DeepscopeError(
            f"QC image names must be unique; repeated: {', '.join(duplicates)}.",
            fix="Rename the images so that each name occurs once.",
        )
    for name, noisy, target in pairs:
        _check_image(target, channel_axis, _label("target", name))
        if np.shape(noisy) != np.shape(target):
            raise DeepscopeError(
                f"{_label('input', name)} has shape {np.shape(noisy)} but its target has "
                f"shape {np.shape(target)}.",
                fix="Input and target of a QC pair must have the same axes and size.",
            )
        _data_range(np.asarray(target, dtype=np.float64), data_range, name)


def _run_predict(predict: Predict, image: np.ndarray, name: str, what: str) -> np.ndarray:
    output = np.asarray(predict(image))
    if output.shape != image.shape:
        raise DeepscopeError(
            f"The {what} returned shape {output.shape} for image '{name}' of shape {image.shape}.",
            fix="predict must return an array with the same axes and size as its input.",
        )
    return output


def _evaluate_image(
    name: str,
    noisy: np.ndarray,
    target: np.ndarray,
    predict: Predict,
    sigma: float,
    channel_axis: int | None,
    data_range: float | None,
    *,
    keep_views: bool,
    uncertainty: Predict | None = None,
    calibration: list[tuple[np.ndarray, np.ndarray]] | None = None,
) -> tuple[list[dict[str, Any]], ImageViews | None]:
    """Score model, input and Gaussian baseline on one pair; optionally keep crops.

    With ``uncertainty``, the predicted uncertainty and the model's absolute error
    (as it is, in the target's units) are sampled into ``calibration`` and kept as
    ``"uncertainty"`` and ``"abs_error"`` crops.
    """
    outputs = {
        "model": _run_predict(predict, noisy, name, "model"),
        "input": noisy,
        "gaussian": gaussian_baseline(noisy, sigma, channel_axis=channel_axis),
    }
    extra_views: dict[str, np.ndarray] = {}
    if uncertainty is not None:
        scale = np.asarray(_run_predict(uncertainty, noisy, name, "uncertainty"), np.float64)
        error = np.abs(np.asarray(outputs["model"], np.float64) - target)
        if calibration is not None:
            calibration.append(_sample_pixels(scale, error, seed=len(calibration)))
        extra_views = {"uncertainty": scale, "abs_error": error}
    metrics: dict[str, dict[str, float]] = {}
    matched: dict[str, np.ndarray] = {}
    ssim_map = None
    for method, image in outputs.items():
        full = keep_views and method == "model"
        metrics[method], matched[method], image_map = _score(
            image, target, data_range, channel_axis, full=full, name=name
        )
        ssim_map = image_map if full else ssim_map
    rows = [{"image": name, "method": method, **metrics[method]} for method in METHODS]
    if ssim_map is None:
        return rows, None
    views = figures.image_views(
        name,
        {**{key: matched[key] for key in ("input", "gaussian", "model")}, **extra_views},
        target,
        ssim_map,
        {key: (m["psnr_matched"], m["ssim_matched"]) for key, m in metrics.items()},
        channel_axis=channel_axis,
        histograms={"input": noisy, "model": outputs["model"], "target": target},
    )
    return rows, views


def _evaluate_checkpoints(
    checkpoint_predicts: Mapping[str, Predict],
    pairs: Sequence[tuple[str, np.ndarray, np.ndarray]],
    channel_axis: int | None,
    data_range: float | None,
    progress: Progress | None,
) -> list[dict[str, Any]]:
    """Mean metrics of every checkpoint; the best (matched PSNR, then SSIM) gets ``best``."""
    if not checkpoint_predicts:
        return []
    advance = _stage(progress, "checkpoints", len(checkpoint_predicts) * len(pairs))
    results = []
    for ckpt, predict in checkpoint_predicts.items():
        scores = []
        for name, noisy, target in pairs:
            output = _run_predict(predict, noisy, name, f"checkpoint '{ckpt}'")
            scores.append(
                _score(output, target, data_range, channel_axis, full=False, name=name)[0]
            )
            advance()
        means = {key: float(np.mean([s[key] for s in scores])) for key in METRICS}
        results.append({"name": str(ckpt), **means, "best": False})
    max(results, key=lambda r: (r["psnr_matched"], r["ssim_matched"]))["best"] = True
    return results


def _summarise(
    rows: list[dict[str, Any]], sigma: float, checkpoints: list[dict[str, Any]], n_images: int
) -> dict[str, Any]:
    means = {
        method: {m: float(np.mean([r[m] for r in rows if r["method"] == method])) for m in METRICS}
        for method in METHODS
    }
    means["gaussian"]["sigma"] = sigma
    return {**means, "checkpoints": checkpoints, "n_images": n_images}


def _json_safe(value: Any) -> Any:
    """Recursively turn non-finite floats into None and numpy scalars into Python ones."""
    if isinstance(value, Mapping):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _metrics_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["image", "method", *METRICS], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


# ---------------------------------------------------------------- training history


def _read_history(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read loss curves (label -> (epochs, values)) from a training metrics.csv."""
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            records = list(reader)
            fields = reader.fieldnames or []
    except OSError as exc:
        raise DeepscopeError(
            f"Cannot read the training history ({exc}).", path, "Check the history_csv path."
        ) from exc
    if "epoch" not in fields:
        raise DeepscopeError(
            "The training history has no 'epoch' column.",
            path,
            "Pass the metrics.csv written during training.",
        )
    curves = {}
    for label, candidates in _HISTORY_COLUMNS.items():
        column = next((c for c in candidates if c in fields), None)
        curve = _epoch_means(records, column) if column else None
        if curve is not None:
            curves[label] = curve
    if not curves:
        raise DeepscopeError(
            "The training history has no train_loss or val_loss values.",
            path,
            "Pass the metrics.csv written during training.",
        )
    return curves


def _epoch_means(
    records: list[dict[str, str]], column: str
) -> tuple[np.ndarray, np.ndarray] | None:
    per_epoch: dict[float, list[float]] = defaultdict(list)
    for record in records:
        epoch, value = _to_float(record.get("epoch")), _to_float(record.get(column))
        if math.isfinite(epoch) and math.isfinite(value):
            per_epoch[epoch].append(value)
    if not per_epoch:
        return None
    epochs = np.array(sorted(per_epoch))
    return epochs, np.array([np.mean(per_epoch[e]) for e in epochs])


def _to_float(text: str | None) -> float:
    try:
        return float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def _parse_epoch(name: str) -> int | None:
    match = re.search(r"epoch[=_\-\s]?(\d+)", name, flags=re.IGNORECASE)
    return int(match.group(1)) if match else None


# -------------------------------------------------------------------------- report


def _headline(summary: Mapping[str, Any]) -> tuple[str, str]:
    """Return the verdict (matched PSNR) for the top of the report and its paragraph style."""
    model, noisy, gauss = (finite_or_nan(summary[m]["psnr_matched"]) for m in METHODS)
    sigma = summary["gaussian"]["sigma"]
    baseline = (
        f"the best Gaussian filter (σ={sigma:g} pixels, chosen with these clean targets: "
        "the most any blur could do here)"
    )
    if not all(math.isfinite(v) for v in (model, noisy, gauss)):
        return (
            "At least one method reproduces the targets exactly (infinite PSNR); "
            "see the tables below.",
            "note",
        )
    over_input, over_gauss = model - noisy, model - gauss
    if over_input <= 0:
        side = "above" if over_gauss > 0 else "below"
        verdict = (
            f"The model does NOT improve on the noisy input: its mean PSNR is "
            f"{-over_input:.2f} dB lower than the input's, and {abs(over_gauss):.2f} dB "
            f"{side} {baseline}.",
            "warning",
        )
    elif over_gauss <= 0:
        verdict = (
            f"The model improves PSNR by {over_input:.2f} dB over the noisy input, but it "
            f"does NOT beat a simple Gaussian filter: {baseline} scores {-over_gauss:.2f} dB "
            "higher. A blur does as well on these images; consider more training or data.",
            "warning",
        )
    else:
        verdict = (
            f"The model improves PSNR by {over_input:.2f} dB over the noisy input and by "
            f"{over_gauss:.2f} dB over {baseline}.",
            "lead",
        )
    return f"{verdict[0]} {_MATCHING_REASON}", verdict[1]


def _scope_sentence(summary: Mapping[str, Any], data_range: float | None) -> str:
    ssim = {m: finite_or_nan(summary[m]["ssim_matched"]) for m in METHODS}
    raw = {m: finite_or_nan(summary[m]["psnr"]) for m in METHODS}
    scale = (
        f"a fixed intensity range of {data_range:g}"
        if data_range is not None
        else "each target's intensity range (max − min)"
    )
    return (
        f"Evaluated on {summary['n_images']} image pair(s). Mean SSIM after "
        f"matching: model {ssim['model']:.3f}, noisy input {ssim['input']:.3f}, Gaussian "
        f"filter {ssim['gaussian']:.3f} (1 = identical to the target). Without matching "
        f"(raw), mean PSNR is {raw['model']:.2f} dB for the model, {raw['input']:.2f} dB for "
        f"the noisy input and {raw['gaussian']:.2f} dB for the Gaussian filter. All methods "
        f"are scored against the target on the same scale, using {scale}."
    )


def _mean_table(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for method in ("input", "gaussian", "model"):
        label = METHOD_LABELS[method]
        if method == "gaussian":
            label += f" (σ={summary['gaussian']['sigma']:g})"
        columns = MATCHED_METRICS + RAW_METRICS
        rows.append(
            {
                "method": label,
                **{metric_label(m): summary[method][m] for m in columns},
                "Pearson r": summary[method].get("pearson_r"),
            }
        )
    return rows


def _per_image_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per image; PSNR and SSIM (matched, then raw) × method."""
    by_image: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for row in rows:
        by_image[row["image"]][row["method"]] = row
    return [
        {
            "image": image,
            **{
                f"{metric_label(metric)}: {METHOD_LABELS[method]}": scores[method][metric]
                for metric in ("psnr_matched", "ssim_matched", "psnr", "ssim")
                for method in ("input", "gaussian", "model")
            },
        }
        for image, scores in by_image.items()
    ]


def _checkpoint_table(checkpoints: list[dict[str, Any]]) -> list[dict[str, Any]]:
    shown = ("psnr_matched", "ssim_matched", "psnr", "ssim")
    return [
        {
            "checkpoint": c["name"],
            **{f"mean {metric_label(m)}": c[m] for m in shown},
            "best": "★ best" if c["best"] else "",
        }
        for c in checkpoints
    ]


def _build_report(
    title: str,
    out_dir: Path,
    summary: Mapping[str, Any],
    rows: list[dict[str, Any]],
    views: list[ImageViews],
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]] | None,
    model_info: Mapping[str, Any] | None,
    data_range: float | None,
    figure_done: Callable[[], None],
) -> HtmlReport:
    """Assemble the report, saving its figures; ``figure_done()`` after each figure."""
    report = HtmlReport(title, figures_dir=out_dir / "figures")

    def add_figure(figure: Any, caption: str, filename: str) -> None:
        report.add_figure(figure, caption, filename=filename)
        figure_done()

    report.add_paragraph(*_headline(summary))
    report.add_paragraph(_scope_sentence(summary, data_range), css_class="note")
    if model_info:
        report.add_heading("Model")
        report.add_key_values(model_info)
    report.add_heading("Mean metrics")
    report.add_table(_mean_table(summary), caption="Averages over all QC images")
    report.add_table(
        [
            {"metric": METRIC_LABELS.get(m, m), "what it means": text}
            for m, text in _METRIC_HELP.items()
        ],
        caption="What the metrics mean",
    )
    if "uncertainty" in summary:
        _add_calibration_section(summary["uncertainty"], report, add_figure)
    add_figure(
        figures.mean_metrics_figure(summary),
        "Mean PSNR and SSIM of the noisy input, the best Gaussian filter and the model, "
        "after matching brightness and contrast to the target (solid) and raw (hatched).",
        "mean_metrics.png",
    )
    if summary["checkpoints"]:
        _add_checkpoint_section(summary, report, add_figure)
    if curves is not None:
        report.add_heading("Training history")
        add_figure(
            figures.loss_figure(curves),
            "Training and validation loss per epoch. A validation loss that rises while the "
            "training loss falls indicates over-fitting.",
            "loss_curves.png",
        )
    report.add_heading("Per image")
    report.add_table(
        _per_image_table(rows),
        caption="Metrics of every QC image (NRMSE and MAE are in metrics.csv)",
    )
    _add_image_figures(views, summary, report, add_figure)
    return report


def _add_checkpoint_section(
    summary: Mapping[str, Any], report: HtmlReport, add_figure: Callable[[Any, str, str], None]
) -> None:
    checkpoints = summary["checkpoints"]
    report.add_heading("Checkpoints")
    best = next(c for c in checkpoints if c["best"])
    report.add_paragraph(
        f"Best checkpoint: {best['name']} (mean PSNR {format_value(best['psnr_matched'])} dB, "
        f"mean SSIM {format_value(best['ssim_matched'])}, after matching brightness and "
        "contrast to the target)."
    )
    report.add_table(_checkpoint_table(checkpoints), caption="Mean metrics per checkpoint")
    add_figure(
        figures.checkpoint_figure(
            checkpoints,
            {m: summary[m] for m in ("input", "gaussian")},
            epochs=[_parse_epoch(c["name"]) for c in checkpoints],
        ),
        "Mean matched PSNR and SSIM of each checkpoint; the best one (highest matched PSNR) "
        "is starred. Dotted: noisy input; dashed: best Gaussian filter.",
        "checkpoints.png",
    )


def _add_image_figures(
    views: list[ImageViews],
    summary: Mapping[str, Any],
    report: HtmlReport,
    add_figure: Callable[[Any, str, str], None],
) -> None:
    sigma = summary["gaussian"]["sigma"]
    report.add_heading("Example images")
    report.add_paragraph(
        f"Figures for the first {len(views)} of {summary['n_images']} image(s). Input, filter "
        "and model are shown, and scored, after matching their brightness and contrast to the "
        "target; all panels share the target's contrast (1st–99.5th percentile).",
        css_class="note",
    )
    for index, views_i in enumerate(views):
        stem = f"{index:02d}_{safe_filename(views_i.name)}"
        where = f" ({views_i.where})" if views_i.where else ""
        report.add_heading(views_i.name, level=3)
        add_figure(
            figures.comparison_figure(views_i, sigma),
            f"{views_i.name}: noisy input, Gaussian filter, model and target{where}; "
            "matched PSNR and SSIM above each panel.",
            f"{stem}_comparison.png",
        )
        add_figure(
            figures.error_figure(views_i),
            f"{views_i.name}: absolute error and local SSIM of the matched model (same view "
            "as above; bright error / dark SSIM = poor match), and intensity histograms of "
            "the whole image before matching.",
            f"{stem}_errors.png",
        )
        if "uncertainty" in views_i.planes:
            add_figure(
                uncertainty_figure(views_i),
                f"{views_i.name}: the model's actual error |model − target| (not matched) "
                "beside the error it predicted for each pixel (its uncertainty), on the same "
                "colour scale: where the right panel is dark but the left is bright, the "
                "model was over-confident.",
                f"{stem}_uncertainty.png",
            )


# --------------------------------------------------------------------- uncertainty


def _sample_pixels(
    scale: np.ndarray, error: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """At most ``_CALIBRATION_SAMPLES`` (scale, error) pixel pairs, chosen at random."""
    scale, error = scale.ravel(), error.ravel()
    if scale.size > _CALIBRATION_SAMPLES:
        pick = np.random.default_rng(seed).choice(scale.size, _CALIBRATION_SAMPLES, False)
        scale, error = scale[pick], error[pick]
    return scale, error


def uncertainty_calibration(
    scales: Sequence[np.ndarray], errors: Sequence[np.ndarray], bins: int = CALIBRATION_BINS
) -> dict[str, Any]:
    """Compare predicted uncertainty with actual error, pixel by pixel, in bins.

    Pixels are sorted by predicted uncertainty into ``bins`` groups of equal size; in a
    well-calibrated model the mean actual absolute error of each group equals its mean
    predicted uncertainty (for a Laplace prediction, the scale ``b`` is the expected
    absolute error).

    Parameters
    ----------
    scales
        Predicted uncertainties (any shapes; flattened and pooled).
    errors
        Actual absolute errors, matching ``scales`` element by element.
    bins
        Number of groups.

    Returns
    -------
    dict
        ``mean_predicted_error``, ``mean_actual_error``, ``actual_to_predicted`` (their
        ratio: 1 = calibrated, above 1 = over-confident), ``spearman_r`` (rank
        correlation of predicted and actual error per pixel: does the map point at the
        pixels with large errors?) and ``bins``: a list of ``{"predicted", "actual",
        "pixels"}``, in increasing predicted uncertainty.
    """
    from scipy.stats import spearmanr

    s = np.concatenate([np.ravel(a) for a in scales]).astype(np.float64)
    e = np.concatenate([np.ravel(a) for a in errors]).astype(np.float64)
    if s.size != e.size or s.size == 0:
        raise ValueError("scales and errors must be non-empty and of the same size")
    edges = np.unique(np.quantile(s, np.linspace(0.0, 1.0, bins + 1)))
    index = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, max(len(edges) - 2, 0))
    table = []
    for b in range(max(len(edges) - 1, 1)):
        inside = index == b
        if inside.any():
            table.append(
                {
                    "predicted": float(s[inside].mean()),
                    "actual": float(e[inside].mean()),
                    "pixels": int(inside.sum()),
                }
            )
    constant = np.ptp(s) == 0 or np.ptp(e) == 0
    return {
        "mean_predicted_error": float(s.mean()),
        "mean_actual_error": float(e.mean()),
        "actual_to_predicted": float(e.mean() / s.mean()) if s.mean() > 0 else math.nan,
        "spearman_r": math.nan if constant else float(spearmanr(s, e)[0]),
        "bins": table,
    }


def uncertainty_figure(views: ImageViews) -> Any:
    """Actual absolute error beside the predicted uncertainty, same colours, per channel.

    Parameters
    ----------
    views
        Crops from :func:`deepscope.workflow.qc_figures.image_views` holding
        ``"abs_error"`` and ``"uncertainty"`` planes.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    error, scale = views.planes["abs_error"], views.planes["uncertainty"]
    n_rows = error.shape[0]
    fig = Figure(figsize=(7.4, 3.2 * n_rows))
    fig.subplots_adjust(left=0.02, right=0.9, bottom=0.03, top=0.88, wspace=0.08, hspace=0.15)
    axes = fig.subplots(n_rows, 2, squeeze=False)
    for row in range(n_rows):
        top = float(np.percentile(np.concatenate([error[row].ravel(), scale[row].ravel()]), 99.5))
        top = max(top, np.finfo(float).tiny)
        panels = (
            ("Actual error |model − target|", error[row]),
            ("Predicted error (uncertainty)", scale[row]),
        )
        for col, (title, data) in enumerate(panels):
            ax = axes[row, col]
            image = ax.imshow(data, cmap="magma", vmin=0.0, vmax=top)
            ax.set_axis_off()
            if row == 0:
                ax.set_title(title, fontsize=10)
        fig.colorbar(image, ax=list(axes[row]), fraction=0.04, pad=0.02)
    return fig


def calibration_figure(calibration: Mapping[str, Any]) -> Any:
    """Mean actual error against mean predicted error per bin, with the ideal diagonal.

    Parameters
    ----------
    calibration
        The dict returned by :func:`uncertainty_calibration`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    bins = calibration["bins"]
    predicted = np.array([b["predicted"] for b in bins])
    actual = np.array([b["actual"] for b in bins])
    fig = Figure(figsize=(5.2, 4.4))
    fig.subplots_adjust(left=0.16, right=0.96, bottom=0.13, top=0.9)
    ax = fig.subplots()
    values = np.concatenate([predicted, actual])
    top = float(values.max(initial=0.0)) * 1.08 or 1.0
    # Errors often span decades (background vs bright structures): then log axes.
    log = values.size > 0 and values.min() > 0 and values.max() / values.min() > 20
    bottom = float(values.min()) / 1.5 if log else 0.0
    ax.plot([bottom, top], [bottom, top], ls="--", color="#999999", label="perfectly calibrated")
    ax.plot(predicted, actual, "o-", color=figures.METHOD_COLORS["model"], label="groups of pixels")
    if log:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set(
        xlim=(bottom, top),
        ylim=(bottom, top),
        xlabel="predicted error (mean uncertainty of the group)",
        ylabel="actual error (mean |model − target|)",
    )
    ax.set_title("Calibration of the uncertainty", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    return fig


def _add_calibration_section(
    calibration: Mapping[str, Any],
    report: HtmlReport,
    add_figure: Callable[[Any, str, str], None],
) -> None:
    ratio = finite_or_nan(calibration.get("actual_to_predicted"))
    rank = finite_or_nan(calibration.get("spearman_r"))
    if not math.isfinite(ratio):
        judgement = "The predicted uncertainty is zero, so its calibration cannot be judged."
    elif ratio > 1.25:
        judgement = (
            f"The model is over-confident: its actual errors are on average {ratio:.2f} times "
            "the errors it predicts. Treat the uncertainty map as a lower bound."
        )
    elif ratio < 0.8:
        judgement = (
            f"The model is cautious: its actual errors are on average {ratio:.2f} times the "
            "errors it predicts, i.e. smaller than it expects."
        )
    else:
        judgement = (
            f"The predicted uncertainty is well calibrated on average: actual errors are "
            f"{ratio:.2f} times the predicted ones (1 = perfect)."
        )
    report.add_heading("Uncertainty")
    report.add_paragraph(
        f"{judgement} Rank correlation between predicted and actual error per pixel: "
        f"{rank:.2f} (1 = the uncertainty map ranks the pixels exactly by their error; "
        "0 = it does not point at the errors).",
        css_class="lead",
    )
    add_figure(
        calibration_figure(calibration),
        "Pixels of all QC images sorted by predicted uncertainty into groups of equal size: "
        "mean actual error |model − target| (not matched) of each group against its mean "
        "predicted error. Points on the dashed diagonal are calibrated; above it, the model "
        "is over-confident.",
        "calibration.png",
    )
