"""Read and write microscopy images: TIFF, OME-TIFF, PNG, JPEG and OME-Zarr.

Reading never changes the input file. Writing is atomic: data goes to a hidden
temporary sibling (``.name.<random>.partial``) that replaces the target only once
complete, so an interrupted run never leaves a half-written image under the final name.

The physical pixel size travels in :attr:`Image.metadata` as
``{"pixel_size": {"Z": 2.0, "Y": 0.1, "X": 0.1}, "unit": "micrometer"}`` (only the
sizes the file states), and is written back by :func:`write_image` to ImageJ TIFF,
OME-TIFF and OME-Zarr.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import threading
import time
import uuid
import warnings
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepscope.data.axes import check_axes, guess_axes, to_channel_first
from deepscope.errors import DeepscopeError, ImageReadError, OutputError

SUPPORTED_SUFFIXES: tuple[str, ...] = (
    ".tif",
    ".tiff",
    ".ome.tif",
    ".ome.tiff",
    ".png",
    ".jpg",
    ".jpeg",
    ".zarr",
    ".ome.zarr",
)
"""File name endings deepscope reads; ``.zarr`` and ``.ome.zarr`` are folders."""

_COMPOUND_SUFFIXES = (".ome.tiff", ".ome.tif", ".ome.zarr")
_ZARR_SUFFIXES = (".zarr", ".ome.zarr")
_TIFF_SUFFIXES = (".tif", ".tiff", ".ome.tif", ".ome.tiff")
_PROPRIETARY = (".czi", ".lif", ".nd2", ".lsm", ".oib", ".oif", ".ims", ".vsi", ".dv", ".sld")
_SUPPORTED_TEXT = "TIFF (.tif, .tiff), OME-TIFF, PNG, JPEG and OME-Zarr (.ome.zarr folders)"

_UNIT_ALIASES = {
    "micron": "micrometer",
    "microns": "micrometer",
    "um": "micrometer",
    "µm": "micrometer",
    "\u03bcm": "micrometer",
    "\\u00b5m": "micrometer",
    "micrometer": "micrometer",
    "nm": "nanometer",
    "nanometer": "nanometer",
    "mm": "millimeter",
    "millimeter": "millimeter",
}
_OME_UNIT = {"micrometer": "µm", "nanometer": "nm", "millimeter": "mm"}
_IMAGEJ_UNIT = {"micrometer": "micron", "nanometer": "nm", "millimeter": "mm"}


@dataclass(frozen=True, eq=False)
class Image:
    """An image with explicit axes.

    Attributes
    ----------
    data
        The pixels.
    axes
        One letter per dimension of ``data``, from ``TCZYX`` (e.g. ``"ZYX"``).
    path
        The file it was read from, if any.
    metadata
        Physical pixel size, if known: ``{"pixel_size": {"Y": .., "X": ..},
        "unit": "micrometer"}``.
    """

    data: np.ndarray
    axes: str
    path: Path | None = None
    metadata: dict = field(default_factory=dict)


class AxesGuessWarning(UserWarning):
    """A file whose axes were guessed where the guess may be wrong (see ``fix``)."""

    def __init__(self, message: str, fix: str):
        super().__init__(message)
        self.fix = fix


def _guess_axes_of_file(shape: tuple[int, ...], path: Path) -> str:
    """:func:`guess_axes`, warning once per file where the guess may well be wrong.

    A stack of 2-4 planes becomes channels, but such a file (e.g. a multi-page TIFF
    without ImageJ or OME metadata) could as well hold Z planes or time points, which a
    one-channel model would otherwise average or refuse without saying why. An array of
    4 or 5 dimensions is read as CZYX / TCZYX, but software that writes no axes often
    stores Z first (ZCYX).
    """
    axes = guess_axes(shape)
    problem = fix = None
    if axes == "CYX" and shape[0] > 1:
        n = shape[0]
        problem = f"the file does not say what its {n} planes are; they are read as {n} channels"
        fix = (
            "if they are Z planes (or time points), give the axes: --axes ZYX (setting "
            "data.axes), or save the stack from Fiji, which records them; if they are "
            "channels, nothing to do."
        )
    elif len(shape) >= 4:
        sizes = ", ".join(f"{a} {n}" for a, n in zip(axes, shape, strict=True))
        problem = f"the file does not say what its axes are; they are read as {sizes}"
        other = "ZCYX" if len(shape) == 4 else "TZCYX"
        fix = (
            f"if that is not their order, give the axes (e.g. --axes {other}, setting "
            "data.axes), or save the stack from Fiji, which records them; if it is, "
            "nothing to do."
        )
    if problem is not None:
        warnings.warn(
            AxesGuessWarning(f"{path}: {problem} (axes {axes}).", fix),
            stacklevel=1,  # one registry entry: shown once per file, whichever reader
        )
    return axes


# ---------------------------------------------------------------------------- names


def _suffix(path: str | os.PathLike) -> str:
    """Lower-case file ending, with ``.ome.tif``-style double endings kept whole."""
    name = Path(path).name.lower()
    for compound in _COMPOUND_SUFFIXES:
        if name.endswith(compound) and len(name) > len(compound):
            return compound
    return Path(name).suffix


def is_image_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` names an image deepscope can read, judged by its name.

    If the path exists, it must also be of the right kind: a folder for ``.zarr``,
    a file otherwise.

    Parameters
    ----------
    path
        File or folder.

    Returns
    -------
    bool
        True for a supported image.
    """
    path = Path(path)
    suffix = _suffix(path)
    if suffix not in SUPPORTED_SUFFIXES:
        return False
    if not path.exists():
        return True
    return path.is_dir() if suffix in _ZARR_SUFFIXES else path.is_file()


