"""StarDist on images larger than memory: objects found, then drawn, block by block.

The label image of an instance model needs the whole image (an object may cross any
line one could cut along), so it cannot be made like a restoration, block by block
independently. Instead:

1. **Find.** Each block is read from disk with a margin of context (wider than the
   objects), predicted like any image, and its objects found (the package's non-maximum
   suppression on the block's maps). An object is kept only by the block whose core
   holds its centre: an object crossing a block border lies whole in the context of both
   blocks, both find it alike, and exactly one keeps it. What is kept of the whole image
   is a few numbers per object (centre, distances, probability).
2. **Number.** The objects are numbered by probability, 1 = most probable, as for an
   image in memory.
3. **Draw and measure.** The labels are drawn block by block into a scratch file on disk,
   each block from the polygons that reach into it, least probable first (so where
   polygons overlap the more probable wins, as in memory); the objects' areas, centroids
   and mean intensities are summed over the blocks.
4. **Renumber.** Objects hidden entirely by more probable ones are dropped, the others
   renumbered 1..n, and the result written (TIFF or OME-Zarr) with its ImageJ ROIs and
   measurements table.

Memory then depends on the block size and the number of objects, not on the image.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deepscope.data.axes import from_channel_first, output_axes
from deepscope.data.io import Image, atomic_write_bytes, atomic_write_text
from deepscope.tasks.base import extra_file_name
from deepscope.workflow.large_images import (
    _DiskOutput,
    _output_shape,
    _region,
    blocks,
    image_sizes,
    read_region,
    write_error,
)

MIN_CONTEXT = 128
"""Pixels of context around each block at least: objects up to this size are found whole."""


def context_margin(overlap: int, grid: Sequence[int]) -> tuple[int, ...]:
    """Context per axis: twice the tile overlap, at least :data:`MIN_CONTEXT`, on the grid."""
    m = max(2 * overlap, MIN_CONTEXT)
    return tuple(-(-m // g) * g for g in grid)


def predict_instances_in_blocks(
    image: Image,
    target: Path,
    task: Any,
    predict: Callable[[np.ndarray], np.ndarray],
    *,
    block: Sequence[int],
    margin: Sequence[int],
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Segment a lazily opened 2D image block by block into ``target`` and its extra files.

    Parameters
    ----------
    image
        The input, opened with :func:`deepscope.data.io.open_image` (pixels on disk).
    target
        The label image (``.tif``, ``.ome.tif`` or ``.ome.zarr``), written atomically;
        ``<name>_rois.zip`` and ``<name>_measurements.csv`` are written beside it.
    task
        The model's :class:`deepscope.tasks.stardist.StarDistTask` (2D).
    predict
        Channel-first block (C, Y, X) → de-normalised network output.
    block, margin
        Block size and context margin per axis, multiples of the task's grid.
    overwrite
        Whether existing outputs may be replaced.
    progress
        Called as ``progress(done, total)`` over the blocks (finding, then drawing).
    log
        Receives a warning when objects were larger than the context.

    Returns
    -------
    dict
        ``objects`` (count), ``cut_objects`` (objects reaching the edge of their block's
        context, possibly cut), and the file names ``rois`` and ``measurements``.
    """
    from deepscope.tasks.stardist import (
        columns_csv,
        draw_polygons,
        measurement_columns,
        roi_zip_bytes,
    )

    letters = "YX"
    spatial, _ = image_sizes(image, 2)
    regions = list(blocks(spatial, block, margin))
    total = 2 * len(regions)
    n_in = image.data.shape[image.axes.index("C")] if "C" in image.axes else None

    # 1. find
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    cut = 0
    for i, (read, write, _crop) in enumerate(regions):
        cf = read_region(image, 2, read)
        points, prob, dist = task.objects(predict(cf))
        origin = np.array([r.start for r in read])
        points = points + origin
        core = np.all(
            [(points[:, a] >= write[a].start) & (points[:, a] < write[a].stop) for a in (0, 1)],
            axis=0,
        )
        points, prob, dist = points[core], prob[core], dist[core]
        cut += _count_cut(points, dist, read, spatial)
        found.append((points, prob, dist))
        if progress:
            progress(i + 1, total)
    points = np.concatenate([f[0] for f in found]).reshape(-1, 2)
    prob = np.concatenate([f[1] for f in found])
    dist = np.concatenate([f[2].reshape(-1, task.n_rays) for f in found])
    if cut and log:
        log(
            f"{target.name}: {cut} object(s) reached the edge of the {margin[0]}-pixel context "
            "around their block and may be cut; use larger blocks/tiles if objects are that big"
        )

    # 2. number: 1 = most probable
    order = np.argsort(-prob, kind="stable")
    points, prob, dist = points[order], prob[order], dist[order]
    n = len(points)
    reach = dist.max(axis=1) if n else np.zeros(0)
    draw_order = np.arange(n)[::-1]  # least probable first

    # 3. draw into scratch, and sum what the measurements need
    channels = 1 if n_in is None else n_in
    area = np.zeros(n + 1, np.int64)
    sums = np.zeros((2 + channels, n + 1), np.float64)  # y, x, intensities
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".deepscope-") as tmp:
        scratch = np.lib.format.open_memmap(
            Path(tmp) / "labels.npy", mode="w+", dtype=np.uint32, shape=tuple(spatial)
        )
        for i, (_read, write, _crop) in enumerate(regions):
            lo = np.array([s.start for s in write])
            hi = np.array([s.stop for s in write])
            near = np.all((points + reach[:, None] >= lo) & (points - reach[:, None] < hi), axis=1)
            idx = draw_order[near[draw_order]]
            shape = tuple(int(v) for v in hi - lo)
            drawn = draw_polygons(points[idx], dist[idx], idx + 1, shape, tuple(lo))
            scratch[write] = drawn
            flat = drawn.ravel()
            area += np.bincount(flat, minlength=n + 1)
            yy, xx = np.indices(shape)
            sums[0] += np.bincount(flat, weights=(yy + lo[0]).ravel(), minlength=n + 1)
            sums[1] += np.bincount(flat, weights=(xx + lo[1]).ravel(), minlength=n + 1)
            pixels = read_region(image, 2, write)
            for c in range(channels):
                sums[2 + c] += np.bincount(flat, weights=pixels[c].ravel(), minlength=n + 1)
            if progress:
                progress(len(regions) + i + 1, total)

        # 4. renumber the objects that show, and write
        present = np.flatnonzero(area[1:] > 0) + 1
        dtype = np.uint16 if len(present) < 2**16 else np.uint32
        lookup = np.zeros(n + 1, dtype=dtype)
        lookup[present] = np.arange(1, len(present) + 1)
        out_axes = output_axes(image.axes, 2, 1, n_in)
        shape_out = _output_shape(image, 2, out_axes, spatial, 1)
        out = _DiskOutput(target, shape_out, out_axes, np.dtype(dtype), image.metadata, overwrite)
        try:
            for _read, write, _crop in regions:
                labels = lookup[np.asarray(scratch[write])][None]
                out.write(
                    _region(out_axes, letters, write),
                    from_channel_first(labels, image.axes, 2, n_in),
                )
            out.finish()
        except BaseException as exc:
            out.abort(exc)
            if isinstance(exc, OSError):
                raise write_error(exc, target) from exc
            raise
        del scratch

    keep = present - 1
    details = {"points": points[keep], "prob": prob[keep], "dist": dist[keep]}
    per_pixel = sums[:, present] / area[present]  # y, x, intensities: means per object
    columns = measurement_columns(
        np.arange(1, len(present) + 1),
        per_pixel[:2].T,
        area[present],
        per_pixel[2:].T,
        details["prob"],
    )
    rois = target.with_name(extra_file_name(target.name, "rois.zip"))
    table = target.with_name(extra_file_name(target.name, "measurements.csv"))
    atomic_write_bytes(rois, roi_zip_bytes(details), overwrite=overwrite)
    atomic_write_text(table, columns_csv(columns), overwrite=overwrite)
    return {
        "objects": len(present),
        "cut_objects": cut,
        "rois": rois.name,
        "measurements": table.name,
    }


def _count_cut(
    points: np.ndarray, dist: np.ndarray, read: tuple[slice, ...], spatial: Sequence[int]
) -> int:
    """Objects whose polygon reaches a side of the read region that is not the image's edge."""
    if not len(points):
        return 0
    reach = dist.max(axis=1)
    cut = np.zeros(len(points), bool)
    for a in (0, 1):
        if read[a].start > 0:
            cut |= points[:, a] - reach <= read[a].start
        if read[a].stop < spatial[a]:
            cut |= points[:, a] + reach >= read[a].stop - 1
    return int(cut.sum())
