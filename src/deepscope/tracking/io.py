"""Read time-lapse movies and label movies for tracking.

A *movie* is an image with a time axis: ``TYX`` or ``TZYX`` (optionally with channels),
in one file (TIFF, OME-TIFF, OME-Zarr) or as a folder with one image per time point
(sorted by name, e.g. a Cell Tracking Challenge ``01/`` folder of ``t000.tif`` …).

A *label movie* is the same with one integer number per object in every frame (0 is
background): a single stack, a folder of per-frame label images, or a Cell Tracking
Challenge result/ground-truth folder (``mask000.tif`` or ``man_track000.tif`` …).

Nothing here changes the files it reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deepscope.data.io import is_image_path, list_images, read_image
from deepscope.errors import ImageReadError

_LABEL_FIX = (
    "give label images: one whole number per object (0 = background) in every frame, "
    "e.g. the masks of a segmentation model ('deepscope predict --instances') or a Cell "
    "Tracking Challenge mask folder; to segment a raw movie use --input with --model"
)


@dataclass
class Movie:
    """A time-lapse with explicit axes.

    Attributes
    ----------
    data
        The pixels, time first: ``(T, Y, X)``, ``(T, Z, Y, X)``, or with channels
        ``(T, C, Y, X)`` / ``(T, C, Z, Y, X)``.
    axes
        The axes of ``data``, starting with ``T`` (e.g. ``"TZYX"``, ``"TCYX"``).
    source
        The file or folder it was read from.
    frame_names
        A name per time point (file names for a folder of frames).
    metadata
        Physical pixel size, as in :class:`deepscope.data.io.Image`.
    note
        How the axes were chosen, when deepscope had to decide (shown to the user).
    """

    data: np.ndarray
    axes: str
    source: Path
    frame_names: list[str]
    metadata: dict = field(default_factory=dict)
    note: str | None = None

    @property
    def n_frames(self) -> int:
        """Number of time points."""
        return int(self.data.shape[0])

    @property
    def spatial_dims(self) -> int:
        """2 for ``YX`` frames, 3 for ``ZYX`` frames."""
        return 3 if "Z" in self.axes else 2

    def frame_channel_first(self, t: int) -> np.ndarray:
        """Time point ``t`` as a channel-first array ``(C, *spatial)``."""
        frame = self.data[t]
        return frame if "C" in self.axes else frame[np.newaxis]

    def intensity(self) -> np.ndarray:
        """The movie as one intensity per pixel ``(T, *spatial)`` (mean over channels)."""
        if "C" in self.axes:
            return self.data.astype(np.float32).mean(axis=1)
        return self.data


def _as_time_axes(
    axes: str, ndim: int, user_axes: str | None, labels: bool = False
) -> tuple[str, str | None]:
    """Axes with a T axis first; a file without T has its first axis read as time.

    Label movies have no channels, so a label file without T is read as ``TYX`` or
    ``TZYX`` whatever other letters its metadata gives (ImageJ often calls frames slices
    or channels).
    """
    if "T" in axes:
        return axes, None
    if user_axes is not None:
        raise ImageReadError(
            f"the axes {axes} have no time axis (T), so this is not a movie",
            fix="give the axes with a T, for example --axes TYX (2D) or TZYX (3D)",
        )
    if labels and axes.endswith("YX") and ndim in (3, 4):
        new = "TZYX" if ndim == 4 else "TYX"
    else:
        new = "T" + axes[1:] if axes[0] in "CZ" else "T" + axes
    if len(new) != ndim:  # e.g. YX: a single image
        raise ImageReadError(
            f"this image has {ndim} dimensions ({axes}) and no time axis",
            fix="give a movie (T,Y,X or T,Z,Y,X) or a folder with one image per time point",
        )
    return new, (
        f"the file does not name a time axis (its axes read {axes}); it is read as {new}, "
        "time first. If that is wrong, give --axes (e.g. TZYX)."
    )


def _order_time_first(data: np.ndarray, axes: str) -> tuple[np.ndarray, str]:
    """Reorder to T first, then C (if any), then Z, Y, X."""
    target = "".join(a for a in "TCZYX" if a in axes)
    return np.transpose(data, [axes.index(a) for a in target]), target


def read_movie(path: str | Path, axes: str | None = None, *, labels: bool = False) -> Movie:
    """Read a movie from one file or a folder of per-time-point images.

    Parameters
    ----------
    path
        A file (TIFF, OME-TIFF, OME-Zarr) with a time axis, or a folder with one
        image per time point, in name order.
    axes
        The axes of the file (e.g. ``"TZYX"``) or, for a folder, of each frame
        (e.g. ``"ZYX"``), if the files do not say them right.
    labels
        Whether this is a label movie (no channels: see ``_as_time_axes``).

    Returns
    -------
    Movie
        Time first; the axes say which others are present.

    Raises
    ------
    ImageReadError
        If the file cannot be read, has no time axis, or the frames differ in shape.
    """
    path = Path(path)
    if path.is_dir() and not is_image_path(path):
        return _read_frame_folder(path, axes)
    img = read_image(path, axes=axes)
    try:
        final_axes, note = _as_time_axes(img.axes, img.data.ndim, axes, labels)
    except ImageReadError as err:
        raise ImageReadError(err.problem, path, err.fix) from None
    data, final_axes = _order_time_first(img.data, final_axes)
    names = [f"{path.name}[t={t}]" for t in range(data.shape[0])]
    return Movie(data, final_axes, path, names, dict(img.metadata), note)


def _read_frame_folder(folder: Path, axes: str | None) -> Movie:
    files = list_images(folder)
    frames, frame_axes, metadata = [], None, {}
    for f in files:
        img = read_image(f, axes=axes)
        if "T" in img.axes:
            if img.data.shape[img.axes.index("T")] != 1:
                raise ImageReadError(
                    "this frame is itself a movie (it has a time axis)",
                    f,
                    "give either one movie file, or a folder with one image per time point",
                )
            img_data = np.squeeze(img.data, axis=img.axes.index("T"))
            img_axes = img.axes.replace("T", "")
        else:
            img_data, img_axes = img.data, img.axes
        data, img_axes = _order_time_first(img_data, img_axes)
        if frames and (data.shape != frames[0].shape or img_axes != frame_axes):
            raise ImageReadError(
                f"this frame has shape {data.shape} ({img_axes}) but the first frame "
                f"{files[0].name} has {frames[0].shape} ({frame_axes})",
                f,
                "every time point of a movie must have the same size; remove other images "
                "from the folder",
            )
        frames.append(data)
        frame_axes = img_axes
        metadata = metadata or dict(img.metadata)
    return Movie(np.stack(frames), "T" + frame_axes, folder, [f.name for f in files], metadata)


def check_labels(data: np.ndarray, source: Path) -> np.ndarray:
    """Check that a label movie holds whole numbers; return it as ``int32``/``int64``.

    Raises
    ------
    ImageReadError
        For fractional values (a raw movie given as labels), negative values, or no
        object in any frame.
    """
    if data.dtype.kind == "f":
        finite = np.isfinite(data).all()
        if not finite or not np.array_equal(data, np.round(data)):
            raise ImageReadError(
                "these are not label images: the pixels have fractional values "
                f"(type {data.dtype}), as in a raw or processed movie",
                source,
                _LABEL_FIX,
            )
    if data.dtype.kind in "iuf" and data.size and data.min() < 0:
        raise ImageReadError(
            "these are not label images: some pixels are negative", source, _LABEL_FIX
        )
    if not data.any():
        raise ImageReadError(
            "the label images hold no object at all (every pixel is 0)", source, _LABEL_FIX
        )
    _check_objects_are_regions(data, source)
    out_type = np.int32 if data.max() < 2**31 else np.int64
    return data.astype(out_type, copy=False)


#: A frame whose label values form more than this many separate regions per value is a
#: raw image (each grey level is scattered over the whole frame), not a label image.
REGIONS_PER_LABEL_MAX = 3.0


def _check_objects_are_regions(data: np.ndarray, source: Path) -> None:
    """Refuse whole-number movies whose "objects" are scattered: raw 8/16-bit frames.

    In a label image each object is one connected region (or a few, where a mask was
    drawn in pieces); in a raw frame each grey value is spread over thousands of pixels
    far apart. The first, middle and last frames are checked.
    """
    from skimage.measure import label

    for t in sorted({0, len(data) // 2, len(data) - 1}):
        frame = np.asarray(data[t])
        values = np.unique(frame)
        n_labels = int((values != 0).sum())
        if n_labels == 0:
            continue
        regions = int(label(frame, background=0, connectivity=1).max())
        if regions > REGIONS_PER_LABEL_MAX * n_labels and regions > n_labels + 20:
            raise ImageReadError(
                f"these do not look like label images: in frame {t} the {n_labels} "
                f"object numbers form {regions} separate regions (in a label image each "
                "object is one region), as the grey levels of a raw movie do",
                source,
                _LABEL_FIX,
            )


def read_label_movie(path: str | Path, axes: str | None = None) -> Movie:
    """Read a label movie (a stack, a folder of label frames, or a CTC mask folder).

    Parameters
    ----------
    path
        A label stack file with a time axis, or a folder of per-frame label images
        (name order is time order; a CTC ``*_track.txt`` beside them is ignored).
    axes
        Axes if the files do not say them (e.g. ``"TYX"`` for a stack, ``"ZYX"`` for
        each frame of a folder).

    Returns
    -------
    Movie
        ``data`` is ``(T, Y, X)`` or ``(T, Z, Y, X)``, integer.

    Raises
    ------
    ImageReadError
        If the files cannot be read, are not label images, or have channels.
    """
    movie = read_movie(path, axes, labels=True)
    if "C" in movie.axes:
        c = movie.data.shape[movie.axes.index("C")]
        if c != 1:
            raise ImageReadError(
                f"label images must have one channel, these have {c} (axes {movie.axes})",
                movie.source,
                _LABEL_FIX + "; if the 'channels' are really depth, give --axes",
            )
        movie.data = np.squeeze(movie.data, axis=1)
        movie.axes = movie.axes.replace("C", "")
    movie.data = check_labels(movie.data, movie.source)
    return movie
