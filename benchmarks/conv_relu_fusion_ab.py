"""A/B: prediction with and without the fused convolution + ReLU of ``engine.inference``.

Same process, alternating arms, median of ``--repeats`` after a warm-up each:
``predict_raw`` (normalisation, tiled network, de-normalisation) of

- the StarDist speed benchmark's 1024×1024 mosaic (``stardist_speed.py make-image``)
  with the shipped ``nuclei`` model and a random-weight 16-channel StarDist model;
- a 512×512 W2S field with a random-weight N2V-sized U-Net (depth 2, 32 channels).

Also checks that both arms give the same output (largest absolute difference).

Run from the project root, nothing else running::

    PYTHONPATH=src .venv/bin/python benchmarks/conv_relu_fusion_ab.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
W2S = ROOT / ".." / "shared" / "data" / "denoise_w2s" / "noisy" / "101_0.tif"


def main() -> None:
    """Print seconds per prediction for each model, fused and not."""
    from stardist_speed import OUT, _random_model_folder, random_model_folder

    import deepscope.engine.inference as inference
    from deepscope.workflow.model_folder import load_model_folder
    from deepscope.workflow.predict import TileSettings, predict_raw
    from deepscope.workflow.pretrained import resolve_model

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    mosaic = tifffile.imread(OUT / "mosaic.tif").astype(np.float32)[None]
    cases = {
        "stardist nuclei (shipped), 1024x1024": (resolve_model("nuclei"), mosaic),
        "stardist 16 channels (random), 1024x1024": (_random_model_folder(), mosaic),
        "n2v depth 2, 32 channels (random), W2S 512x512": (
            random_model_folder(
                {"task": "n2v", "model": {"depth": 2, "base_channels": 32}},
                OUT / "random_n2v_model",
                image_max=255.0,
            ),
            tifffile.imread(W2S).astype(np.float32)[None],
        ),
    }
    fuse = inference.fuse_conv_relu
    results = {}
    for name, (folder, image) in cases.items():
        model = load_model_folder(folder)
        times: dict[str, list[float]] = {"separate": [], "fused": []}
        outputs = {}
        for _ in range(a.repeats):
            for arm in times:
                inference.fuse_conv_relu = fuse if arm == "fused" else (lambda net, dtype: 0)
                inference._CACHE.clear()
                outputs[arm] = predict_raw(model, image, TileSettings())  # warm-up + prepare
                t0 = time.perf_counter()
                predict_raw(model, image, TileSettings())
                times[arm].append(time.perf_counter() - t0)
        inference.fuse_conv_relu = fuse
        med = {arm: round(statistics.median(t), 4) for arm, t in times.items()}
        results[name] = {
            **med,
            "speed-up": round(med["separate"] / med["fused"], 3),
            "max_abs_difference": float(np.abs(outputs["fused"] - outputs["separate"]).max()),
        }
        print(name, json.dumps(results[name]), flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
