"""Figures of the restoration quality-control report.

Pure plotting: every function takes arrays or dicts and returns a matplotlib
:class:`~matplotlib.figure.Figure` (never ``pyplot``, so nothing is shown and no global
state is kept). Computing the metrics and writing files is the job of
:mod:`deepscope.workflow.qc_restoration`.

Image panels are sized so that a crop of at most :data:`CROP_SIZE` pixels is drawn at
about one screen pixel per image pixel when saved at :attr:`HtmlReport.DPI
<deepscope.workflow.report.HtmlReport.DPI>`, which keeps a report with several images
to a few megabytes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from deepscope.workflow.report import HtmlReport

__all__ = [
    "CROP_SIZE",
    "METHOD_COLORS",
    "METHOD_LABELS",
    "METRIC_LABELS",
    "ImageViews",
    "checkpoint_figure",
    "comparison_figure",
    "error_figure",
    "finite_or_nan",
    "image_views",
    "loss_figure",
    "mean_metrics_figure",
    "metric_label",
]

METHOD_LABELS = {
    "input": "Noisy input",
    "gaussian": "Gaussian filter",
    "model": "Model",
    "target": "Target",
}
METHOD_COLORS = {"input": "#999999", "gaussian": "#e69f00", "model": "#0072b2", "target": "#000"}
METRIC_LABELS = {"psnr": "PSNR (dB)", "ssim": "SSIM", "nrmse": "NRMSE", "mae": "MAE"}
MATCHED_SUFFIX = "_matched"

CROP_SIZE = 256
"""Largest side, in pixels, of the crop shown per image (single channel)."""
MAX_CHANNELS_SHOWN = 4

_DPI = HtmlReport.DPI
_MIN_PANEL_PX = 200  # small crops are enlarged to this size
_MIN_TITLE_PX = 170  # room for a two-line panel title
_MARGIN, _GAP, _TITLE = 0.08, 0.06, 0.5  # inches
_ERROR_ZOOM = 0.75  # error and SSIM maps are drawn smaller than the images


def metric_label(key: str) -> str:
    """Return the display name of a metric key, e.g. ``"psnr_matched"`` → "PSNR (dB), matched"."""
    base = key.removesuffix(MATCHED_SUFFIX)
    kind = "matched" if key.endswith(MATCHED_SUFFIX) else "raw"
    return f"{METRIC_LABELS[base]}, {kind}"


def finite_or_nan(value: float | None) -> float:
    """Return ``value`` as a float, or NaN for None and infinities (nothing to plot)."""
    return float(value) if value is not None and math.isfinite(value) else math.nan


# ----------------------------------------------------------------- per-image views


@dataclass
class ImageViews:
    """What the per-image figures show: small 2D crops, never whole volumes.

    Attributes
    ----------
    name
        Image name, for titles.
    planes
        ``"input"``, ``"gaussian"``, ``"model"`` and ``"target"`` (or a subset that
        includes ``"model"`` and ``"target"``) → crop of shape (C, h, w).
    ssim_map
        Local SSIM of the model, same crop, (C, h, w).
    clims
        Display range per channel (from the whole target).
    hist_edges, hist_counts
        Intensity histograms of whole images on common bins (key → counts).
    scores
        Method → (PSNR, SSIM) shown in the panel titles.
    where
        Which slice, crop and channels are shown ("" when the whole image is).
    """

    name: str
    planes: dict[str, np.ndarray]
    ssim_map: np.ndarray
    clims: list[tuple[float, float]]
    hist_edges: np.ndarray
    hist_counts: dict[str, np.ndarray]
    scores: dict[str, tuple[float, float]]
    where: str


def image_views(
    name: str,
    shown: Mapping[str, np.ndarray],
    target: np.ndarray,
    ssim_map: np.ndarray,
    scores: Mapping[str, tuple[float, float]],
    *,
    channel_axis: int | None = None,
    histograms: Mapping[str, np.ndarray] | None = None,
    crop_size: int = CROP_SIZE,
) -> ImageViews:
    """Cut the crops and histograms that :func:`comparison_figure` and :func:`error_figure` draw.

    Parameters
    ----------
    name
        Image name.
    shown
        Method → image to display (``"model"`` required), each shaped like ``target``.
    target
        Ground truth, 2D/3D with an optional channel axis.
    ssim_map
        Local SSIM of the model, shaped like ``target``.
    scores
        Method → (PSNR, SSIM) for the panel titles.
    channel_axis
        Index of the channel axis, or None.
    histograms
        Key (a method or ``"target"``) → image whose whole-image intensity histogram is
        drawn; default: every shown image and the target.
    crop_size
        Largest crop side for one channel; with C channels shown the side shrinks by
        √C so that the figure keeps about the same number of pixels.

    Returns
    -------
    ImageViews
        Middle Z slice for 3D, the first :data:`MAX_CHANNELS_SHOWN` channels, and the
        crop with the most structure in the target among 3 × 3 candidate positions.
    """
    if channel_axis is not None:
        channel_axis %= target.ndim
    target_planes = _display_planes(target, channel_axis)
    side = max(16, int(crop_size / math.sqrt(target_planes.shape[0])))
    crop = (slice(None), *_crop_window(target_planes, side))
    planes = {key: _display_planes(a, channel_axis)[crop] for key, a in shown.items()}
    planes["target"] = target_planes[crop]
    sources = dict(histograms) if histograms is not None else {**shown, "target": target}
    edges, counts = _histograms(sources)
    return ImageViews(
        name=name,
        planes=planes,
        ssim_map=_display_planes(ssim_map, channel_axis)[crop],
        clims=[tuple(np.percentile(p, (1.0, 99.5))) for p in target_planes],
        hist_edges=edges,
        hist_counts=counts,
        scores={key: (float(p), float(s)) for key, (p, s) in scores.items()},
        where=_where_note(target.shape, channel_axis, crop[1:]),
    )


def _display_planes(image: np.ndarray, channel_axis: int | None) -> np.ndarray:
    """(C, Y, X) planes to show: channel-first, middle Z slice for 3D, first channels."""
    array = np.moveaxis(image, channel_axis, 0) if channel_axis is not None else image[None]
    if array.ndim == 4:
        array = array[:, array.shape[1] // 2]
    return np.asarray(array[:MAX_CHANNELS_SHOWN], dtype=np.float64)


def _crop_window(planes: np.ndarray, size: int) -> tuple[slice, slice]:
    """Pick the crop (at most size × size) with the most structure among 3 × 3 candidates."""

    def starts(n: int) -> list[int]:
        return sorted({0, (n - size) // 2, n - size}) if n > size else [0]

    candidates = [(y, x) for y in starts(planes.shape[1]) for x in starts(planes.shape[2])]
    y, x = max(
        candidates, key=lambda yx: planes[:, yx[0] : yx[0] + size, yx[1] : yx[1] + size].std()
    )
    return slice(y, y + size), slice(x, x + size)


def _where_note(shape: tuple[int, ...], channel_axis: int | None, crop: tuple[slice, ...]) -> str:
    spatial = [s for axis, s in enumerate(shape) if axis != channel_axis]
    notes = []
    if len(spatial) == 3:
        notes.append(f"3D stack: middle Z slice shown (z = {spatial[0] // 2} of {spatial[0]})")
    height, width = spatial[-2:]
    ys, xs = (slice(s.start, min(s.stop, n)) for s, n in zip(crop, (height, width), strict=True))
    if (ys.stop - ys.start, xs.stop - xs.start) != (height, width):
        notes.append(f"crop y {ys.start}–{ys.stop}, x {xs.start}–{xs.stop} of {height}×{width}")
    if channel_axis is not None:
        n_channels = shape[channel_axis]
        shown = min(n_channels, MAX_CHANNELS_SHOWN)
        notes.append(f"one row per channel ({shown} of {n_channels} shown)")
    return "; ".join(notes)


def _histograms(
    arrays: Mapping[str, np.ndarray], bins: int = 128
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Histogram every array on common bins spanning their 0.1–99.9th percentiles."""
    limits = np.array([np.percentile(a, (0.1, 99.9)) for a in arrays.values()])
    low, high = float(limits[:, 0].min()), float(limits[:, 1].max())
    edges = np.linspace(low, high if high > low else low + 1.0, bins + 1)
    return edges, {key: np.histogram(a, bins=edges)[0] for key, a in arrays.items()}


