"""Global drift between frames (stage jumps, slow sample drift), to subtract before linking.

When the whole field moves between two frames (a stage that jumps, a drifting dish),
every object seems to move by the same amount, often further than the linking distance.
The shift between consecutive frames is found by phase cross-correlation of the
foreground masks (scikit-image). It is kept only where it explains a real jump: without
it, the typical (median) object lies more than half an object diameter from the nearest
object of the previous frame, and with it, less than half as far. Cells moving on their
own, divisions and a few objects that happen to line up are therefore not taken for drift.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

_JUMP = 0.5  # unexplained motion (median nearest distance / diameter) that suggests a jump
_GAIN = 0.5  # the shift must at least halve the median nearest distance


def _crops(a: np.ndarray, b: np.ndarray, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Parts of ``a`` and ``b`` that coincide when ``b``'s content is displaced by ``shift``.

    ``a[x]`` is paired with ``b[x + shift]``.
    """
    sa, sb = [], []
    for n, s in zip(a.shape, shift, strict=True):
        s = int(s)
        if abs(s) >= n:
            return a[(slice(0, 0),) * a.ndim], b[(slice(0, 0),) * b.ndim]
        sa.append(slice(max(0, -s), n - max(0, s)))
        sb.append(slice(max(0, s), n - max(0, -s)))
    return a[tuple(sa)], b[tuple(sb)]


def _median_nearest(prev: np.ndarray, cur: np.ndarray, shift: np.ndarray) -> float:
    """Median distance from each object of ``cur`` (moved back by ``shift``) to ``prev``."""
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(prev).query(cur - shift)
    return float(np.median(dist))


def estimate_drift(labels: np.ndarray, objects: pd.DataFrame) -> np.ndarray:
    """Cumulative displacement of every frame relative to the first, ``(T, ndim)`` integers.

    Parameters
    ----------
    labels
        Label movie ``(T, *spatial)``.
    objects
        Its objects table (``frame``, centroid columns, ``diameter``), as made by
        :func:`deepscope.tracking.measure.measure_objects`.

    Returns
    -------
    numpy.ndarray
        Row ``t`` is how far (pixels, per spatial axis) the content of frame ``t`` lies
        from where it was in frame 0; zeros where no clear jump was found.
    """
    from skimage.registration import phase_cross_correlation

    n, dims = labels.shape[0], labels.ndim - 1
    cols = [c for c in ("z", "y", "x") if c in objects.columns][-dims:]
    centres = {f: g[cols].to_numpy(float) for f, g in objects.groupby("frame")}
    diameter = float(np.median(objects["diameter"])) if len(objects) else 1.0
    offsets = np.zeros((n, dims), dtype=np.int64)
    for t in range(1, n):
        step = np.zeros(dims, dtype=np.int64)
        prev, cur = centres.get(t - 1), centres.get(t)
        if prev is not None and cur is not None and len(prev) and len(cur):
            still = _median_nearest(prev, cur, step)
            if still > _JUMP * diameter:
                shift, _, _ = phase_cross_correlation(
                    (labels[t - 1] > 0).astype(np.float32),
                    (labels[t] > 0).astype(np.float32),
                    normalization=None,
                )
                displacement = -np.round(shift).astype(np.int64)
                if _median_nearest(prev, cur, displacement) < _GAIN * still:
                    step = displacement
        offsets[t] = offsets[t - 1] + step
    return offsets


def aligned_pair(
    a: np.ndarray, b: np.ndarray, offset_a: np.ndarray, offset_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Crops of two frames with their drift removed, pixel by pixel comparable."""
    return _crops(a, b, np.asarray(offset_b) - np.asarray(offset_a))
