"""3D prediction in bf16 and in 8-bit integers (``predict --int8``): network time only.

No labelled 3D data of the right kind is in ``../shared/data``, so this measures speed
(and how far the 8-bit output is from the bf16 one), not accuracy: two model folders with
random weights and the default 3D settings of their task — StarDist 3D (96 rays, grid
1 x 2 x 2, U-Net depth 3, 32 base channels) and a semantic U-Net (2 classes) — predict
a synthetic 64 x 256 x 256 volume of bright blobs with the default tiling of
``deepscope predict`` (``predict_raw``, maps kept at StarDist's grid). Median of 3 after
one warm-up run (which also makes the 8-bit calibration, from this volume), 2 threads.

Usage (from the project root)::

    PYTHONPATH=src .venv/bin/python benchmarks/int8_speed_3d.py

Writes ``benchmarks/out/int8_speed_3d/`` (the two model folders, ``result.json``).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from stardist_speed import random_model_folder

OUT = Path(__file__).parent / "out" / "int8_speed_3d"
SHAPE = (64, 256, 256)


def blobs() -> np.ndarray:
    """A (1, Z, Y, X) float32 volume of 300 bright Gaussian blobs on a noisy background."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    volume = np.zeros(SHAPE, np.float32)
    points = rng.integers(0, SHAPE, size=(300, 3))
    volume[tuple(points.T)] = 1.0
    volume = ndimage.gaussian_filter(volume, (2, 4, 4)) * 300
    return (volume + rng.normal(0, 0.05, SHAPE)).astype(np.float32)[None]


def main() -> None:
    """Time both models both ways (see the module docstring)."""
    from deepscope.workflow.model_folder import load_model_folder
    from deepscope.workflow.predict import TileSettings, predict_raw

    torch.set_num_threads(2)
    OUT.mkdir(parents=True, exist_ok=True)
    volume = blobs()
    configs = {
        "stardist 3D": {
            "task": "stardist",
            "data": {"spatial_dims": 3, "patch_size": [32, 96, 96]},
            "stardist": {"n_rays": 96, "grid": [1, 2, 2]},
        },
        "semantic 3D": {
            "task": "semantic",
            "data": {"spatial_dims": 3, "patch_size": [32, 96, 96]},
        },
    }
    result: dict = {"volume": list(SHAPE)}
    for name, config in configs.items():
        folder = random_model_folder(config, OUT / name.replace(" ", "_"), input_axes="ZYX")
        model = load_model_folder(folder)
        outputs, row = {}, {"parameters": sum(p.numel() for p in model.network.parameters())}
        for label, tiles in (("bf16", TileSettings()), ("int8", TileSettings(int8=True))):
            outputs[label] = predict_raw(model, volume, tiles, grid=True)
            times = []
            for _ in range(3):
                t = time.perf_counter()
                predict_raw(model, volume, tiles, grid=True)
                times.append(time.perf_counter() - t)
            row[f"{label}_seconds_median"] = round(statistics.median(times), 2)
        row["speedup"] = round(row["bf16_seconds_median"] / row["int8_seconds_median"], 2)
        diff = np.abs(np.asarray(outputs["int8"]) - np.asarray(outputs["bf16"]))
        span = float(np.abs(np.asarray(outputs["bf16"])).max())
        row["largest_difference_of_output_range"] = round(float(diff.max()) / span, 4)
        row["mean_difference_of_output_range"] = round(float(diff.mean()) / span, 5)
        result[name] = row
        print(name, json.dumps(row), flush=True)
    (OUT / "result.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