# ------------------------------------------------------------------ image figures


def _panel_size(crop: np.ndarray, zoom: float = 1.0) -> tuple[float, float, float]:
    """(axes width, image width, image height) in inches for one (C, h, w) crop.

    Crops are drawn at ``zoom`` screen pixels per image pixel, enlarged if that is
    smaller than the minimum panel size.
    """
    height, width = crop.shape[-2:]
    scale = max(zoom, _MIN_PANEL_PX / max(height, width))  # screen px per image px
    image_w, image_h = width * scale / _DPI, height * scale / _DPI
    return max(image_w, _MIN_TITLE_PX / _DPI), image_w, image_h


def _add_axes(fig: Figure, left: float, bottom: float, width: float, height: float) -> Axes:
    """Add axes placed in inches (fixed layout: much faster than a layout engine)."""
    fig_w, fig_h = fig.get_size_inches()
    return fig.add_axes((left / fig_w, bottom / fig_h, width / fig_w, height / fig_h))


def _mark_channel(ax: Axes, channel: int, n_channels: int) -> None:
    if n_channels > 1:
        ax.text(
            0.02,
            0.97,
            f"channel {channel}",
            transform=ax.transAxes,
            va="top",
            color="yellow",
            fontsize=9,
        )


def comparison_figure(views: ImageViews, sigma: float | None = None) -> Figure:
    """Input | Gaussian | model | target side by side, one row per channel.

    Parameters
    ----------
    views
        Crops from :func:`image_views`; panels missing from ``views.planes`` are skipped.
    sigma
        Gaussian filter sigma, for its panel title.

    Returns
    -------
    matplotlib.figure.Figure
        All panels share the target's contrast limits; titles show ``views.scores``.
    """
    titles = {
        "input": METHOD_LABELS["input"],
        "gaussian": METHOD_LABELS["gaussian"] + (f" (σ={sigma:g})" if sigma is not None else ""),
        "model": METHOD_LABELS["model"],
        "target": METHOD_LABELS["target"],
    }
    keys = [key for key in titles if key in views.planes]
    target = views.planes["target"]
    n_rows = target.shape[0]
    axes_w, _, image_h = _panel_size(target)
    fig = Figure(
        figsize=(
            2 * _MARGIN + len(keys) * axes_w + (len(keys) - 1) * _GAP,
            _TITLE + n_rows * image_h + (n_rows - 1) * _GAP + _MARGIN,
        )
    )
    for row in range(n_rows):
        low, high = views.clims[row]
        bottom = _MARGIN + (n_rows - 1 - row) * (image_h + _GAP)
        for col, key in enumerate(keys):
            ax = _add_axes(fig, _MARGIN + col * (axes_w + _GAP), bottom, axes_w, image_h)
            ax.imshow(views.planes[key][row], cmap="gray", vmin=low, vmax=high)
            ax.set_axis_off()
            _mark_channel(ax, row, n_rows)
            if row == 0:
                score = views.scores.get(key)
                extra = f"\n{score[0]:.2f} dB, SSIM {score[1]:.3f}" if score else "\n "
                ax.set_title(titles[key] + extra, fontsize=10)
    return fig


