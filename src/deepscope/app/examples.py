"""Example pictures for the task cards: what goes in and what comes out.

They are drawn from synthetic cells, so no data set has to ship with the app.

A task may name its kind of example in a class attribute ``app_example`` (one of
:data:`KINDS`); otherwise it is guessed from what the task learns from.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage

from deepscope.app import thumbs
from deepscope.tasks import get_task

KINDS = ("denoise", "restore", "translate", "segment")
_KNOWN = {"labelfree": "translate"}


def example_kind(task_name: str) -> str:
    """Which example fits the task (see :data:`KINDS`)."""
    cls = get_task(task_name)
    kind = getattr(cls, "app_example", None) or _KNOWN.get(task_name)
    if kind in KINDS:
        return kind
    if not cls.needs_targets:
        return "denoise"
    return "restore" if cls.normalize_targets else "segment"


def _cells(size: int = 96, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    img = np.zeros((size, size), np.float32)
    for _ in range(7):
        cy, cx = rng.uniform(12, size - 12, 2)
        r = rng.uniform(6, 11)
        img += ((yy - cy) ** 2 + (xx - cx) ** 2 < r**2).astype(np.float32)
    return ndimage.gaussian_filter(np.clip(img, 0, 1), 1.5)


@lru_cache(maxsize=16)
def example_png(task_name: str) -> bytes:
    """A PNG with the input on the left and the result on the right."""
    clean = _cells()
    rng = np.random.default_rng(0)
    kind = example_kind(task_name)
    if kind == "translate":
        left = thumbs.stretch(ndimage.gaussian_gradient_magnitude(clean, 1.5) + 0.5)
        right = thumbs.stretch(clean)
    elif kind == "segment":
        left = thumbs.stretch(clean + rng.normal(0, 0.1, clean.shape))
        labels, _ = ndimage.label(clean > 0.4)
        right = thumbs.overlay(clean, labels)
    else:
        noise = 0.5 if kind == "denoise" else 0.3
        low = clean * (1 if kind == "denoise" else 0.3)
        left = thumbs.stretch(low + rng.normal(0, noise * (low.max() or 1), clean.shape))
        right = thumbs.stretch(clean)
    return thumbs.png(thumbs.side_by_side([left, right], gap=6))
