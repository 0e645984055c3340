"""Measure the objects of a label movie: one row per object and frame."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from deepscope.tracking.io import Movie


def spacing(movie: Movie) -> tuple[float, ...]:
    """Pixel spacing per spatial axis in units of the X pixel size (1 when unknown).

    Only the ratio matters for linking: a Z step five times the pixel width makes
    a move of one plane count as five pixels.
    """
    sizes = (movie.metadata or {}).get("pixel_size") or {}
    axes = "ZYX" if movie.spatial_dims == 3 else "YX"
    x = float(sizes.get("X") or 1.0)
    return tuple(float(sizes.get(a) or x) / x for a in axes)


def measure_objects(
    labels: np.ndarray,
    intensity: np.ndarray | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Return a table of every object in every frame.

    Parameters
    ----------
    labels
        Label movie ``(T, *spatial)``, 0 = background.
    intensity
        The raw movie ``(T, *spatial)`` for mean intensities, or None.
    progress
        Called with (frames done, frames) after each frame.

    Returns
    -------
    pandas.DataFrame
        Columns ``frame``, ``label``, ``z`` (3D only), ``y``, ``x`` (centroid, pixels),
        ``area`` (pixels, voxels in 3D), ``diameter`` (of the circle/sphere of equal
        area/volume) and ``mean_intensity`` (NaN without ``intensity``).
    """
    from skimage.measure import regionprops_table

    dims = labels.ndim - 1
    names = ["z", "y", "x"][-dims:]
    tables = []
    for t in range(labels.shape[0]):
        props = ["label", "centroid", "area", "equivalent_diameter_area"]
        image = None
        if intensity is not None:
            props.append("intensity_mean")
            image = np.asarray(intensity[t], dtype=np.float32)
        table = pd.DataFrame(regionprops_table(labels[t], intensity_image=image, properties=props))
        table = table.rename(
            columns={f"centroid-{i}": n for i, n in enumerate(names)}
            | {"equivalent_diameter_area": "diameter", "intensity_mean": "mean_intensity"}
        )
        table.insert(0, "frame", t)
        tables.append(table)
        if progress:
            progress(t + 1, labels.shape[0])
    objects = pd.concat(tables, ignore_index=True)
    if "mean_intensity" not in objects:
        objects["mean_intensity"] = np.nan
    return objects[["frame", "label", *names, "area", "diameter", "mean_intensity"]]