def _describe_endings(entries: list[Path]) -> str:
    counts: dict[str, int] = {}
    for entry in entries:
        key = _suffix(entry) or ("(folder)" if entry.is_dir() else "(no ending)")
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{n} {key}" for key, n in sorted(counts.items()))


def list_images(folder: str | os.PathLike) -> list[Path]:
    """List the images directly inside a folder, sorted by name.

    Hidden files (names starting with ``.``, such as macOS ``._`` copies) are skipped.

    Parameters
    ----------
    folder
        The folder to look in (not its subfolders).

    Returns
    -------
    list of pathlib.Path
        Supported image files and ``.zarr`` folders.

    Raises
    ------
    ImageReadError
        If the folder does not exist, is a file, or holds no supported images.
    """
    folder = Path(folder)
    if not folder.exists():
        raise ImageReadError(
            "this folder does not exist.",
            path=folder,
            fix="check the spelling of the folder name, or choose the folder again.",
        )
    if not folder.is_dir():
        raise ImageReadError(
            "this is a file, but a folder of images was expected.",
            path=folder,
            fix="give the folder that contains the images, not a single file.",
        )
    try:
        entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except PermissionError as exc:
        raise ImageReadError(
            "you do not have permission to open this folder.",
            path=folder,
            fix="ask the folder's owner for read access, or copy the images to a folder of yours.",
        ) from exc
    images = [p for p in entries if is_image_path(p)]
    if not images:
        found = _describe_endings(entries) if entries else "nothing"
        raise ImageReadError(
            f"this folder holds no images deepscope can read (found: {found}).",
            path=folder,
            fix=f"put the images in this folder as {_SUPPORTED_TEXT}; files from a "
            "microscope (.czi, .lif, .nd2, ...) can be opened in Fiji and saved as TIFF.",
        )
    return images


# --------------------------------------------------------------------------- reading


def _unit(name: object) -> str | None:
    if not name:
        return None
    return _UNIT_ALIASES.get(str(name).strip().lower(), str(name))


def _physical(sizes: dict[str, float], unit: str | None) -> dict[str, Any]:
    sizes = {k: float(v) for k, v in sizes.items() if v is not None and float(v) > 0}
    if not sizes:
        return {}
    return {"pixel_size": sizes, "unit": unit or "micrometer"}


@contextmanager
def _tifffile_errors() -> Iterator[list[str]]:
    """Collect the errors tifffile logs (rather than raises) in this thread."""
    problems: list[str] = []
    thread = threading.get_ident()

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.thread == thread:
                problems.append(record.getMessage())

    handler = _Collect(level=logging.ERROR)
    logger = logging.getLogger("tifffile")
    logger.addHandler(handler)
    try:
        yield problems
    finally:
        logger.removeHandler(handler)


def _tiff_axes(tiff_axes: str, shape: tuple[int, ...]) -> str | None:
    """Translate tifffile's axes to TCZYX; None when they say too little."""
    letters = ["C" if a == "S" else a for a in tiff_axes]
    known = [a for a in letters if a in "TCZYX"]
    if "Y" not in known or "X" not in known or len(set(known)) != len(known):
        return None
    if known == ["Y", "X"] and letters[-2:] == ["Y", "X"]:
        return None
    for i, letter in enumerate(letters):
        if letter in "TCZYX":
            continue
        free = [a for a in "CZT" if a not in letters and (a != "C" or shape[i] <= 4)]
        if not free:
            return None
        letters[i] = free[0]
    return "".join(letters)


