"""Objects found by a StarDist model in bf16 and in 8-bit integers (``predict --int8``).

Scores the model (default: the shipped ``nuclei``) on the 11 TEST images of
``benchmarks/nuclei_split.json`` (as ``nuclei_dsb.py`` does: F1 and accuracy at IoU 0.5
and 0.7, per kind and for all) and on the speed mosaic of ``stardist_speed.py`` (run its
``make-image`` step first), four ways: bf16 (the default), ``--int8``, and each with
``--tta``. Accuracy only; no timing (see ``stardist_speed.sh --int8`` for that).

Usage (from the project root)::

    PYTHONPATH=src .venv/bin/python benchmarks/stardist_int8_accuracy.py [--model FOLDER]

Writes ``benchmarks/out/stardist_int8_accuracy.json`` and prints one line per way.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import tifffile
from nuclei_dsb import DATA, read_rgb, score

HERE = Path(__file__).parent
SPLIT = HERE / "nuclei_split.json"
MOSAIC = HERE / "out" / "stardist_speed"


def main() -> None:
    """Score the model the four ways (see the module docstring)."""
    from deepscope.workflow.int8_models import int8_network
    from deepscope.workflow.model_folder import load_model_folder
    from deepscope.workflow.predict import TileSettings, predict_raw
    from deepscope.workflow.pretrained import resolve_model
    from deepscope.workflow.qc_instance import match_dataset

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="nuclei", help="model folder or shipped name")
    a = p.parse_args()
    model = load_model_folder(resolve_model(a.model))
    split = json.loads(SPLIT.read_text())
    truths = {n: tifffile.imread(DATA / "masks" / f"{n}.tif") for n in split["test"]}
    mosaic = tifffile.imread(MOSAIC / "mosaic.tif").astype(np.float32)[None]
    mosaic_truth = tifffile.imread(MOSAIC / "mosaic_labels.tif")
    ways = {
        "bf16": TileSettings(),
        "int8": TileSettings(int8=True),
        "bf16 --tta": TileSettings(tta=True),
        "int8 --tta": TileSettings(int8=True, tta=True),
    }
    out: dict = {"model": str(model.folder)}
    for label, tiles in ways.items():

        def labels(image: np.ndarray, tiles: TileSettings = tiles) -> np.ndarray:
            return model.task.instances(predict_raw(model, image, tiles, grid=True))

        preds = {n: labels(read_rgb(n)) for n in split["test"]}
        s = score(truths, preds, split["kinds"])
        found = labels(mosaic)
        m = match_dataset([mosaic_truth], [found], [0.5, 0.7])
        out[label] = {
            "test": {
                group: {
                    "f1@0.5": v["0.5"]["f1"],
                    "accuracy@0.5": v["0.5"]["accuracy"],
                    "f1@0.7": v["0.7"]["f1"],
                }
                for group, v in s.items()
            },
            "mosaic": {
                "objects": int(found.max()),
                "f1@0.5": round(float(m["0.5"]["f1"]), 4),
                "f1@0.7": round(float(m["0.7"]["f1"]), 4),
            },
        }
        print(label, json.dumps(out[label]), flush=True)
    out["int8_calibration"] = int8_network(model).calibration.get("made_from")
    path = HERE / "out" / "stardist_int8_accuracy.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
