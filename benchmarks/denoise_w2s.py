"""Noise2Void on the W2S widefield set: quality, training speed, prediction speed, memory.

Trains N2V on the noisy single frames only (self-supervised, as N2V is used), then
scores model, noisy input and the best Gaussian filter against the 400-frame averages.

Usage:
    .venv/bin/python benchmarks/denoise_w2s.py [--minutes 15] [--data ../shared/data/denoise_w2s]

Writes benchmarks/out/w2s/{run,qc}/ and prints a JSON summary (copy it to RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from restoration_tta import tta_scores
from torch.utils.flop_counter import FlopCounterMode

from deepscope.config import config_from_dict
from deepscope.data.io import list_images
from deepscope.engine import performance
from deepscope.tasks import get_task
from deepscope.workflow.model_folder import load_model_folder
from deepscope.workflow.predict import predict_array
from deepscope.workflow.qc import run_qc
from deepscope.workflow.training import load_images, train

HERE = Path(__file__).parent


def training_flops_per_patch(cfg) -> float:
    """FLOPs of one forward + backward pass per patch (counted by torch)."""
    task = get_task("n2v")(cfg)
    model = task.build_model(1)
    x = torch.randn(4, 1, *cfg.data.patch_size)
    with FlopCounterMode(display=False) as counter:
        task.training_loss(model, {"input": x}).backward()
    return counter.get_total_flops() / 4


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", type=Path, default=HERE.parent.parent / "shared/data/denoise_w2s")
    p.add_argument("--minutes", type=float, default=15.0)
    p.add_argument("--out", type=Path, default=HERE / "out/w2s")
    p.add_argument("--percentage", type=float, default=None, help="masked pixel percentage")
    p.add_argument("--variant", default="n2v")
    a = p.parse_args()
    shutil.rmtree(a.out, ignore_errors=True)
    n2v = {"variant": a.variant}
    if a.percentage:
        n2v["masked_pixel_percentage"] = a.percentage
    cfg = config_from_dict(
        {
            "task": "n2v",
            "n2v": n2v,
            "data": {"patch_size": [64, 64]},
            "model": {"depth": 2, "base_channels": 32},
            "training": {
                "epochs": 1000,
                "max_minutes": a.minutes,
                "patches_per_epoch": 2048,
                "batch_size": 64,
                "checkpoint_every": 5,
            },
        }
    )
    t0 = time.monotonic()
    result = train(cfg, a.data / "noisy", a.out / "run", show_bar=False)
    train_s = time.monotonic() - t0
    hist = [r for r in (a.out / "run/metrics.csv").read_text().splitlines()[1:]]
    epoch_s = [float(r.split(",")[4]) for r in hist]
    patches_per_s = cfg.training.patches_per_epoch / float(np.median(epoch_s))
    flops = training_flops_per_patch(cfg)

    model = load_model_folder(result.model_dir)
    imgs, _ = load_images(list_images(a.data / "noisy")[:12], None, 2)
    predict_array(model, imgs[0])  # warm-up
    t1 = time.monotonic()
    for im in imgs:
        predict_array(model, im)
    pred_s = time.monotonic() - t1
    mpix = sum(im[0].size for im in imgs) / 1e6 / pred_s

    summary = run_qc(model, a.data / "noisy", a.data / "clean", a.out / "qc")
    out = {
        "machine": f"{platform.machine()}, {performance.available_cores()} cores",
        "torch": torch.__version__,
        "allocator": performance.tune_allocator(),
        "precision": performance.choose_precision(cfg.training.precision, "cpu"),
        "train_minutes": round(train_s / 60, 2),
        "epochs": result.epochs_trained,
        "stopped_because": result.stopped_because,
        "train_patches_per_s_median_epoch": round(patches_per_s, 1),
        "train_gflop_per_patch": round(flops / 1e9, 3),
        "achieved_gflop_per_s": round(patches_per_s * flops / 1e9, 1),
        "predict_mpix_per_s": round(mpix, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "model": summary["model"],
        "model_tta": tta_scores(model, a.data / "noisy", a.data / "clean"),
        "input": summary["input"],
        "gaussian": summary["gaussian"],
        "checkpoints": summary["checkpoints"],
    }
    print(json.dumps(out, indent=2))
    (a.out / "benchmark.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
