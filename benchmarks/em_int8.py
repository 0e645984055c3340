"""EM membranes with a semantic U-Net in bf16 and in 8-bit integers (``predict --int8``).

Takes a model of ``em_isbi.py`` (default: the run in ``benchmarks/out/em_isbi_val25``,
the benchmark's recipe) and scores it on that run's 5 test slices both ways, as
``em_isbi.py`` does (QC's membrane IoU, Dice and mean IoU at threshold 0.5; the adapted
Rand error of connected cells and of cells grown from seeds, seed threshold from the
model folder), and times the prediction of one 512 x 512 slice (median of 9 after one
warm-up, 2 threads). The model was trained before training stored an 8-bit calibration,
so a copy of its folder is calibrated here on its 17 training slices (never the test
slices) and scored.

Usage (from the project root)::

    PYTHONPATH=src .venv/bin/python benchmarks/em_int8.py [--run benchmarks/out/em_isbi_val25]

Writes ``RUN/int8/`` (the calibrated copy, QC reports) and ``RUN/int8/int8.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from em_isbi import _scores, cell_scores

from deepscope.data.io import read_image

HERE = Path(__file__).parent


def main() -> None:
    """Score and time the model both ways (see the module docstring)."""
    from deepscope.engine.int8 import save_calibration
    from deepscope.workflow.int8_models import make_int8_calibration
    from deepscope.workflow.model_folder import load_model_folder
    from deepscope.workflow.predict import TileSettings, predict_raw
    from deepscope.workflow.qc import run_qc

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run", type=Path, default=HERE / "out" / "em_isbi_val25")
    a = p.parse_args()
    torch.set_num_threads(2)
    data, out = a.run / "data", a.run / "int8"
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(a.run / "run" / "model", out / "model")
    model = load_model_folder(out / "model")
    slices = sorted((data / "train_images").glob("*.png"))
    train = [read_image(f).data.astype(np.float32)[None] for f in slices]
    calibration = make_int8_calibration(model, train)
    calibration["made_from"] = f"the {len(train)} training slices"
    save_calibration(out / "model", calibration)
    model = load_model_folder(out / "model")
    test = sorted((data / "test_images").glob("*.png"))
    one = read_image(test[0]).data.astype(np.float32)[None]
    result: dict = {"model": str(a.run / "run" / "model"), "calibration": calibration["made_from"]}
    for label, tiles in (("bf16", TileSettings()), ("int8", TileSettings(int8=True))):
        summary = run_qc(model, data / "test_images", data / "test_masks", out / f"qc_{label}",
                         tiles=tiles)  # fmt: skip
        scores = _scores(summary, summary["adapted_rand_error"])
        cells = cell_scores(model, data / "test_images", data / "test_masks", tiles)
        scores["adapted_rand_error_outlines"] = cells["adapted_rand_error_outlines"]
        predict_raw(model, one, tiles)
        times = []
        for _ in range(9):
            t = time.perf_counter()
            predict_raw(model, one, tiles)
            times.append(time.perf_counter() - t)
        scores["seconds_per_slice_median"] = round(statistics.median(times), 4)
        result[label] = scores
        print(label, json.dumps(scores), flush=True)
    (out / "int8.json").write_text(json.dumps(result, indent=1))
    print(f"written to {out / 'int8.json'}")


if __name__ == "__main__":
    main()