def _imagej_physical(tif: Any, axes: str) -> dict[str, Any]:
    meta = tif.imagej_metadata or {}
    if not meta.get("unit"):
        return {}
    sizes: dict[str, float] = {}
    x_res, y_res = tif.pages[0].resolution
    if x_res and y_res:
        sizes.update(X=1.0 / x_res, Y=1.0 / y_res)
    if "Z" in axes and meta.get("spacing"):
        sizes["Z"] = meta["spacing"]
    return _physical(sizes, _unit(meta["unit"]))


def _ome_physical(tif: Any) -> dict[str, Any]:
    try:
        pixels = ElementTree.fromstring(tif.ome_metadata).find(".//{*}Pixels")
    except ElementTree.ParseError:
        return {}
    if pixels is None:
        return {}
    sizes = {a: pixels.get(f"PhysicalSize{a}") for a in "ZYX"}
    unit = _unit(pixels.get("PhysicalSizeXUnit", "µm"))
    return _physical({a: float(v) for a, v in sizes.items() if v}, unit)


def _read_tiff(path: Path) -> tuple[np.ndarray, str | None, dict[str, Any]]:
    import tifffile

    with _tifffile_errors() as problems, tifffile.TiffFile(path) as tif:
        if len(tif.series) > 1:
            warnings.warn(
                f"{path}: the file holds {len(tif.series)} images; only the first is used.",
                stacklevel=4,
            )
        series = tif.series[0]
        data = series.asarray()
        axes = _tiff_axes(series.axes, data.shape)
        if tif.is_imagej:
            metadata = _imagej_physical(tif, axes or "")
        elif tif.is_ome:
            metadata = _ome_physical(tif)
        else:
            metadata = {}
    if problems:
        raise ValueError("; ".join(problems))
    return data, axes, metadata


def _drop_opaque_alpha(data: np.ndarray) -> np.ndarray:
    if data.shape[-1] in (2, 4):
        alpha = data[..., -1]
        if np.all(alpha == np.iinfo(data.dtype).max):
            return data[..., :-1]
    return data


def _read_picture(path: Path) -> tuple[np.ndarray, str | None, dict[str, Any]]:
    import imageio.v3 as iio

    data = iio.imread(path, plugin="pillow")
    if data.dtype == bool:
        data = data.astype(np.uint8)
    if data.ndim != 3:
        return data, None, {}
    data = _drop_opaque_alpha(data)
    if data.shape[-1] == 1 or np.all(data == data[..., :1]):
        return data[..., 0], "YX", {}
    return data, "YXC", {}


def _zarr_multiscales(group: Any) -> tuple[Any, list[dict]]:
    """Find the group holding OME-Zarr multiscales metadata (v0.4, v0.5, bioformats2raw)."""
    attrs = dict(group.attrs)
    multiscales = attrs.get("ome", {}).get("multiscales") or attrs.get("multiscales")
    if multiscales:
        return group, multiscales
    if "bioformats2raw.layout" in attrs or "bioformats2raw.layout" in attrs.get("ome", {}):
        return _zarr_multiscales(group["0"])
    raise ValueError("no OME-Zarr 'multiscales' metadata found")


def _zarr_physical(level0: dict, axes: str, units: list[str | None]) -> dict[str, Any]:
    scale = next(
        (t["scale"] for t in level0.get("coordinateTransformations", []) if t["type"] == "scale"),
        None,
    )
    if scale is None:
        return {}
    sizes = {a: s for a, s in zip(axes, scale, strict=True) if a in "ZYX"}
    unit = next((_unit(u) for a, u in zip(axes, units, strict=True) if a in "ZYX" and u), None)
    if unit is None and all(s == 1.0 for s in sizes.values()):
        return {}
    return _physical(sizes, unit)


def _read_zarr(path: Path) -> tuple[np.ndarray, str | None, dict[str, Any]]:
    data, axes, metadata = _open_zarr_lazy(path)
    return np.asarray(data[...]), axes, metadata


_READERS: dict[str, Callable[[Path], tuple[np.ndarray, str | None, dict[str, Any]]]] = {
    **dict.fromkeys(_TIFF_SUFFIXES, _read_tiff),
    **dict.fromkeys((".png", ".jpg", ".jpeg"), _read_picture),
    **dict.fromkeys(_ZARR_SUFFIXES, _read_zarr),
}

_DAMAGED_FIX = {
    ".zarr": "check that the whole folder was copied (with all its subfolders), or convert "
    "the original image to OME-Zarr again.",
    ".png": "open it in Fiji or an image viewer and save it again (as TIFF or PNG); if it was "
    "copied or downloaded, copy it again from the original.",
    ".tif": "copy the file again from the original (the copy may be incomplete), or open it "
    "in Fiji and save it again with File > Save As > Tiff...",
}


