"""Prediction on images larger than memory: read, predict and write block by block.

An image whose prediction would need more memory than the limit (a quarter of this
computer's memory unless set) is cut into blocks. Each block is read from disk with a
margin of context around it, predicted like any image (tiled, blended), and only its
central part is written into the output file, which is built on disk (a memory-mapped
TIFF, or a chunked OME-Zarr). Memory then depends on the block size, not on the image.

Only tasks whose result at a pixel depends on the network output near that pixel
(restoration, class maps) can be predicted this way; tasks that need the whole image
at once (e.g. instance segmentation) say so with ``Task.blockwise_ok``. 2D StarDist has
its own block-by-block path (:mod:`deepscope.workflow.instances_in_blocks`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deepscope.data.axes import from_channel_first, output_axes, to_channel_first
from deepscope.data.io import Image, atomic_target, tiff_memmap
from deepscope.data.normalize import PercentileNormalizer
from deepscope.errors import OutputError

_BYTES = 4  # float32 working arrays


def physical_memory() -> int:
    """Bytes of physical memory of this computer (8 GiB if it cannot be read)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def default_memory_limit() -> int:
    """The memory one image's prediction may use before blocks are used: 1/4 of RAM."""
    return physical_memory() // 4


def spatial_letters(dims: int) -> str:
    """``"YX"`` for 2D, ``"ZYX"`` for 3D."""
    return "ZYX" if dims == 3 else "YX"


def image_sizes(image: Image, dims: int) -> tuple[tuple[int, ...], int]:
    """Spatial shape and number of channels of an image (without reading its pixels)."""
    shape = tuple(int(s) for s in image.data.shape)
    spatial = tuple(shape[image.axes.index(a)] for a in spatial_letters(dims))
    channels = shape[image.axes.index("C")] if "C" in image.axes else 1
    return spatial, channels


def memory_needed(spatial: Sequence[int], in_channels: int, out_channels: int) -> int:
    """Estimated peak bytes of predicting a whole image in memory.

    Input as read and normalised, the padded copy, the blended output, its weights and
    the de-normalised and post-processed results.
    """
    pixels = math.prod(spatial)
    return pixels * _BYTES * (2 * in_channels + 3 * out_channels + 1)


def _region(axes: str, letters: str, spatial: Sequence[slice]) -> tuple[slice, ...]:
    """Index of a spatial region in an array with ``axes`` (other axes taken whole)."""
    return tuple(spatial[letters.index(a)] if a in letters else slice(None) for a in axes)


def blocks(
    shape: Sequence[int], block: Sequence[int], margin: Sequence[int]
) -> Iterator[tuple[tuple[slice, ...], tuple[slice, ...], tuple[slice, ...]]]:
    """Cut ``shape`` into blocks; yield (read region, written region, crop within read).

    The read region is the block grown by ``margin`` on each side (clipped to the
    image); the crop selects the block itself from what was read.
    """
    starts = [range(0, s, b) for s, b in zip(shape, block, strict=True)]
    for corner in itertools.product(*starts):
        read, write, crop = [], [], []
        for c, s, b, m in zip(corner, shape, block, margin, strict=True):
            end = min(c + b, s)
            r0, r1 = max(0, c - m), min(s, end + m)
            read.append(slice(r0, r1))
            write.append(slice(c, end))
            crop.append(slice(c - r0, end - r0))
        yield tuple(read), tuple(write), tuple(crop)


def read_region(image: Image, dims: int, region: Sequence[slice]) -> np.ndarray:
    """The pixels of a spatial region of a lazily opened image, channel first (C, *spatial)."""
    raw = np.asarray(image.data[_region(image.axes, spatial_letters(dims), region)])
    return to_channel_first(raw, image.axes, dims, path=image.path)


def whole_image_normalizer(
    image: Image,
    dims: int,
    normalizer: PercentileNormalizer,
    block: Sequence[int],
    adapt: Callable[[np.ndarray], np.ndarray] | None = None,
    samples: int = 4_000_000,
) -> PercentileNormalizer:
    """The percentiles of a whole lazily opened image, for a model that maps each image by its own.

    Predicting such an image block by block must map every block by the *image's*
    percentiles: a block's own would stretch a block of background into objects and give
    neighbouring blocks different brightness. The image is read block by block and every
    k-th pixel of each axis kept (about ``samples`` values per channel).

    Parameters
    ----------
    image
        The input, opened with :func:`deepscope.data.io.open_image`.
    dims
        2 or 3 spatial dimensions.
    normalizer
        The model's normaliser (its percentile levels are used).
    block
        Block size per spatial axis for reading.
    adapt
        The task's channel adaptation (e.g. colour to grey), applied to each block first.
    samples
        About how many pixels are sampled.

    Returns
    -------
    PercentileNormalizer
        Fixed statistics (``per_image`` False) at the model's percentile levels.
    """
    spatial, _ = image_sizes(image, dims)
    step = max(1, int(math.ceil((math.prod(spatial) / samples) ** (1 / dims))))
    parts = []
    for read, _write, _crop in blocks(spatial, block, (0,) * dims):
        # Start each block's sampling on the whole image's lattice of every step-th pixel.
        sub = tuple(slice(r.start + (-r.start % step), r.stop, step) for r in read)
        if any(s.start >= s.stop for s in sub):
            continue
        cf = read_region(image, dims, sub)
        parts.append(adapt(cf) if adapt is not None else cf)
    flat = [p.reshape(p.shape[0], -1) for p in parts]
    fitted = PercentileNormalizer.fit(
        [np.concatenate(flat, axis=1)], normalizer.low_pct, normalizer.high_pct
    )
    return dataclasses.replace(fitted, per_image=False)


