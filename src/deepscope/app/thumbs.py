"""Small pictures of microscopy images for the web page.

16-bit and float images get a percentile contrast stretch (1st–99.8th); Z-stacks show
their middle slice or a maximum projection; time series their first frame; several
channels show as red/green/blue (first three). Masks and class maps are drawn as
coloured overlays on their image.
"""

from __future__ import annotations

import io
from collections import OrderedDict
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from skimage.color import label2rgb
from skimage.transform import resize

from deepscope.data.io import read_image

_CACHE: OrderedDict[tuple, bytes] = OrderedDict()
_CACHE_SIZE = 256


def to_plane(data: np.ndarray, axes: str, projection: str = "middle") -> np.ndarray:
    """Reduce an image with ``axes`` to ``(Y, X)`` or ``(Y, X, C≤3)``.

    Parameters
    ----------
    data
        The pixels.
    axes
        One letter per dimension, from ``TCZYX``.
    projection
        ``"middle"`` (middle Z slice) or ``"max"`` (maximum projection over Z).
    """
    axes = axes.upper()
    if "T" in axes:
        data = np.take(data, 0, axis=axes.index("T"))
        axes = axes.replace("T", "")
    if "Z" in axes:
        z = axes.index("Z")
        if projection == "max":
            data = data.max(axis=z)
        else:
            data = np.take(data, data.shape[z] // 2, axis=z)
        axes = axes.replace("Z", "")
    if "C" in axes:
        data = np.moveaxis(data, axes.index("C"), -1)[..., :3]
        if data.shape[-1] == 1:
            data = data[..., 0]
        elif data.shape[-1] == 2:
            data = np.concatenate([data, np.zeros_like(data[..., :1])], axis=-1)
    return np.asarray(data)


def stretch(plane: np.ndarray, low: float = 1.0, high: float = 99.8) -> np.ndarray:
    """Map the ``low``–``high`` percentiles of ``plane`` to 0–255 (uint8), per channel."""
    plane = np.asarray(plane, dtype=np.float32)
    if plane.ndim == 3:
        return np.stack([stretch(plane[..., c], low, high) for c in range(plane.shape[-1])], -1)
    finite = plane[np.isfinite(plane)]
    if finite.size == 0:
        return np.zeros(plane.shape, np.uint8)
    lo, hi = np.percentile(finite, [low, high])
    if hi <= lo:
        hi = lo + 1.0
    out = np.clip((np.nan_to_num(plane, nan=lo) - lo) / (hi - lo), 0, 1)
    return (out * 255).astype(np.uint8)


def overlay(plane: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Colour the non-zero ``labels`` over a grey (or colour) ``plane``; returns uint8 RGB."""
    grey = stretch(plane)
    if grey.ndim == 3:
        grey = grey.mean(axis=-1)
    labels = np.asarray(labels)
    if labels.ndim == 3:
        labels = labels[..., 0]
    labels = np.rint(labels).astype(np.int64) if labels.dtype.kind == "f" else labels
    labels = labels.astype(np.int64)
    if labels.shape != grey.shape:
        labels = resize(labels, grey.shape, order=0, preserve_range=True, anti_aliasing=False)
    rgb = label2rgb(labels, image=grey / 255.0, alpha=0.35, bg_label=0, image_alpha=1.0)
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def fit(picture: np.ndarray, size: int) -> np.ndarray:
    """Shrink a uint8 picture so its longer side is at most ``size`` (never enlarged)."""
    h, w = picture.shape[:2]
    scale = size / max(h, w)
    if scale >= 1:
        return picture
    shape = (max(1, round(h * scale)), max(1, round(w * scale))) + picture.shape[2:]
    small = resize(picture, shape, order=1, preserve_range=True, anti_aliasing=True)
    return small.astype(np.uint8)


def png(picture: np.ndarray) -> bytes:
    """Encode a uint8 picture as PNG bytes."""
    buf = io.BytesIO()
    iio.imwrite(buf, picture, extension=".png")
    return buf.getvalue()


def thumbnail(
    path: Path,
    *,
    size: int = 192,
    projection: str = "middle",
    labels: Path | None = None,
    as_labels: bool = False,
) -> bytes:
    """PNG thumbnail of an image file (cached by path, size and modification time).

    Parameters
    ----------
    path
        The image.
    size
        Longest side in pixels.
    projection
        For Z-stacks: ``"middle"`` slice or ``"max"`` projection.
    labels
        A mask / class image drawn as a coloured overlay on ``path``.
    as_labels
        Draw ``path`` itself as labels (coloured regions on black).

    Raises
    ------
    deepscope.errors.ImageReadError
        When a file cannot be read (with its name and a fix).
    """
    key = (
        str(path),
        path.stat().st_mtime_ns,
        size,
        projection,
        str(labels),
        labels.stat().st_mtime_ns if labels else 0,
        as_labels,
    )
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    img = read_image(path)
    plane = to_plane(img.data, img.axes, projection)
    if labels is not None:
        lab = read_image(labels)
        picture = overlay(plane, to_plane(lab.data, lab.axes, projection))
    elif as_labels:
        picture = overlay(np.zeros(plane.shape[:2], np.float32), plane)
    else:
        picture = stretch(plane)
    data = png(fit(picture, size))
    _CACHE[key] = data
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return data


def side_by_side(pictures: list[np.ndarray], gap: int = 4) -> np.ndarray:
    """Put uint8 pictures (grey or RGB) of the same height next to each other."""
    rgb = [np.repeat(p[..., None], 3, -1) if p.ndim == 2 else p for p in pictures]
    h = max(p.shape[0] for p in rgb)
    parts = []
    for p in rgb:
        pad = np.full((h, p.shape[1] + gap, 3), 255, np.uint8)
        pad[: p.shape[0], : p.shape[1]] = p
        parts.append(pad)
    return np.concatenate(parts, axis=1)[:, :-gap]