def _damaged_fix(suffix: str) -> str:
    if suffix in _ZARR_SUFFIXES:
        return _DAMAGED_FIX[".zarr"]
    return _DAMAGED_FIX[".tif" if suffix in _TIFF_SUFFIXES else ".png"]


def _check_readable(path: Path, suffix: str) -> None:
    """Raise ImageReadError for problems visible before opening the file."""
    if suffix not in SUPPORTED_SUFFIXES:
        hint = " This is a microscope file format." if suffix in _PROPRIETARY else ""
        raise ImageReadError(
            f"deepscope cannot read '{suffix or 'files without an ending'}' files.{hint}",
            path=path,
            fix=f"open it in Fiji (File > Open, or Bio-Formats) and save it as TIFF "
            f"(File > Save As > Tiff...); deepscope reads {_SUPPORTED_TEXT}.",
        )
    if not path.exists():
        raise ImageReadError(
            "this file does not exist.",
            path=path,
            fix="check the spelling and the folder, or whether the file was moved or renamed.",
        )
    if (suffix in _ZARR_SUFFIXES) != path.is_dir():
        kind = "folder" if suffix in _ZARR_SUFFIXES else "file"
        raise ImageReadError(
            f"a {kind} was expected here, by its name ending '{suffix}'.",
            path=path,
            fix="choose the image itself; OME-Zarr images are folders ending .ome.zarr, "
            "other images are files.",
        )
    if suffix not in _ZARR_SUFFIXES and path.stat().st_size == 0:
        raise ImageReadError(
            "this file is empty (0 bytes), usually the result of an interrupted copy or download.",
            path=path,
            fix="copy the file again from the original, or remove it from the folder.",
        )


def _load(path: Path, suffix: str) -> tuple[np.ndarray, str | None, dict[str, Any]]:
    """Run the reader for ``suffix``, turning library errors into ImageReadError."""
    try:
        return _READERS[suffix](path)
    except PermissionError as exc:
        raise ImageReadError(
            "you do not have permission to read this file.",
            path=path,
            fix="ask the owner of the file for read access, or copy it to a folder of yours.",
        ) from exc
    except MemoryError as exc:
        raise ImageReadError(
            "this image is too big to load into memory.",
            path=path,
            fix="convert it to OME-Zarr (for example with bioformats2raw) or crop it in Fiji.",
        ) from exc
    except Exception as exc:
        raise ImageReadError(
            f"this file is damaged or is not a valid image ({type(exc).__name__}: {exc}).",
            path=path,
            fix=_damaged_fix(suffix),
        ) from exc


def _check_dtype(data: np.ndarray, path: Path) -> np.ndarray:
    if data.dtype == bool:
        return data.astype(np.uint8)
    if data.dtype.kind not in "uif":
        raise ImageReadError(
            f"the pixels are of type {data.dtype}, which deepscope cannot use.",
            path=path,
            fix="open it in Fiji, convert it to 8-bit, 16-bit or 32-bit (Image > Type) "
            "and save it as TIFF.",
        )
    return data


def read_image(path: str | os.PathLike, axes: str | None = None) -> Image:
    """Read an image file (or OME-Zarr folder) with its axes.

    Axes come from, in order: the ``axes`` argument; what the file says (ImageJ,
    OME-TIFF and OME-Zarr metadata; RGB samples become ``C``); the rule of
    :func:`~deepscope.data.axes.guess_axes`. Colour PNG/JPEG images are ``YXC``; a fully
    opaque alpha channel is dropped, and colour images whose channels are all equal
    become single-channel ``YX``. 1-bit images are returned as ``uint8`` 0/1. For a
    multi-resolution OME-Zarr, the full-resolution level is read.

    Parameters
    ----------
    path
        The file, or ``.zarr`` folder.
    axes
        The axes, if known better than the file says (e.g. ``"ZYX"``).

    Returns
    -------
    Image
        The pixels, axes, path and physical pixel size (if the file states it).

    Raises
    ------
    ImageReadError
        If the file does not exist, is empty, damaged or incomplete, of an unsupported
        type, or ``axes`` do not fit the image.
    """
    path = Path(path)
    suffix = _suffix(path)
    _check_readable(path, suffix)
    data, file_axes, metadata = _load(path, suffix)
    data = _check_dtype(data, path)
    try:
        if axes is not None:
            final_axes = check_axes(axes, data.ndim)
        else:
            final_axes = file_axes or _guess_axes_of_file(data.shape, path)
            final_axes = check_axes(final_axes, data.ndim)
    except DeepscopeError as exc:
        raise ImageReadError(
            f"{exc.problem} (image shape {data.shape})", path=path, fix=exc.fix
        ) from exc
    return Image(data=data, axes=final_axes, path=path, metadata=metadata)


