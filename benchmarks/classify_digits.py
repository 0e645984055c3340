"""Handwritten digit classification (MNIST subset): the course's first example.

Data (``../shared/data/classify_digits/mnist.npz``, see its PROVENANCE.txt): ``images``
(N, 28, 28) uint8 and ``labels`` 0–9, real MNIST samples (not microscopy; a sanity check
of the classification pipeline). The first ``--test`` images (default 2000, fixed) are
the test set, used only for the scores here; the others train (deepscope keeps 20 % of
them aside for validation, stratified).

Network: the ``small`` VGG-style CNN (3 blocks, 16 base channels, dropout 0.2) on the
28×28 images as they are; augmentation without flips or 90° rotations (a flipped 2 is
not a 2), small affine changes only. Target (issue 6): test accuracy ≥ 0.99.

Usage::

    .venv/bin/python benchmarks/classify_digits.py [--minutes 10] [--test 2000]

Writes ``benchmarks/out/classify_digits/`` (npz splits, run, QC report) and prints and
saves ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from deepscope.config import config_from_dict
from deepscope.workflow.model_folder import load_model_folder
from deepscope.workflow.qc import run_qc
from deepscope.workflow.training import train

HERE = Path(__file__).parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "classify_digits" / "mnist.npz"

CONFIG: dict[str, Any] = {
    "task": "classify",
    "data": {"flips": False, "rotations": False, "intensity_jitter": 0.1},
    "model": {"architecture": "small", "depth": 3, "base_channels": 16, "dropout": 0.2},
    "classify": {"image_size": [28, 28], "rotate_degrees": 10, "zoom": 0.1, "shift": 0.08},
    "training": {"epochs": 30, "batch_size": 64, "learning_rate": 2e-3, "checkpoint_every": 10},
}


def main() -> None:
    """Split, train, score; print a JSON summary."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--minutes", type=float, default=10.0, help="training time budget")
    ap.add_argument("--test", type=int, default=2000, help="images kept for the test set")
    ap.add_argument("--out", type=Path, default=HERE / "out" / "classify_digits")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with np.load(args.data) as f:
        images, labels = f["images"], f["labels"]
    names = np.array([str(i) for i in range(10)])
    np.savez(
        args.out / "test.npz",
        images=images[: args.test],
        labels=labels[: args.test],
        class_names=names,
    )
    np.savez(
        args.out / "train.npz",
        images=images[args.test :],
        labels=labels[args.test :],
        class_names=names,
    )
    cfg = json.loads(json.dumps(CONFIG))
    cfg["training"]["max_minutes"] = args.minutes
    run_dir = args.out / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    load_before = os.getloadavg()
    t0 = time.monotonic()
    result = train(config_from_dict(cfg), args.out / "train.npz", run_dir, show_bar=False)
    minutes = (time.monotonic() - t0) / 60
    s = run_qc(load_model_folder(result.model_dir), args.out / "test.npz", None, args.out / "qc")
    results = {
        "train_images": int(len(labels) - args.test),
        "test_images": args.test,
        "accuracy": round(s["accuracy"], 4),
        "macro_f1": round(s["macro_f1"], 4),
        "ece": round(s["ece"], 4),
        "epochs": result.epochs_trained,
        "best_epoch": s["best_epoch"],
        "train_minutes": round(minutes, 2),
        "stopped": result.stopped_because,
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
