"""U-Net membrane segmentation on ISBI 2012 EM slices, against an Otsu threshold.

Data (``../shared/data/em_membranes``, see its PROVENANCE.txt): ``images/NN.png`` (serial
section TEM, uint8 512×512) and ``masks/NN.png`` (0 = membrane, 255 = cell interior),
22 slices ``00``–``21``. The masks are used as they are: deepscope reads 0/255 as
classes 0 (membrane) and 1 (cell interior); membrane is the class of interest.

Split, fixed here so every run is comparable: the last slices ``TEST_SLICES`` (a
contiguous block, because neighbouring sections look alike) are only used for
evaluation; the model trains on the others.

Reported on the test slices, from the pixels of all of them together: membrane IoU and
Dice, mean IoU, pixel accuracy and the adapted Rand error (ISBI 2012 style: the true
cells are the connected regions of "cell interior"; membrane pixels of the truth are
ignored; scikit-image's ``adapted_rand_error``). The class map is scored at probability
threshold 0.5, fixed in the config (QC's best threshold is chosen on these test slices,
so it is not used). Cells of the model are found three ways, each scored: connected
regions of "cell interior" (``instances: components``), and cells grown from their sure
parts over the membranes (``instances: outlines``, the config's choice; seed threshold
chosen after training on the validation images, never on the test slices), the latter
also with test-time augmentation (8 flips/turns averaged, ``--tta``).
Baseline: Otsu's threshold on each test slice (dark pixels = membrane), cells as
connected regions.
Targets (issue 5): membrane IoU ≥ 0.80 and adapted Rand error ≤ 0.10 within 20 minutes of
CPU training.

Usage::

    .venv/bin/python benchmarks/em_isbi.py [--minutes 20] [--data ../shared/data/em_membranes]

Writes ``benchmarks/out/em_isbi/`` (run, QC report) and prints a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepscope.config import config_from_dict
from deepscope.data.io import read_image
from deepscope.engine import performance
from deepscope.tasks.semantic import DEFAULT_SEED_THRESHOLD
from deepscope.workflow.model_folder import load_model_folder
from deepscope.workflow.predict import TileSettings, apply_tuned_settings, predict_raw
from deepscope.workflow.qc import run_qc
from deepscope.workflow.qc_segmentation import adapted_rand, confusion_matrix, scores_from_confusion
from deepscope.workflow.semantic_thresholds import SEED_THRESHOLDS
from deepscope.workflow.training import train

HERE = Path(__file__).parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "em_membranes"
TEST_SLICES = ("17", "18", "19", "20", "21")
"""Slices kept for evaluation only (5 of 22); slices 00–16 train the model."""
NAMES = ["membrane", "cell interior"]
FOLDERS = ("train_images", "train_masks", "test_images", "test_masks")

CONFIG: dict[str, Any] = {
    "task": "semantic",
    # 4 of the 17 training slices validate: the seed threshold of the grown cells is
    # chosen on them (2 slices could not tell thresholds apart; benchmarks/RESULTS.md).
    "data": {"patch_size": [128, 128], "spatial_dims": 2, "val_fraction": 0.25},
    "model": {"depth": 3, "base_channels": 16},
    "training": {
        "epochs": 1000,
        "patches_per_epoch": 256,
        "batch_size": 8,
        "val_patches": 64,
        "learning_rate": 1e-3,
        "checkpoint_every": 1000,
        "seed": 0,
    },
    "semantic": {
        "class_names": NAMES,
        "class_weights": "auto",
        "instances": "outlines",
        "threshold": 0.5,
    },
}


def split(data: Path, out: Path) -> dict[str, Path]:
    """Link the slices into train/test folders (nothing is copied)."""
    folders = {k: out / k for k in FOLDERS}
    for folder in folders.values():
        folder.mkdir(parents=True)
    for image in sorted((data / "images").glob("*.png")):
        part = "test" if image.stem in TEST_SLICES else "train"
        (folders[f"{part}_images"] / image.name).symlink_to(image.resolve())
        mask = (data / "masks" / image.name).resolve()
        (folders[f"{part}_masks"] / image.name).symlink_to(mask)
    return folders


def otsu_baseline(images: Path, masks: Path) -> dict[str, Any]:
    """Score Otsu's threshold per slice (pixels at or below it are membrane)."""
    from skimage.filters import threshold_otsu
    from skimage.measure import label

    cm = np.zeros((2, 2), np.int64)
    ares = []
    for path in sorted(images.glob("*.png")):
        image = read_image(path).data.astype(np.float32)
        truth = (read_image(masks / path.name).data > 0).astype(np.uint8)
        pred = (image > threshold_otsu(image)).astype(np.uint8)
        cm += confusion_matrix(truth, pred, 2)
        ares.append(adapted_rand(label(truth, connectivity=1), label(pred, connectivity=1)))
    return _scores(scores_from_confusion(cm, NAMES), float(np.mean(ares)))


def _scores(s: dict[str, Any], are: float | None) -> dict[str, Any]:
    return {
        "membrane_iou": round(s["iou"]["membrane"], 4),
        "membrane_dice": round(s["dice"]["membrane"], 4),
        "mean_iou": round(s["mean_iou"], 4),
        "pixel_accuracy": round(s["pixel_accuracy"], 4),
        "adapted_rand_error": None if are is None else round(are, 4),
    }