def _open_tiff_lazy(path: Path) -> tuple[Any, str | None, dict[str, Any]]:
    import tifffile
    import zarr

    with _tifffile_errors() as problems, tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        axes = _tiff_axes(series.axes, tuple(series.shape))
        if tif.is_imagej:
            metadata = _imagej_physical(tif, axes or "")
        elif tif.is_ome:
            metadata = _ome_physical(tif)
        else:
            metadata = {}
    if problems:
        raise ValueError("; ".join(problems))
    # The store keeps its own file handle open; regions are decoded when indexed.
    store = tifffile.imread(path, aszarr=True, series=0, level=0)
    return zarr.open(store, mode="r"), axes, metadata


def _open_zarr_lazy(path: Path) -> tuple[Any, str | None, dict[str, Any]]:
    import zarr

    node = zarr.open(store=str(path), mode="r")
    if isinstance(node, zarr.Array):
        return node, None, {}
    group, multiscales = _zarr_multiscales(node)
    level0 = multiscales[0]["datasets"][0]
    data = group[level0["path"]]
    raw_axes = multiscales[0].get("axes") or list("tczyx"[-data.ndim :])
    names = [(a["name"] if isinstance(a, dict) else a).upper() for a in raw_axes]
    units = [a.get("unit") if isinstance(a, dict) else None for a in raw_axes]
    axes = "".join(names) if all(len(n) == 1 for n in names) else None
    metadata = _zarr_physical(level0, axes, units) if axes else {}
    return data, axes, metadata


def open_image(path: str | os.PathLike, axes: str | None = None) -> Image:
    """Open an image without loading its pixels: they are read region by region.

    Like :func:`read_image` (same checks, axes and metadata), except that for TIFF and
    OME-Zarr ``Image.data`` is a read-only array-like (a zarr array: ``shape``, ``dtype``,
    ``ndim`` and slicing, which reads only the region asked for). PNG/JPEG pictures are
    small and are loaded as usual. Use it for images that may not fit in memory.

    Raises
    ------
    ImageReadError
        As :func:`read_image`.
    """
    path = Path(path)
    suffix = _suffix(path)
    _check_readable(path, suffix)
    if suffix not in _TIFF_SUFFIXES and suffix not in _ZARR_SUFFIXES:
        return read_image(path, axes)
    opener = _open_tiff_lazy if suffix in _TIFF_SUFFIXES else _open_zarr_lazy
    try:
        data, file_axes, metadata = opener(path)
    except Exception:
        # Let the eager reader produce its precise message for the damaged file.
        return read_image(path, axes)
    if np.dtype(data.dtype).kind not in "uif":
        return read_image(path, axes)  # e.g. 1-bit images: converted by the reader
    try:
        chosen = axes or file_axes or _guess_axes_of_file(tuple(data.shape), path)
        final_axes = check_axes(chosen, data.ndim)
    except DeepscopeError as exc:
        raise ImageReadError(
            f"{exc.problem} (image shape {tuple(data.shape)})", path=path, fix=exc.fix
        ) from exc
    return Image(data=data, axes=final_axes, path=path, metadata=metadata)


def channel_first_shape(
    path: str | os.PathLike, axes: str | None, spatial_ndim: int
) -> tuple[int, ...]:
    """The shape (C, Y, X) or (C, Z, Y, X) an image file is read as, from its header.

    The file is opened with :func:`open_image` and its axes checked as
    :func:`~deepscope.data.axes.to_channel_first` checks them, without reading pixels.

    Raises
    ------
    DeepscopeError
        When the file cannot be opened or its axes do not fit ``spatial_ndim``.
    """
    img = open_image(path, axes)
    # The axis checks need only the shape: a zero-byte stand-in of that shape.
    shape_only = np.broadcast_to(np.zeros((), np.uint8), tuple(img.data.shape))
    return to_channel_first(shape_only, img.axes, spatial_ndim, path=Path(path)).shape


def spatial_shape(path: str | os.PathLike, axes: str | None, spatial_ndim: int) -> tuple[int, ...]:
    """The spatial size (Y, X) or (Z, Y, X) of an image file, from its header.

    See :func:`channel_first_shape`.
    """
    return channel_first_shape(path, axes, spatial_ndim)[1:]


# --------------------------------------------------------------------------- writing


_REMOVE_ATTEMPTS = 10


def _partial_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.partial")


