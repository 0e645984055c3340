"""Which nuclei a StarDist model misses, by size, on the nuclei benchmark's TEST images.

For each model folder given: the true objects of the 11 TEST images of
``benchmarks/nuclei_split.json`` binned by area (pixels), and per bin how many were found
(matched at IoU >= 0.5 by ``stardist.matching``, as ``nuclei_dsb.py`` scores), the
recall, and how many predicted objects fall in each bin; then F1@0.5 of all images.
Accuracy only; no timing.

Run from the project root::

    PYTHONPATH=src .venv/bin/python benchmarks/nuclei_size_recall.py MODEL [MODEL ...]

``MODEL`` is a model folder, or ``nuclei`` for the shipped model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import tifffile
from nuclei_dsb import DATA, _load, predict_model

#: Upper edges of the area bins (pixels).
BINS = (40, 60, 100, 200, 400, np.inf)


def bin_names() -> list[str]:
    """Readable names of the area bins."""
    lower = (0,) + BINS[:-1]
    return [
        f"{lo}-{hi}" if np.isfinite(hi) else f">={lo}" for lo, hi in zip(lower, BINS, strict=True)
    ]


def size_recall(truths: dict, preds: dict) -> dict:
    """Found / true objects per area bin, predicted objects per bin, and overall F1@0.5."""
    from stardist.matching import matching

    edges = (0,) + BINS
    true_n = np.zeros(len(BINS), int)
    found_n = np.zeros(len(BINS), int)
    pred_n = np.zeros(len(BINS), int)
    tp = fp = fn = 0
    for name, truth in truths.items():
        pred = preds[name]
        m = matching(truth, pred, thresh=0.5, report_matches=True)
        tp, fp, fn = tp + m.tp, fp + m.fp, fn + m.fn
        pairs = np.asarray(m.matched_pairs).reshape(-1, 2)
        scores = np.asarray(m.matched_scores)
        found = set(pairs[scores >= 0.5, 0].tolist())
        areas = np.bincount(truth.ravel())
        ids = np.flatnonzero(areas)
        ids = ids[ids > 0]
        which = np.digitize(areas[ids], edges[1:-1])
        true_n += np.bincount(which, minlength=len(BINS))
        hit = np.array([i in found for i in ids], bool)
        found_n += np.bincount(which[hit], minlength=len(BINS))
        p_areas = np.bincount(pred.ravel())[1:]
        p_areas = p_areas[p_areas > 0]
        pred_n += np.bincount(np.digitize(p_areas, edges[1:-1]), minlength=len(BINS))
    return {
        "bins": bin_names(),
        "true": true_n.tolist(),
        "found": found_n.tolist(),
        "recall": [round(f / t, 3) if t else None for f, t in zip(found_n, true_n, strict=True)],
        "predicted": pred_n.tolist(),
        "f1@0.5": round(2 * tp / max(1, 2 * tp + fp + fn), 4),
    }


def main() -> None:
    """Score each model folder given (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("models", nargs="+", help="model folders, or 'nuclei' for the shipped one")
    args = p.parse_args()
    _, names = _load()
    truths = {n: tifffile.imread(DATA / "masks" / f"{n}.tif") for n in names}
    for model in args.models:
        folder = (
            Path(__file__).resolve().parents[1] / "src" / "deepscope" / "pretrained" / "nuclei"
            if model == "nuclei"
            else Path(model)
        )
        preds, _ = predict_model(folder, names)
        print(model, json.dumps(size_recall(truths, preds)))


if __name__ == "__main__":
    main()
