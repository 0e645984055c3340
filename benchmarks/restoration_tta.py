"""Score a restoration model with test-time augmentation (shared by the W2S benchmarks).

``deepscope qc --tta`` does the same with the full report, but it also scores every kept
checkpoint 8 times over; the benchmarks only need the final model's numbers, so they
call this instead: each noisy image is predicted averaged over its 8 flips and turns
(``TileSettings(tta=True)``) and scored against its clean partner with the QC's own
metrics (raw and brightness-matched), then averaged over the images.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from deepscope.data.io import list_images, read_image
from deepscope.workflow.predict import TileSettings, predict_array
from deepscope.workflow.qc_restoration import restoration_metrics


def tta_scores(model: Any, noisy: Path, clean: Path) -> dict[str, float]:
    """Mean QC metrics of ``model`` with test-time augmentation over the pairs of two folders."""
    rows = []
    t0 = time.monotonic()
    for path in list_images(noisy):
        image = read_image(path).data.astype(np.float32)
        target = read_image(clean / path.name).data.astype(np.float32)
        pred = predict_array(model, image[None], TileSettings(tta=True))[0]
        rows.append(restoration_metrics(pred, target))
    out = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in rows[0]}
    out["seconds"] = round(time.monotonic() - t0, 1)
    return out
