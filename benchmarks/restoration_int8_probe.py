"""Why restoration models do not offer ``--int8``: CARE and N2V on W2S, bf16 vs 8-bit.

Takes the CARE and N2V models of a ``care_w2s.py`` run (default
``benchmarks/out/care_w2s``), runs each network in 8-bit integers directly
(``engine.int8.Int8Network``, calibrated on 10 of its training inputs; ``deepscope
predict --int8`` refuses restoration models, so the task check is bypassed here) and
compares raw PSNR on the run's 9 test pairs, and how far the 8-bit output is from the
bf16 one in grey levels (0-255 data).

Usage (from the project root)::

    PYTHONPATH=src .venv/bin/python benchmarks/restoration_int8_probe.py [--run DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import tifffile
import torch
from skimage.metrics import peak_signal_noise_ratio as psnr

HERE = Path(__file__).parent


def main() -> None:
    """Compare bf16 and 8-bit outputs of the run's CARE and N2V models."""
    from deepscope.engine import int8
    from deepscope.workflow.int8_models import calibration_crop
    from deepscope.workflow.model_folder import load_model_folder
    from deepscope.workflow.predict import predict_raw

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run", type=Path, default=HERE / "out" / "care_w2s")
    a = p.parse_args()
    torch.set_num_threads(2)
    data = a.run / "data"
    train = [
        tifffile.imread(f).astype(np.float32)[None]
        for f in sorted((data / "train_noisy").glob("*.tif"))[:10]
    ]
    for name in ("care_run", "n2v_run"):
        model = load_model_folder(a.run / name / "model")
        crops = [calibration_crop(model.normalizer.normalize(t), model) for t in train]
        net8 = int8.Int8Network(model.network, int8.calibrate(model.network, crops))
        scores: dict[str, list[float]] = {"bf16": [], "int8": [], "mean_diff": [], "max_diff": []}
        for f in sorted((data / "test_noisy").glob("*.tif")):
            x = tifffile.imread(f).astype(np.float32)[None]
            target = tifffile.imread(data / "test_clean" / f.name).astype(np.float32)
            plain = predict_raw(model, x)[0]
            fast = predict_raw(model, x, network=net8)[0]
            scores["bf16"].append(psnr(target, plain, data_range=255))
            scores["int8"].append(psnr(target, fast, data_range=255))
            scores["mean_diff"].append(float(np.abs(plain - fast).mean()))
            scores["max_diff"].append(float(np.abs(plain - fast).max()))
        row = {
            "psnr_raw_bf16": round(float(np.mean(scores["bf16"])), 3),
            "psnr_raw_int8": round(float(np.mean(scores["int8"])), 3),
            "mean_abs_difference_grey_levels": round(float(np.mean(scores["mean_diff"])), 3),
            "largest_abs_difference_grey_levels": round(float(np.max(scores["max_diff"])), 2),
        }
        print(name, json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
