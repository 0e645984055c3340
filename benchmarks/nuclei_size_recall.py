"""Which nuclei a StarDist model misses, by size, on the nuclei benchmark's TEST images.

For each model folder given: the true objects of the 11 TEST images of
``benchmarks/nuclei_split.json`` binned by area (pixels), and per bin how many were found
(matched at IoU >= 0.5 by ``stardist.matching``, as ``nuclei_dsb.py`` scores), the
recall, and how many predicted objects fall in each bin; then F1@0.5 of all images.
The counting is ``deepscope.workflow.qc_instance.recall_by_size``, which ``deepscope qc``
also reports ("Found by size", with bins relative to the median true object). Accuracy
only; no timing.

Run from the project root::

    PYTHONPATH=src .venv/bin/python benchmarks/nuclei_size_recall.py MODEL [MODEL ...]

``MODEL`` is a model folder, or ``nuclei`` for the shipped model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import tifffile
from nuclei_dsb import DATA, _load, predict_model

#: Inner edges of the area bins (pixels).
EDGES = (40, 60, 100, 200, 400)


def size_recall(truths: dict, preds: dict) -> dict:
    """Found / true objects per area bin, predicted objects per bin, and overall F1@0.5."""
    from deepscope.workflow.qc_instance import match_dataset, recall_by_size

    names = list(truths)
    t, p = [truths[n] for n in names], [preds[n] for n in names]
    out = recall_by_size(t, p, EDGES)
    out["recall"] = [None if r is None else round(r, 3) for r in out["recall"]]
    out["f1@0.5"] = round(match_dataset(t, p, (0.5,))["0.5"]["f1"], 4)
    return out


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
