"""The reference: the ``stardist`` package (TensorFlow) trained on the nuclei benchmark's split.

Run with the TF venv's Python, never the project's (TF is not a deepscope dependency)::

    PYTHONPATH= /work/stardist-tf-venv/bin/python benchmarks/nuclei_dsb_tf.py --minutes 20

(the venv: ``python3.11 -m venv /work/stardist-tf-venv && /work/stardist-tf-venv/bin/pip
install tensorflow-cpu stardist``). It answers one question: on the same 32 TRAIN images,
the same time budget and the same machine, what does the reference implementation reach
on the 11 TEST images of ``benchmarks/nuclei_split.json``? Everything is the package's
default (``Config2D(n_rays=32, grid=(2, 2))``: U-Net depth 3, 32 base channels, batch 4,
learning rate 3e-4, 90 % of patches on objects), with its example notebook's augmenter
(flips, 90-degree turns, intensity scale and shift) and per-image percentile normalisation
(1-99.8 %), except two settings the data force: 160² patches (the default 256² does not fit
the 162-pixel-wide training image) and a wall-clock budget (a Keras callback stops at
``--minutes``). Images are fed grey (the mean of R, G, B), as in ``nuclei_dsb.py``. 5 of the
32 TRAIN images (seed 0) validate and tune the thresholds (``optimize_thresholds``).
Scores: ``stardist.matching.matching_dataset`` over all test objects together, per image
kind, at IoU 0.5 and 0.7 -- the same function ``nuclei_dsb.py`` scores deepscope with.
Results: ``benchmarks/out/nuclei_dsb_tf/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DEEPSCOPE_DATA", ROOT / ".." / "shared" / "data")) / "nuclei2d"
SPLIT = ROOT / "benchmarks" / "nuclei_split.json"
OUT = ROOT / "benchmarks" / "out" / "nuclei_dsb_tf"
THRESHOLDS = (0.5, 0.7)


def grey(name: str) -> np.ndarray:
    """The picture as one grey plane: the mean of its colour channels (alpha dropped)."""
    img = np.asarray(iio.imread(DATA / "images" / f"{name}.png"), np.float32)
    return img[..., :3].mean(axis=-1) if img.ndim == 3 else img


def augmenter(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The stardist example notebook's augmentation: flips/turns, intensity change."""
    k = np.random.randint(4)
    x, y = np.rot90(x, k), np.rot90(y, k)
    for axis in (0, 1):
        if np.random.rand() > 0.5:
            x, y = np.flip(x, axis), np.flip(y, axis)
    x = x * np.random.uniform(0.6, 2) + np.random.uniform(-0.2, 0.2)
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


def main() -> None:
    """Train, tune, predict and score (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--minutes", type=float, default=20.0, help="training time budget")
    p.add_argument("--patch", type=int, default=160, help="square training patch size")
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args()

    import tensorflow as tf
    from csbdeep.utils import normalize
    from stardist.matching import matching_dataset
    from stardist.models import Config2D, StarDist2D
    from stardist.utils import fill_label_holes

    split = json.loads(SPLIT.read_text())
    kinds = split["kinds"]
    norm = lambda im: normalize(im, 1, 99.8, axis=(0, 1))  # noqa: E731
    X = [norm(grey(n)) for n in split["train"]]
    Y = [fill_label_holes(tifffile.imread(DATA / "masks" / f"{n}.tif")) for n in split["train"]]
    rng = np.random.RandomState(0)
    order = rng.permutation(len(X))
    val, trn = order[:5], order[5:]
    conf = Config2D(
        n_rays=32,
        grid=(2, 2),
        n_channel_in=1,
        train_patch_size=(a.patch, a.patch),
        train_tensorboard=False,  # TensorBoard is not installed
    )
    a.out.mkdir(parents=True, exist_ok=True)
    model = StarDist2D(conf, name="model", basedir=str(a.out / "work"))
    model.prepare_for_training()
    started = time.time()

    class Budget(tf.keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):  # noqa: D102
            if time.time() - started > a.minutes * 60:
                self.model.stop_training = True

    model.callbacks.append(Budget())
    hist = model.train(
        [X[i] for i in trn],
        [Y[i] for i in trn],
        validation_data=([X[i] for i in val], [Y[i] for i in val]),
        augmenter=augmenter,
        epochs=1000,
        seed=0,
    )
    train_minutes = (time.time() - started) / 60
    tuned = model.optimize_thresholds([X[i] for i in val], [Y[i] for i in val])

    test = split["test"]
    truths = [tifffile.imread(DATA / "masks" / f"{n}.tif") for n in test]
    t0 = time.time()
    preds = [model.predict_instances(norm(grey(n)))[0] for n in test]
    per_image = (time.time() - t0) / len(test)
    groups: dict[str, list[int]] = {}
    for i, n in enumerate(test):
        groups.setdefault(kinds[n], []).append(i)
    groups["all"] = list(range(len(test)))
    scores = {}
    for group, idx in groups.items():
        ms = matching_dataset(
            [truths[i] for i in idx],
            [preds[i] for i in idx],
            thresh=list(THRESHOLDS),
            show_progress=False,
        )
        scores[group] = {
            str(t): {
                k: round(float(getattr(m, k)), 4) for k in ("f1", "accuracy", "precision", "recall")
            }
            for t, m in zip(THRESHOLDS, ms, strict=True)
        }
    results = {
        "training_minutes": round(train_minutes, 2),
        "epochs": len(hist.history["loss"]),
        "val_loss": [round(float(v), 4) for v in hist.history["val_loss"]],
        "validation_images": [split["train"][i] for i in val],
        "thresholds": {k: float(v) for k, v in tuned.items()},
        "patch": a.patch,
        "scores": scores,
        "seconds_per_image": round(per_image, 3),
        "load": os.getloadavg(),
    }
    (a.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(scores["all"]), json.dumps({k: v["0.5"]["f1"] for k, v in scores.items()}))


if __name__ == "__main__":
    main()