def block_shape(dims: int, block: int, tile_z: int) -> tuple[int, ...]:
    """Block size per spatial axis: ``block`` in Y and X, a few Z tiles in Z."""
    return (max(4 * tile_z, 64), block, block) if dims == 3 else (block, block)


class _DiskOutput:
    """One output image built on disk region by region, then moved into place."""

    def __init__(
        self,
        target: Path,
        shape: tuple[int, ...],
        axes: str,
        dtype: np.dtype,
        metadata: dict,
        overwrite: bool,
    ):
        self.target = target
        self.axes = axes
        self.metadata = metadata
        self.overwrite = overwrite
        self._context = atomic_target(target, overwrite=overwrite)
        self.tmp = self._context.__enter__()
        name = target.name.lower()
        self.zarr = name.endswith(".zarr")
        if self.zarr:
            import zarr

            chunks = tuple(
                min(s, 512) if a in "YX" else 1 for a, s in zip(axes, shape, strict=True)
            )
            self.scratch = self.tmp.with_name(self.tmp.name + ".scratch.zarr")
            self.array: Any = zarr.open_array(
                str(self.scratch), mode="w", shape=shape, dtype=dtype, chunks=chunks
            )
        else:
            self.array = tiff_memmap(self.tmp, shape, np.dtype(dtype), axes, metadata)

    def write(self, region: tuple[slice, ...], data: np.ndarray) -> None:
        self.array[region] = data

    def finish(self) -> None:
        if self.zarr:
            import dask.array as da

            from deepscope.data.io import write_ome_zarr_array

            write_ome_zarr_array(self.tmp, da.from_zarr(self.array), self.axes, self.metadata)
            shutil.rmtree(self.scratch, ignore_errors=True)
        else:
            self.array.flush()
            del self.array
        self._context.__exit__(None, None, None)

    def abort(self, exc: BaseException) -> None:
        if self.zarr:
            shutil.rmtree(self.scratch, ignore_errors=True)
        else:
            del self.array
        self._context.__exit__(type(exc), exc, exc.__traceback__)


def predict_in_blocks(
    image: Image,
    target: Path,
    dims: int,
    predict: Callable[[np.ndarray], np.ndarray],
    side_outputs: Callable[[np.ndarray], dict[str, np.ndarray]],
    postprocess: Callable[[np.ndarray], np.ndarray],
    side_target: Callable[[str], Path],
    *,
    block: Sequence[int],
    margin: Sequence[int],
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    display_range: tuple[float, float] | None = None,
) -> dict[str, Path]:
    """Predict a lazily opened image block by block into ``target`` (and side outputs).

    ``display_range`` is written with the result (not the side outputs), as by
    :func:`deepscope.data.io.write_image`.

    Parameters
    ----------
    image
        The input, opened with :func:`deepscope.data.io.open_image` (pixels on disk).
    target
        The result file (``.tif``, ``.ome.tif`` or ``.ome.zarr``), written atomically.
    dims
        2 or 3 spatial dimensions.
    predict
        Channel-first block (C, *spatial) → raw de-normalised network output.
    side_outputs, postprocess
        The task's functions of a raw output (see :class:`deepscope.tasks.base.Task`).
    side_target
        Suffix → path of that side output.
    block, margin
        Block size and context margin per spatial axis.
    overwrite
        Whether existing outputs may be replaced.
    progress
        Called as ``progress(done_blocks, total_blocks)``.

    Returns
    -------
    dict
        ``{"": target, suffix: side output path, ...}``.
    """
    letters = spatial_letters(dims)
    spatial, _ = image_sizes(image, dims)
    regions = list(blocks(spatial, block, margin))
    n_in = image.data.shape[image.axes.index("C")] if "C" in image.axes else None
    outputs: dict[str, _DiskOutput] = {}
    try:
        for i, (read, write, crop) in enumerate(regions):
            cf = read_region(image, dims, read)
            raw = predict(cf)
            results = {"": postprocess(raw), **side_outputs(raw)}
            for key, result in results.items():
                kept = result[(slice(None),) + crop]
                out_axes = output_axes(image.axes, dims, kept.shape[0], n_in)
                if key not in outputs:
                    shape = _output_shape(image, dims, out_axes, spatial, kept.shape[0])
                    path = target if key == "" else side_target(key)
                    meta = dict(image.metadata or {})
                    if key == "":
                        meta["display_range"] = display_range
                    outputs[key] = _DiskOutput(path, shape, out_axes, kept.dtype, meta, overwrite)
                outputs[key].write(
                    _region(out_axes, letters, write),
                    from_channel_first(kept, image.axes, dims, n_in),
                )
            if progress:
                progress(i + 1, len(regions))
        for out in outputs.values():
            out.finish()
    except BaseException as exc:
        for out in outputs.values():
            out.abort(exc)
        if isinstance(exc, OSError):
            raise write_error(exc, target) from exc
        raise
    return {key: out.target for key, out in outputs.items()}


def write_error(exc: OSError, target: Path) -> OutputError:
    """What the user is told when a result built on disk could not be written."""
    return OutputError(
        f"the result could not be written ({exc.strerror or exc})",
        target,
        "check that the output folder is on a disk with enough free space",
    )


def _output_shape(
    image: Image, dims: int, out_axes: str, spatial: Sequence[int], channels: int
) -> tuple[int, ...]:
    letters = spatial_letters(dims)
    shape = []
    for a in out_axes:
        if a in letters:
            shape.append(int(spatial[letters.index(a)]))
        elif a == "C":
            shape.append(channels)
        else:  # T, or Z of a 2D image: length one
            shape.append(1)
    return tuple(shape)
