"""Where the membrane errors of an ISBI EM model lie: on the membranes' edges, or elsewhere.

For a model trained by ``benchmarks/em_isbi.py`` (its run folder keeps the test slices it
was scored on), every wrongly classified pixel of the 5 test slices is binned by its
distance to the nearest membrane pixel of the other side: a false membrane pixel by its
distance to the true membranes, a missed one by its distance to the predicted membranes.
Errors at distance 1 are one-pixel disagreements about where a membrane's edge is. Also
printed: the mean membrane thickness (area / skeleton length) of truth and prediction, and
the membrane IoU with those edge disagreements forgiven (for scale, not as a score).

Usage::

    PYTHONPATH=src .venv/bin/python benchmarks/em_isbi_errors.py \
        [--out benchmarks/out/em_isbi_val25]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import skeletonize

from deepscope.data.io import read_image
from deepscope.workflow.model_folder import load_model_folder
from deepscope.workflow.predict import TileSettings, predict_raw

BINS = 6
"""Distances 1 … BINS-1 pixels, and BINS or more."""


def main() -> None:
    """Print the error distances of the model in ``--out`` (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/em_isbi_val25"))
    p.add_argument("--threshold", type=float, default=0.5, help="membrane probability threshold")
    a = p.parse_args()
    model = load_model_folder(a.out / "run" / "model")
    data = a.out / "data"
    hist = {"false membrane": np.zeros(BINS + 1, int), "missed membrane": np.zeros(BINS + 1, int)}
    thickness: dict[str, list[float]] = {"truth": [], "model": []}
    tp = 0
    for f in sorted((data / "test_images").iterdir()):
        image = read_image(f).data.astype(np.float32)[None]
        truth = read_image(data / "test_masks" / f.name).data == 0  # 0 = membrane
        scores = predict_raw(model, image, TileSettings())
        e = np.exp(scores - scores.max(0))
        pred = e[0] / e.sum(0) > a.threshold
        tp += int((pred & truth).sum())
        for name, wrong, other in (
            ("false membrane", pred & ~truth, truth),
            ("missed membrane", truth & ~pred, pred),
        ):
            d = ndi.distance_transform_edt(~other)[wrong]
            hist[name] += np.bincount(np.minimum(d.astype(int), BINS), minlength=BINS + 1)
        for name, m in (("truth", truth), ("model", pred)):
            thickness[name].append(float(m.sum() / max(1, skeletonize(m).sum())))
    errors = sum(int(h.sum()) for h in hist.values())
    far = sum(int(h[2:].sum()) for h in hist.values())
    out = {
        "model": str(a.out / "run" / "model"),
        "threshold": a.threshold,
        "membrane_iou": round(tp / (tp + errors), 4),
        "share_of_errors_at_distance": {
            name: {
                str(d) if d < BINS else f"{BINS}+": round(float(h[d] / h.sum()), 3)
                for d in range(1, BINS + 1)
            }
            for name, h in hist.items()
        },  # fmt: skip
        "errors": {name: int(h.sum()) for name, h in hist.items()},
        "mean_thickness_px": {k: round(float(np.mean(v)), 2) for k, v in thickness.items()},
        "membrane_iou_forgiving_one_pixel_edges": round(tp / (tp + far), 4),
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