def cell_scores(
    model: Any, images: Path, masks: Path, tiles: TileSettings | None = None
) -> dict[str, float]:
    """Mean adapted Rand error of the model's cells: connected regions vs grown outlines."""
    from skimage.measure import label

    from deepscope.tasks.semantic import grow_from_outlines

    apply_tuned_settings(model)
    seed = model.task.seed_threshold or DEFAULT_SEED_THRESHOLD
    comps: list[float] = []
    # every threshold of the test curve, and the one in use (grown once each)
    curve: dict[float, list[float]] = {t: [] for t in (*SEED_THRESHOLDS, seed)}
    for path in sorted(images.glob("*.png")):
        image = read_image(path).data.astype(np.float32)[None]
        truth = label(read_image(masks / path.name).data > 0, connectivity=1)
        probs = predict_raw(model, image, tiles)
        comps.append(adapted_rand(truth, label(probs[1] > 0.5, connectivity=1)))
        for t, errors in curve.items():
            errors.append(adapted_rand(truth, grow_from_outlines(probs[1], t)))
    mean = {t: round(float(np.mean(v)), 4) for t, v in curve.items()}
    by_seed = {str(t): mean[t] for t in SEED_THRESHOLDS}
    best = min(by_seed, key=by_seed.get)
    return {
        "adapted_rand_error_components": round(float(np.mean(comps)), 4),
        "adapted_rand_error_outlines": mean[seed],
        # ISBI 2012 reported the best score over thresholds, i.e. chosen on the test
        # slices themselves: shown for comparison with published numbers, not a held-out
        # result (the line above, with the seed threshold chosen on validation, is).
        "outlines_by_seed_threshold_on_test": by_seed,
        "outlines_best_seed_threshold_on_test": {
            "seed_threshold": float(best),
            "adapted_rand_error": by_seed[best],
        },  # fmt: skip
    }


def main() -> None:
    """Run the benchmark and print its JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="training budget")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=HERE / "out" / "em_isbi")
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=CONFIG["data"]["val_fraction"],
        help="share of the training slices held out for validation (and for choosing the "
        "seed threshold)",
    )
    parser.add_argument(
        "--lr-patience",
        type=int,
        help="epochs without a better validation loss before the learning rate is halved "
        "(default: the engine's)",
    )
    parser.add_argument(
        "--base-channels",
        type=int,
        default=CONFIG["model"]["base_channels"],
        help="channels of the U-Net's first level (doubled at each level)",
    )
    parser.add_argument(
        "--reuse-run",
        action="store_true",
        help="score the model already trained in OUT/run again (no training; the training "
        "figures are copied from OUT/benchmark.json)",
    )
    args = parser.parse_args()

    if args.reuse_run:
        folders = {k: args.out / "data" / k for k in FOLDERS}
        model_dir = args.out / "run" / "model"
        training = json.loads((args.out / "benchmark.json").read_text())["training"]
    else:
        shutil.rmtree(args.out, ignore_errors=True)
        folders = split(args.data, args.out / "data")
        training_config = {**CONFIG["training"], "max_minutes": args.minutes}
        if args.lr_patience:
            training_config["lr_patience"] = args.lr_patience
        data_config = {**CONFIG["data"], "val_fraction": args.val_fraction}
        model_config = {**CONFIG["model"], "base_channels": args.base_channels}
        config = config_from_dict(
            {**CONFIG, "data": data_config, "model": model_config, "training": training_config}
        )
        t0 = time.monotonic()
        result = train(
            config,
            folders["train_images"],
            args.out / "run",
            folders["train_masks"],
            show_bar=False,
        )
        model_dir = result.model_dir
        training = {
            "budget_minutes": args.minutes,
            "minutes": round((time.monotonic() - t0) / 60, 2),
            "epochs": result.epochs_trained,
            "stopped_because": result.stopped_because,
            "best_val_loss": round(result.best_val_loss, 4),
        }
    model = load_model_folder(model_dir)
    # overwrite: with --reuse-run, the reports of the run's earlier scoring are replaced
    summary = run_qc(
        model, folders["test_images"], folders["test_masks"], args.out / "qc", overwrite=True
    )
    scores = _scores(summary, summary["adapted_rand_error"])
    scores.update(cell_scores(model, folders["test_images"], folders["test_masks"]))
    tta = TileSettings(tta=True)
    summary_tta = run_qc(
        model,
        folders["test_images"],
        folders["test_masks"],
        args.out / "qc_tta",
        tiles=tta,
        overwrite=True,
    )
    scores_tta = _scores(summary_tta, summary_tta["adapted_rand_error"])
    scores_tta.update(cell_scores(model, folders["test_images"], folders["test_masks"], tta))
    otsu = otsu_baseline(folders["test_images"], folders["test_masks"])
    report = {
        "benchmark": "em_isbi (ISBI 2012 membranes)",
        "split": {
            "train": sorted(p.stem for p in folders["train_images"].glob("*.png")),
            "test": list(TEST_SLICES),
            "validation_fraction_of_train": model.config.data.val_fraction,
        },
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "accelerator": performance.choose_accelerator(),
        },
        "training": training,
        "seed_threshold": json.loads((model_dir / "thresholds.json").read_text()),
        "model": scores,
        "model_tta": scores_tta,
        "otsu": otsu,
        "model_best_threshold_on_test": summary.get("threshold", {}).get("best"),
        "targets": {"membrane_iou": ">= 0.80", "adapted_rand_error": "<= 0.10"},
        "targets_met": {
            name: bool(sc["membrane_iou"] >= 0.80 and sc["adapted_rand_error_outlines"] <= 0.10)
            for name, sc in (("model", scores), ("model_tta", scores_tta))
        },
        "qc_report": str(args.out / "qc" / "report.html"),
    }
    (args.out / "benchmark.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
