"""Prediction speed on CPU: PyTorch fp32 vs PyTorch bf16 (autocast) vs ONNX Runtime (fp32).

The whole deepscope prediction is timed (normalise → tiles of 512 → network → blend →
de-normalise), only the network call differs. Inputs: one W2S field (512×512) and a
2048×2048 mosaic of 16 W2S fields. The network is an N2V-sized U-Net (the default
config: depth 2, 32 base channels, batch norm); its weights do not change the speed, so
a trained model is used only when given (--model). Also reported: the largest difference
of each engine's result from PyTorch fp32, as a fraction of the result's range.

Usage (one command, from the project root):
    .venv/bin/python benchmarks/onnx_speed.py [--model runs/n2v1/model] [--repeats 3]

Prints a JSON summary (copy it to RESULTS.md with the machine's load, ``uptime``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from deepscope.config import config_from_dict
from deepscope.data.io import list_images, read_image
from deepscope.data.normalize import PercentileNormalizer
from deepscope.engine import performance
from deepscope.export.onnx_engine import use_onnx_engine
from deepscope.tasks import get_task
from deepscope.workflow.model_folder import load_model_folder, save_model_folder
from deepscope.workflow.predict import TileSettings, predict_array

HERE = Path(__file__).parent


def default_model(folder: Path, images: list[np.ndarray]) -> Path:
    """An N2V model folder with the default network and W2S normalisation statistics."""
    config = config_from_dict({"task": "n2v", "training": {"precision": "32"}})
    torch.manual_seed(0)
    net = get_task("n2v")(config).build_model(1)
    norm = PercentileNormalizer.fit([im[None] for im in images[:8]])
    return save_model_folder(
        folder / "model",
        config=config,
        weights=net.state_dict(),
        in_channels=1,
        input_axes="YX",
        normalizer=norm,
    )


def time_engine(model, image: np.ndarray, engine: str, repeats: int) -> tuple[float, np.ndarray]:  # noqa: ANN001
    """Median seconds of ``repeats`` predictions of ``image`` (after one warm-up)."""
    model.config.training.precision = "bf16" if engine == "pytorch-bf16" else "32"
    tiles = TileSettings(tile=512, overlap=32, batch_size=4)
    result = predict_array(model, image[None], tiles)  # warm-up (and ONNX session set-up)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = predict_array(model, image[None], tiles)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", type=Path, default=HERE.parent.parent / "shared/data/denoise_w2s")
    p.add_argument("--model", type=Path, help="a trained 2D one-channel model folder")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    files = list_images(args.data / "noisy")[:16]
    fields = [read_image(f).data.astype(np.float32) for f in files]
    mosaic = np.block([[fields[4 * r + c] for c in range(4)] for r in range(4)])
    tmp = Path(tempfile.mkdtemp(prefix="onnx-speed-"))
    folder = args.model or default_model(tmp, fields)
    inputs = {"w2s_512": fields[0], "mosaic_2048": mosaic}

    engines = ["pytorch-fp32", "pytorch-bf16", "onnxruntime-fp32"]
    results: dict[str, dict] = {}
    for name, image in inputs.items():
        results[name] = {}
        reference = None
        for engine in engines:
            model = load_model_folder(folder)
            if engine == "onnxruntime-fp32":
                use_onnx_engine(model)
            seconds, out = time_engine(model, image, engine, args.repeats)
            if reference is None:
                reference = out
            diff = float(np.max(np.abs(out - reference)) / max(np.ptp(reference), 1e-9))
            results[name][engine] = {
                "seconds": round(seconds, 3),
                "megapixels_per_s": round(image.size / 1e6 / seconds, 3),
                "max_diff_vs_fp32": float(f"{diff:.2e}"),
            }
            print(name, engine, results[name][engine], flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    summary = {
        "network": "N2V-sized U-Net: depth 2, 32 base channels, batch norm (default config)",
        "model": str(args.model) if args.model else "untrained (speed does not depend on it)",
        "tile": 512,
        "torch_threads": torch.get_num_threads(),
        "cpu_bf16": performance.cpu_supports_bf16(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "load_average": os.getloadavg(),
        "results": results,
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
