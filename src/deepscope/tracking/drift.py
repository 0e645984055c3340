"""Global drift between frames (stage jumps, slow sample drift), to subtract before linking.

When the whole field moves between two frames (a stage that jumps, a drifting dish),
every object seems to move by the same amount, often further than the linking distance.
The shift between consecutive frames is found by phase cross-correlation of the
foreground masks (scikit-image); it is kept only if it makes the two foregrounds overlap
clearly better than without shifting, so that cells moving on their own are not taken
for drift.
"""

from __future__ import annotations

import numpy as np

_MIN_GAIN = 0.05  # a shift must raise the foreground IoU by this much to count as drift


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


def _iou(a: np.ndarray, b: np.ndarray, shift: np.ndarray) -> float:
    ca, cb = _crops(a, b, shift)
    union = np.logical_or(ca, cb).sum()
    return float(np.logical_and(ca, cb).sum() / union) if union else 0.0


def estimate_drift(labels: np.ndarray) -> np.ndarray:
    """Cumulative displacement of every frame relative to the first, ``(T, ndim)`` integers.

    Parameters
    ----------
    labels
        Label movie ``(T, *spatial)``.

    Returns
    -------
    numpy.ndarray
        Row ``t`` is how far (pixels, per spatial axis) the content of frame ``t`` lies
        from where it was in frame 0; zeros where no clear drift was found.
    """
    from skimage.registration import phase_cross_correlation

    n, dims = labels.shape[0], labels.ndim - 1
    offsets = np.zeros((n, dims), dtype=np.int64)
    for t in range(1, n):
        a, b = labels[t - 1] > 0, labels[t] > 0
        step = np.zeros(dims, dtype=np.int64)
        if a.any() and b.any():
            shift, _, _ = phase_cross_correlation(a.astype(np.float32), b.astype(np.float32),
                                                  normalization=None)
            displacement = -np.round(shift).astype(np.int64)
            if np.any(displacement) and _iou(a, b, displacement) > _iou(a, b, step) + _MIN_GAIN:
                step = displacement
        offsets[t] = offsets[t - 1] + step
    return offsets


def aligned_pair(
    a: np.ndarray, b: np.ndarray, offset_a: np.ndarray, offset_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Crops of two frames with their drift removed, pixel by pixel comparable."""
    return _crops(a, b, np.asarray(offset_b) - np.asarray(offset_a))
