"""Explicit axes strings such as ``YX``, ``ZYX``, ``CYX`` or ``TCZYX``.

Every image in deepscope travels with an axes string: one letter per array dimension,
taken from ``T`` (time), ``C`` (channel), ``Z`` (depth), ``Y`` and ``X``. Axes are read
from the file where it says them, guessed otherwise (see :func:`guess_axes`), and
converted once, at the boundary, to the channel-first layout the models use
(:func:`to_channel_first`) and back for writing results (:func:`from_channel_first`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deepscope.errors import DeepscopeError

ALLOWED_AXES = "TCZYX"
"""The axis letters deepscope understands, in the canonical (OME) order."""

_AXES_FIX = (
    "give the axes as one letter per dimension from T (time), C (channel), Z (depth), "
    "Y and X, for example 'ZYX' for a 3D stack or 'CYX' for a multichannel 2D image "
    "(option --axes on the command line)"
)


def check_axes(axes: str, ndim: int) -> str:
    """Validate an axes string against the number of dimensions of an image.

    Parameters
    ----------
    axes
        One letter per dimension, from ``TCZYX`` (case-insensitive), e.g. ``"zyx"``.
    ndim
        Number of dimensions of the image the axes describe.

    Returns
    -------
    str
        The axes in upper case.

    Raises
    ------
    DeepscopeError
        If a letter is unknown or repeated, ``Y`` or ``X`` is missing, or the number of
        letters differs from ``ndim``.
    """
    if not isinstance(axes, str):
        raise DeepscopeError(f"axes must be text such as 'ZYX', not {axes!r}.", fix=_AXES_FIX)
    upper = axes.upper()
    unknown = sorted({a for a in upper if a not in ALLOWED_AXES})
    if unknown:
        raise DeepscopeError(
            f"axes '{axes}' contain unknown letter(s) {', '.join(unknown)}.", fix=_AXES_FIX
        )
    repeated = sorted({a for a in upper if upper.count(a) > 1})
    if repeated:
        raise DeepscopeError(
            f"axes '{axes}' name the same axis more than once ({', '.join(repeated)}).",
            fix=_AXES_FIX,
        )
    if "Y" not in upper or "X" not in upper:
        raise DeepscopeError(
            f"axes '{axes}' must include both Y and X (an image has rows and columns).",
            fix=_AXES_FIX,
        )
    if len(upper) != ndim:
        raise DeepscopeError(
            f"axes '{axes}' have {len(upper)} letters but the image has {ndim} dimensions.",
            fix=_AXES_FIX,
        )
    return upper


def guess_axes(shape: tuple[int, ...], *, rgb_last: bool = False) -> str:
    """Guess the axes of an image whose file does not say them.

    The rule, by number of dimensions:

    - 2: ``YX``.
    - 3: ``YXC`` if ``rgb_last`` and the last dimension has 3 or 4 entries (colour
      images from PNG/JPEG); otherwise ``CYX`` if the first dimension has at most 4
      entries (a few channels), else ``ZYX`` (a stack of planes).
    - 4: ``CZYX``.
    - 5: ``TCZYX``.

    A 3D stack with 4 planes or fewer is therefore taken as channels; give the axes
    explicitly in that case.

    Parameters
    ----------
    shape
        Shape of the image array.
    rgb_last
        Whether a last dimension of 3 or 4 means colour samples (RGB/RGBA).

    Returns
    -------
    str
        The guessed axes.

    Raises
    ------
    DeepscopeError
        If the image has fewer than 2 or more than 5 dimensions.
    """
    ndim = len(shape)
    if ndim == 2:
        return "YX"
    if ndim == 3:
        if rgb_last and shape[-1] in (3, 4):
            return "YXC"
        return "CYX" if shape[0] <= 4 else "ZYX"
    if ndim == 4:
        return "CZYX"
    if ndim == 5:
        return "TCZYX"
    raise DeepscopeError(
        f"cannot tell what the {ndim} dimensions of an image of shape {tuple(shape)} are.",
        fix=_AXES_FIX,
    )


def _spatial_axes(spatial_ndim: int) -> str:
    if spatial_ndim not in (2, 3):
        raise ValueError(f"spatial_ndim must be 2 or 3, not {spatial_ndim}")
    return "ZYX" if spatial_ndim == 3 else "YX"


def _drop_singleton(data: np.ndarray, axes: str, letter: str) -> tuple[np.ndarray, str]:
    """Remove axis ``letter`` of length 1 from ``data`` and ``axes``."""
    index = axes.index(letter)
    return np.squeeze(data, axis=index), axes.replace(letter, "")


def _check_time(data: np.ndarray, axes: str, path: Path | None) -> None:
    if "T" in axes and data.shape[axes.index("T")] > 1:
        frames = data.shape[axes.index("T")]
        raise DeepscopeError(
            f"the image is a time-lapse with {frames} time points (axes {axes}), but this "
            "step works on one time point at a time.",
            path=path,
            fix="save each time point as its own file (Fiji: Image > Stacks > Tools > "
            "Reduce Dimensionality, or Image > Hyperstacks > Make Substack), or, if the "
            "T axis is really depth or channels, give the right axes with --axes.",
        )


def _check_depth(data: np.ndarray, axes: str, spatial_ndim: int, path: Path | None) -> None:
    if spatial_ndim == 2 and "Z" in axes and data.shape[axes.index("Z")] > 1:
        planes = data.shape[axes.index("Z")]
        raise DeepscopeError(
            f"the image is a 3D stack with {planes} planes (axes {axes}), but 2D images "
            "are expected here (a 2D model, or a training without --3d).",
            path=path,
            fix="to train on Z-stacks add --3d; to predict them use a model trained on "
            "Z-stacks; or, if the planes are really channels or time points, give the "
            "right axes with --axes (for example CYX).",
        )
    if spatial_ndim == 3 and "Z" not in axes:
        raise DeepscopeError(
            f"the image has no depth (Z) axis (axes {axes}), but Z-stacks are expected here "
            "(a 3D model, or a training with --3d).",
            path=path,
            fix="to train on 2D images leave out --3d; to predict them use a 2D model; or, "
            "if the first axis is really depth, give the axes with --axes (for example ZYX).",
        )


def to_channel_first(
    data: np.ndarray, axes: str, spatial_ndim: int, *, path: Path | None = None
) -> np.ndarray:
    """Rearrange an image to ``(C, Y, X)`` or ``(C, Z, Y, X)``.

    A missing channel axis is added with length 1; a time axis or (for 2D) a depth axis
    of length 1 is removed.

    Parameters
    ----------
    data
        The image.
    axes
        Its axes, e.g. ``"ZYX"`` or ``"YXC"``.
    spatial_ndim
        2 for ``(C, Y, X)``, 3 for ``(C, Z, Y, X)``.
    path
        The file the image came from, named in error messages.

    Returns
    -------
    numpy.ndarray
        A view of ``data`` with shape ``(C, *spatial)``.

    Raises
    ------
    DeepscopeError
        If the image is a time-lapse with more than one time point, is a 3D stack when
        2D is wanted, or has no Z axis when 3D is wanted.
    """
    spatial = _spatial_axes(spatial_ndim)
    axes = check_axes(axes, data.ndim)
    _check_time(data, axes, path)
    _check_depth(data, axes, spatial_ndim, path)
    if "T" in axes:
        data, axes = _drop_singleton(data, axes, "T")
    if spatial_ndim == 2 and "Z" in axes:
        data, axes = _drop_singleton(data, axes, "Z")
    if "C" not in axes:
        data, axes = data[np.newaxis], "C" + axes
    target = "C" + spatial
    return np.transpose(data, [axes.index(a) for a in target])


def output_axes(
    axes: str, spatial_ndim: int, n_channels: int, input_channels: int | None = None
) -> str:
    """Axes of the array that :func:`from_channel_first` returns.

    These are the input's ``axes``, except that a channel axis is added (just before
    the first of Z, Y, X) when the input had none and the result has several channels,
    and dropped when a multi-channel input (e.g. RGB) gives a single-channel result
    (e.g. a label image), so that the result is not written with a length-1 channel axis.

    Parameters
    ----------
    axes
        Axes of the original image.
    spatial_ndim
        2 or 3, as given to :func:`to_channel_first`.
    n_channels
        Number of channels of the channel-first result.
    input_channels
        Length of the input's C axis, if known; a single-channel result of a
        multi-channel input has no C axis.

    Returns
    -------
    str
        The output axes.
    """
    spatial = _spatial_axes(spatial_ndim)
    axes = check_axes(axes, len(axes))
    if spatial_ndim == 3 and "Z" not in axes:
        raise ValueError(f"axes {axes} have no Z axis, so they cannot hold a 3D result")
    if "C" in axes and n_channels == 1 and (input_channels or 1) > 1:
        return axes.replace("C", "")
    if "C" in axes or n_channels == 1:
        return axes
    first_spatial = min(axes.index(a) for a in spatial if a in axes)
    return axes[:first_spatial] + "C" + axes[first_spatial:]


def from_channel_first(
    data_cf: np.ndarray, axes: str, spatial_ndim: int, input_channels: int | None = None
) -> np.ndarray:
    """Rearrange a channel-first result back to the axes of the original image.

    The inverse of :func:`to_channel_first`: axes that were removed because they had
    length 1 (T, and Z for 2D) come back with length 1, the channel axis is dropped if
    the original had none and the result has one channel, and the original axis order
    is kept (``YXC`` stays ``YXC``). See :func:`output_axes` for the resulting axes.

    Parameters
    ----------
    data_cf
        Array of shape ``(C, Y, X)`` or ``(C, Z, Y, X)``; its spatial size and number
        of channels may differ from the original's.
    axes
        Axes of the original image.
    spatial_ndim
        2 or 3, as given to :func:`to_channel_first`.
    input_channels
        Length of the input's C axis, if known (see :func:`output_axes`).

    Returns
    -------
    numpy.ndarray
        A view of ``data_cf`` with axes
        ``output_axes(axes, spatial_ndim, C, input_channels)``.
    """
    current = "C" + _spatial_axes(spatial_ndim)
    if data_cf.ndim != len(current):
        raise ValueError(
            f"expected a channel-first array with {len(current)} dimensions, "
            f"got shape {data_cf.shape}"
        )
    target = output_axes(axes, spatial_ndim, data_cf.shape[0], input_channels)
    data = data_cf
    if "C" not in target:
        data, current = data[0], current[1:]
    missing = "".join(a for a in target if a not in current)
    data = data.reshape((1,) * len(missing) + data.shape)
    current = missing + current
    return np.transpose(data, [current.index(a) for a in target])