def error_figure(views: ImageViews) -> Figure:
    """Absolute error and local SSIM of the model per channel, plus intensity histograms.

    Parameters
    ----------
    views
        Crops and histograms from :func:`image_views`.

    Returns
    -------
    matplotlib.figure.Figure
        ``|model − target|`` (model matched to the target) and its local SSIM map on
        the crop, one row per channel, and the whole-image histograms (log scale) on
        the right.
    """
    n_rows = views.planes["target"].shape[0]
    axes_w, image_w, image_h = _panel_size(views.planes["target"], _ERROR_ZOOM)
    colorbar_w, colorbar_pad, colorbar_room = 0.12, 0.08, 0.55
    hist_left, hist_w, hist_bottom = 0.75, 3.2, 0.55
    row_gap = 0.2  # room for the colour bars' end labels
    maps_h = n_rows * image_h + (n_rows - 1) * row_gap
    fig_h = max(_TITLE + maps_h + _MARGIN, 3.3)
    column_w = axes_w + colorbar_pad + colorbar_w + colorbar_room
    fig = Figure(figsize=(_MARGIN + 2 * column_w + hist_left + hist_w + 0.15, fig_h))
    error = np.abs(views.planes["model"] - views.planes["target"])
    panels = (
        ("|model − target|, matched", error, "magma", None),
        ("Local SSIM of the model\n(1 = identical)", views.ssim_map, "viridis", (0.0, 1.0)),
    )
    top = fig_h - _TITLE
    for row in range(n_rows):
        bottom = top - (row + 1) * image_h - row * row_gap
        for col, (title, data, cmap, limits) in enumerate(panels):
            left = _MARGIN + col * column_w
            if limits is None:
                limits = (0.0, max(float(np.percentile(data[row], 99.5)), np.finfo(float).tiny))
            ax = _add_axes(fig, left, bottom, axes_w, image_h)
            image = ax.imshow(data[row], cmap=cmap, vmin=limits[0], vmax=limits[1])
            ax.set_axis_off()
            _mark_channel(ax, row, n_rows)
            if row == 0:
                ax.set_title(title, fontsize=10)
            bar_left = left + (axes_w + image_w) / 2 + colorbar_pad
            fig.colorbar(image, cax=_add_axes(fig, bar_left, bottom, colorbar_w, image_h))
    ax = _add_axes(
        fig, _MARGIN + 2 * column_w + hist_left, hist_bottom, hist_w, fig_h - hist_bottom - 0.35
    )
    for key, counts in views.hist_counts.items():
        color = METHOD_COLORS.get(key)
        ax.stairs(counts, views.hist_edges, label=METHOD_LABELS.get(key, key), color=color)
    ax.set_yscale("log")
    ax.set(xlabel="intensity", ylabel="number of pixels")
    ax.set_title("Intensity histogram (whole image)", fontsize=10)
    ax.legend(fontsize=8)
    return fig