def _remove(path: Path) -> None:
    """Delete a partial output, file or folder.

    A folder is deleted again until it is gone: when one write of a store fails (e.g.
    the disk is full), zarr's other writes of the same store may still be finishing in
    its background thread and recreate files while the folder is being deleted.
    """
    if path.is_dir() and not path.is_symlink():
        for attempt in range(_REMOVE_ATTEMPTS):
            shutil.rmtree(path, ignore_errors=True)
            if not path.exists():
                return
            time.sleep(0.02 * (attempt + 1))
    else:
        path.unlink(missing_ok=True)


_OS_ERROR_TEXT = {
    errno.ENOSPC: (
        "the disk is full.",
        "free some space or choose an output folder on a disk with more room.",
    ),
    errno.EDQUOT: (
        "your disk quota is used up.",
        "free some space or ask your IT team for a larger quota, or choose another output folder.",
    ),
    errno.EACCES: (
        "you do not have permission to write here.",
        "choose an output folder of yours, or ask the folder's owner for write access.",
    ),
    errno.EPERM: (
        "you do not have permission to write here.",
        "choose an output folder of yours, or ask the folder's owner for write access.",
    ),
    errno.EROFS: (
        "this location is read-only (for example a CD, a locked USB stick or a "
        "read-only network share).",
        "choose an output folder on a writable disk.",
    ),
}


def _output_error(target: Path, exc: OSError) -> OutputError:
    problem, fix = _OS_ERROR_TEXT.get(
        exc.errno or 0,
        (
            f"the output could not be written ({exc.strerror or exc}).",
            "check that the output folder is on a working, writable disk, then try again.",
        ),
    )
    return OutputError(f"could not write this output: {problem}", path=target, fix=fix)


