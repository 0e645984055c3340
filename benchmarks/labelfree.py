"""Label-free prediction (fnet-style) of DAPI from a transmitted-light image, on one field.

Data (``../shared/data/labelfree``, see its PROVENANCE.txt): ``dish1_xy1c1_input.tif``
(transmitted light, phase per the source folder name) and ``dish1_xy1c2_DAPI.tif``
(Hoechst/DAPI nuclei of the same field), uint16 512×512; MDCK cells, LaChance & Cohen
2020. There is only this one registered pair, so the field is split: the network trains
on the top ``TRAIN_ROWS`` rows and predicts the bottom rows it has never seen, scored by
the Pearson correlation with the real DAPI image (the metric fnet reports), and by PSNR/
SSIM after matching brightness and contrast. The correlation of the transmitted-light
image itself with DAPI is given as the floor.

Usage::

    .venv/bin/python benchmarks/labelfree.py [--minutes 10]

Writes ``benchmarks/out/labelfree/`` (run, QC report with figures) and prints a JSON
summary.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from deepscope.config import config_from_dict
from deepscope.data.io import write_image
from deepscope.workflow.model_folder import load_model_folder
from deepscope.workflow.qc import run_qc
from deepscope.workflow.training import train

HERE = Path(__file__).parent
INPUT, TARGET = "dish1_xy1c1_input.tif", "dish1_xy1c2_DAPI.tif"
TRAIN_ROWS = 384
KEYS = ("pearson_r", "psnr_matched", "ssim_matched")


def config(minutes: float, patches: int) -> Any:
    """A 2D label-free model: deeper than the denoisers, for the wider context nuclei need."""
    return config_from_dict(
        {
            "task": "labelfree",
            "data": {"patch_size": [64, 64]},
            "model": {"depth": 3, "base_channels": 32},
            "training": {
                "epochs": 10_000,
                "max_minutes": minutes,
                "patches_per_epoch": patches,
                "batch_size": 16,
                "val_patches": 64,
                "checkpoint_every": 20,
            },
        }
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=HERE.parent.parent / "shared/data/labelfree")
    p.add_argument("--minutes", type=float, default=10.0, help="training budget")
    p.add_argument("--patches-per-epoch", type=int, default=256)
    p.add_argument("--out", type=Path, default=HERE / "out/labelfree")
    a = p.parse_args()
    shutil.rmtree(a.out, ignore_errors=True)
    image = tifffile.imread(a.data / INPUT)
    target = tifffile.imread(a.data / TARGET)
    assert image.shape == target.shape == (512, 512), (image.shape, target.shape)
    parts = {
        "train_in": image[:TRAIN_ROWS],
        "train_tg": target[:TRAIN_ROWS],
        "test_in": image[TRAIN_ROWS:],
        "test_tg": target[TRAIN_ROWS:],
    }
    for name, array in parts.items():
        write_image(a.out / "data" / name / "dish1.tif", np.ascontiguousarray(array), "YX")
    d = a.out / "data"

    t0 = time.monotonic()
    result = train(
        config(a.minutes, a.patches_per_epoch),
        d / "train_in",
        a.out / "run",
        d / "train_tg",
        show_bar=False,
    )
    minutes = (time.monotonic() - t0) / 60
    summary = run_qc(
        load_model_folder(result.model_dir), d / "test_in", d / "test_tg", a.out / "qc"
    )
    out = {
        "benchmark": "labelfree",
        "split": f"train rows 0-{TRAIN_ROWS - 1}, test rows {TRAIN_ROWS}-511 of one 512x512 field",
        "minutes": a.minutes,
        "train_minutes": round(minutes, 2),
        "epochs": result.epochs_trained,
        "model": {k: round(summary["model"][k], 4) for k in KEYS},
        "transmitted_light_itself": {k: round(summary["input"][k], 4) for k in KEYS},
        "report": str(a.out / "qc" / "report.html"),
    }
    text = json.dumps(out, indent=2)
    (a.out / "benchmark.json").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