# ---------------------------------------------------------------- summary figures


def mean_metrics_figure(
    means: Mapping[str, Mapping[str, float | None]],
    methods: Sequence[str] = ("input", "gaussian", "model"),
) -> Figure:
    """Bar chart of mean PSNR and SSIM per method, matched (solid) and raw (hatched).

    Parameters
    ----------
    means
        Method → metrics dict with ``psnr``, ``ssim``, ``psnr_matched`` and
        ``ssim_matched`` (None or infinite values are left out).
    methods
        Methods to show, in order.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig = Figure(figsize=(10, 3.6))  # fixed margins: much faster than a layout engine
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.09, top=0.92, wspace=0.15)
    x = np.arange(len(methods))
    colors = [METHOD_COLORS.get(m, "#555") for m in methods]
    for ax, metric in zip(fig.subplots(1, 2), ("psnr", "ssim"), strict=True):
        for offset, key, style in (
            (-0.2, f"{metric}{MATCHED_SUFFIX}", {"label": "matched"}),
            (0.2, metric, {"label": "raw", "alpha": 0.45, "hatch": "//"}),
        ):
            values = [finite_or_nan(means[m].get(key)) for m in methods]
            bars = ax.bar(x + offset, values, width=0.4, color=colors, edgecolor="white", **style)
            ax.bar_label(bars, fmt="%.3g", fontsize=8)
        ax.set_xticks(x, [METHOD_LABELS.get(m, m) for m in methods])
        ax.set_title(f"Mean {METRIC_LABELS[metric]} (higher is better)", fontsize=10)
        ax.margins(y=0.15)
        ax.legend(fontsize=8, loc="upper left")
    return fig


def loss_figure(curves: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> Figure:
    """Loss per epoch for each curve (label → (epochs, values)); log scale for wide ranges."""
    fig = Figure(figsize=(7, 3.6))
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.14, top=0.91)
    ax = fig.subplots()
    for label, (epochs, values) in curves.items():
        ax.plot(epochs, values, marker=".", label=label.replace("_", " "))
    values = np.concatenate([v for _, v in curves.values()])
    if values.min() > 0 and values.max() / values.min() > 100:
        ax.set_yscale("log")
    ax.set(xlabel="epoch", ylabel="loss", title="Training history")
    ax.legend()
    return fig


def checkpoint_figure(
    checkpoints: Sequence[Mapping[str, Any]],
    baselines: Mapping[str, Mapping[str, float | None]],
    *,
    epochs: Sequence[int | None] | None = None,
    metrics: tuple[str, str] = ("psnr_matched", "ssim_matched"),
) -> Figure:
    """Mean metrics of every checkpoint, the best one starred, baselines as lines.

    Parameters
    ----------
    checkpoints
        Dicts with ``name``, ``best`` (exactly one True) and the ``metrics`` keys.
    baselines
        Method (``"input"``, ``"gaussian"``) → metrics dict, drawn as horizontal lines.
    epochs
        Epoch of each checkpoint; when all are known they form the x axis, otherwise
        the checkpoints are shown in the given order with their names.
    metrics
        The two metric keys to plot.

    Returns
    -------
    matplotlib.figure.Figure
    """
    by_epoch = epochs is not None and all(e is not None for e in epochs)
    x = np.array(epochs if by_epoch else range(len(checkpoints)), dtype=float)
    order = np.argsort(x, kind="stable")
    best = next(i for i, c in enumerate(checkpoints) if c["best"])
    fig = Figure(figsize=(10, 3.6), layout=None if by_epoch else "constrained")
    if by_epoch:  # names on the x axis need a layout engine; epochs do not
        fig.subplots_adjust(left=0.06, right=0.99, bottom=0.14, top=0.91, wspace=0.18)
    for ax, metric in zip(fig.subplots(1, 2), metrics, strict=True):
        y = np.array([finite_or_nan(c[metric]) for c in checkpoints])
        ax.plot(x[order], y[order], "o-", color=METHOD_COLORS["model"], label="checkpoint")
        ax.plot(x[best], y[best], "*", ms=18, color="gold", mec="black", label="best")
        for method, style in (("input", ":"), ("gaussian", "--")):
            if method in baselines:
                ax.axhline(
                    finite_or_nan(baselines[method].get(metric)),
                    ls=style,
                    color=METHOD_COLORS[method],
                    label=METHOD_LABELS[method],
                )
        if by_epoch:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        else:
            ax.set_xticks(x, [str(c["name"]) for c in checkpoints], rotation=30, ha="right")
        ax.set(xlabel="epoch" if by_epoch else "checkpoint", title=f"Mean {metric_label(metric)}")
        ax.legend(fontsize=8)
    return fig