def _prepare_target(target: Path, overwrite: bool) -> None:
    if target.exists() and not overwrite:
        raise OutputError(
            "this output already exists and deepscope does not overwrite files.",
            path=target,
            fix="choose another output name or folder, move the old file away, or ask "
            "explicitly to overwrite (overwrite=True / --overwrite).",
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _output_error(target, exc) from exc


def _replace(tmp: Path, target: Path) -> None:
    """Move ``tmp`` onto ``target``; an old folder is moved aside first, then deleted."""
    if tmp.is_dir() and target.is_dir():
        old = _partial_name(target)
        os.replace(target, old)
        try:
            os.replace(tmp, target)
        except OSError:
            os.replace(old, target)
            raise
        _remove(old)
    else:
        os.replace(tmp, target)


@contextmanager
def _atomic_target(path: str | os.PathLike, *, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary sibling path; on success it replaces ``path``, else is removed."""
    target = Path(path)
    _prepare_target(target, overwrite)
    tmp = _partial_name(target)
    try:
        yield tmp
        _replace(tmp, target)
    except OSError as exc:
        _remove(tmp)
        raise _output_error(target, exc) from exc
    except BaseException:
        _remove(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, overwrite: bool = True) -> Path:
    """Write bytes to a file atomically (temporary sibling, then rename).

    Parameters
    ----------
    path
        The target file; missing parent folders are created.
    data
        The content.
    overwrite
        Whether an existing file may be replaced (default True, for outputs that are
        updated, such as an index or a report).

    Returns
    -------
    pathlib.Path
        The target path.

    Raises
    ------
    OutputError
        If the target exists and ``overwrite`` is False, or it cannot be written.
    """
    with _atomic_target(path, overwrite=overwrite) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, *, overwrite: bool = True) -> Path:
    """Write UTF-8 text to a file atomically (temporary sibling, then rename).

    Parameters
    ----------
    path
        The target file; missing parent folders are created.
    text
        The content.
    overwrite
        Whether an existing file may be replaced (default True).

    Returns
    -------
    pathlib.Path
        The target path.

    Raises
    ------
    OutputError
        If the target exists and ``overwrite`` is False, or it cannot be written.
    """
    return atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite)


def _pixel_sizes(metadata: dict | None, axes: str) -> tuple[dict[str, float], str]:
    metadata = metadata or {}
    sizes = {a: float(s) for a, s in (metadata.get("pixel_size") or {}).items() if a in axes}
    return sizes, _unit(metadata.get("unit")) or "micrometer"


def _imagej_axes(data: np.ndarray, axes: str) -> str | None:
    """Axes for an ImageJ hyperstack, or None if ImageJ cannot hold this image as is."""
    if axes == "YXC" and data.dtype == np.uint8 and data.shape[-1] in (3, 4):
        return "YXS"
    if data.dtype not in (np.uint8, np.uint16, np.float32):
        return None
    order = [a for a in "TZCYX" if a in axes]
    return axes if list(axes) == order else None


def _tiff_options(
    data: Any, axes: str, metadata: dict | None, *, ome: bool = False
) -> dict[str, Any]:
    """Tifffile writing options for an array (or shape/dtype holder) with ``axes``."""
    sizes, unit = _pixel_sizes(metadata, axes)
    if ome:
        ome_meta: dict[str, Any] = {"axes": axes}
        for axis, size in sizes.items():
            ome_meta[f"PhysicalSize{axis}"] = size
            ome_meta[f"PhysicalSize{axis}Unit"] = _OME_UNIT.get(unit, unit)
        return {"ome": True, "metadata": ome_meta}
    imagej_axes = _imagej_axes(data, axes)
    rgb = axes.endswith("C") and data.shape[-1] in (3, 4) and data.dtype.kind == "u"
    photometric = "rgb" if rgb else "minisblack"
    if imagej_axes is None:
        return {"photometric": photometric, "metadata": {"axes": axes}}
    ij_meta: dict[str, Any] = {"axes": imagej_axes}
    if metadata and metadata.get("display_range") is not None:
        ij_meta["min"], ij_meta["max"] = (float(v) for v in metadata["display_range"])
    resolution = None
    if sizes:
        ij_meta["unit"] = _IMAGEJ_UNIT.get(unit, unit)
        if "Z" in sizes:
            ij_meta["spacing"] = sizes["Z"]
        if "X" in sizes and "Y" in sizes:
            resolution = (1.0 / sizes["X"], 1.0 / sizes["Y"])
    return {
        "imagej": True,
        "photometric": photometric,
        "metadata": ij_meta,
        "resolution": resolution,
    }


def _write_tiff(tmp: Path, data: np.ndarray, axes: str, metadata: dict | None) -> None:
    import tifffile

    tifffile.imwrite(tmp, data, **_tiff_options(data, axes, metadata))


def _write_ome_tiff(tmp: Path, data: np.ndarray, axes: str, metadata: dict | None) -> None:
    import tifffile

    tifffile.imwrite(tmp, data, **_tiff_options(data, axes, metadata, ome=True))


def tiff_memmap(
    path: Path, shape: tuple[int, ...], dtype: Any, axes: str, metadata: dict | None
) -> np.memmap:
    """Create an uncompressed TIFF (OME-TIFF if the name says so) and map its pixels.

    The file is laid out exactly as :func:`write_image` would write it (ImageJ hyperstack
    when possible, pixel size kept); writing into the returned array writes the file, so
    images larger than memory can be built region by region. ``path`` is written as
    given (use :func:`atomic_target` for an atomic result).
    """
    import tifffile

    holder = np.empty((0,) * len(shape), dtype=dtype)  # carries dtype for the options
    holder = np.lib.stride_tricks.as_strided(holder, shape=shape, strides=(0,) * len(shape))
    ome = path.name.lower().endswith((".ome.tif", ".ome.tiff"))
    return tifffile.memmap(
        path, shape=shape, dtype=dtype, **_tiff_options(holder, axes, metadata, ome=ome)
    )


def _png_array(target: Path, data: np.ndarray, axes: str) -> np.ndarray:
    """Return ``data`` as PNG needs it (``YX`` or ``YXC``), or raise OutputError."""
    if axes == "CYX":
        data, axes = np.moveaxis(data, 0, -1), "YXC"
    if axes == "YXC" and data.shape[-1] == 1:
        data, axes = data[..., 0], "YX"
    problem = None
    if axes not in ("YX", "YXC"):
        problem = f"PNG holds 2D images only, and this image has axes {axes}"
    elif data.dtype not in (np.uint8, np.uint16):
        problem = f"PNG holds 8-bit or 16-bit whole numbers, and this image is {data.dtype}"
    elif axes == "YXC" and (data.shape[-1] not in (3, 4) or data.dtype != np.uint8):
        problem = "PNG colour images have 3 or 4 channels of 8 bits each"
    if problem:
        raise OutputError(
            f"this image cannot be saved as PNG: {problem}.",
            path=target,
            fix="save it as .tif instead, which keeps all values and dimensions.",
        )
    return data


def _write_png(tmp: Path, data: np.ndarray, axes: str, metadata: dict | None) -> None:
    import imageio.v3 as iio

    iio.imwrite(tmp, _png_array(tmp, data, axes), extension=".png")


def _pyramid_factors(shape_yx: tuple[int, ...]) -> list[int]:
    """Downsampling factors (2, 4, ...) while the smallest level stays >= 256 pixels."""
    factors: list[int] = []
    while len(factors) < 4 and min(shape_yx) // (2 ** (len(factors) + 1)) >= 256:
        factors.append(2 ** (len(factors) + 1))
    return factors


def _write_zarr(tmp: Path, data: Any, axes: str, metadata: dict | None) -> None:
    """Write an OME-Zarr folder; ``data`` may be a numpy or a dask array (streamed)."""
    import dask.array as da
    from ome_zarr.format import FormatV04
    from ome_zarr.scale import Methods
    from ome_zarr.writer import write_image as write_ome_zarr

    order = [a for a in "TCZYX" if a in axes]
    data = data.transpose([axes.index(a) for a in order])
    chunks = tuple({"Y": 512, "X": 512, "Z": 32}.get(a, 1) for a in order)
    chunks = tuple(min(c, s) for c, s in zip(chunks, data.shape, strict=True))
    sizes, unit = _pixel_sizes(metadata, axes)
    write_ome_zarr(
        data.rechunk(chunks) if isinstance(data, da.Array) else da.from_array(data, chunks=chunks),
        str(tmp),
        scale_factors=_pyramid_factors(data.shape[-2:]),
        method=Methods.RESIZE if data.dtype.kind == "f" else Methods.NEAREST,
        fmt=FormatV04(),
        axes=[a.lower() for a in order],
        scale={a.lower(): sizes.get(a, 1.0) for a in order},
        axes_units={a.lower(): unit for a in "ZYX" if a in order} if sizes else None,
    )


write_ome_zarr_array = _write_zarr
"""Write a (numpy or dask) array as an OME-Zarr folder at a path (no atomic rename)."""

atomic_target = _atomic_target
"""Context manager: a temporary sibling path that replaces the target on success."""


_WRITERS: dict[str, Callable[[Path, np.ndarray, str, dict | None], None]] = {
    ".tif": _write_tiff,
    ".tiff": _write_tiff,
    ".ome.tif": _write_ome_tiff,
    ".ome.tiff": _write_ome_tiff,
    ".png": _write_png,
    ".zarr": _write_zarr,
    ".ome.zarr": _write_zarr,
}


def _writable_suffix(target: Path) -> str:
    suffix = _suffix(target)
    if suffix not in _WRITERS:
        lossy = (
            " JPEG loses detail, so results are not saved as JPEG."
            if suffix in (".jpg", ".jpeg")
            else ""
        )
        raise OutputError(
            f"deepscope cannot write '{suffix or 'no ending'}' files.{lossy}",
            path=target,
            fix="name the output .tif, .ome.tif, .png or .ome.zarr.",
        )
    return suffix


def write_image(
    path: str | os.PathLike,
    data: np.ndarray,
    axes: str,
    *,
    overwrite: bool = False,
    metadata: dict | None = None,
) -> Path:
    """Write an image atomically, in the format given by the file name's ending.

    - ``.tif``/``.tiff``: an ImageJ hyperstack when ImageJ can hold it as is (8-bit,
      16-bit or 32-bit float, axes in ImageJ's TZCYX order, or 8-bit RGB ``YXC``),
      otherwise a plain TIFF that records the axes.
    - ``.ome.tif``/``.ome.tiff``: OME-TIFF, any pixel type and axis order.
    - ``.png``: 8/16-bit greyscale (``YX``) or 8-bit RGB/RGBA (``YXC`` or ``CYX``).
    - ``.ome.zarr``/``.zarr``: an OME-Zarr (NGFF 0.4) folder with a resolution pyramid
      for large images, axes stored in TCZYX order.

    Boolean images are written as 8-bit 0/1.

    Parameters
    ----------
    path
        The output file (or ``.ome.zarr`` folder); missing parent folders are created.
    data
        The pixels.
    axes
        One letter per dimension of ``data``, from ``TCZYX``.
    overwrite
        Whether an existing output may be replaced.
    metadata
        Physical pixel size, as in :attr:`Image.metadata` (``pixel_size``, ``unit``);
        written to ImageJ TIFF, OME-TIFF and OME-Zarr. ``display_range`` (min, max):
        how ImageJ/Fiji shows the values (ImageJ TIFF only; e.g. class codes 0-1).
        Other keys are not stored.

    Returns
    -------
    pathlib.Path
        The output path.

    Raises
    ------
    OutputError
        If the output exists and ``overwrite`` is False, the format cannot hold the
        image, or the location cannot be written (read-only, no permission, disk full).
    """
    target = Path(path)
    data = np.asarray(data)
    try:
        axes = check_axes(axes, data.ndim)
    except DeepscopeError as exc:
        raise OutputError(exc.problem, path=target, fix=exc.fix) from exc
    if data.dtype == bool:
        data = data.astype(np.uint8)
    suffix = _writable_suffix(target)
    if suffix == ".png":
        _png_array(target, data, axes)
    with _atomic_target(target, overwrite=overwrite) as tmp:
        _WRITERS[suffix](tmp, data, axes, metadata)
    return target
