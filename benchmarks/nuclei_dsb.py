"""Nuclei benchmark on ``../shared/data/nuclei2d`` (DSB 2018 stage 1, BBBC038) — issue 4.

Split: ``benchmarks/nuclei_split.json`` (fixed; 32 train / 11 test images, stratified by
image kind — fluorescence, brightfield, H&E — see ``benchmarks/nuclei_split.py``).

What is compared on the 11 TEST images (F1 and accuracy = TP/(TP+FP+FN) at IoU 0.5 and
0.7, objects of all test images counted together, per kind and overall):

1. ``trained``: deepscope StarDist trained here on the 32 TRAIN images within a time
   budget: one model for all kinds, fed grey images (the mean of R, G, B). Why grey:
   deepscope reads the grey fluorescence PNGs (stored as RGB with equal channels) as one
   channel and the colour ones as three, and refuses a mix (``validate`` says so); a
   user converts them to one kind, and grey is what deepscope itself feeds a
   one-channel model given a colour picture (``StarDistTask.adapt_channels``), so the
   shipped ``nuclei`` model and this one see test pictures the same way. Per-image
   percentile normalisation (deepscope's StarDist default). The probability and NMS
   thresholds are tuned on the validation images by ``deepscope train``.
2. ``baseline``: Otsu threshold + distance-transform watershed (scikit-image) on the
   grey image (mean of R, G, B), with the polarity chosen per image (the smaller side
   of the Otsu threshold is the nuclei, so dark nuclei on bright H&E/brightfield work),
   small-object removal and hole filling. No parameter is tuned on the test images.
3. ``shipped``: the pretrained ``nuclei`` model shipped in the package (``deepscope
   predict nuclei``), if present: a one-channel model, given the mean of R, G, B.

Run from the project root (one command; ``--minutes`` is the training budget)::

    .venv/bin/python benchmarks/nuclei_dsb.py --minutes 20

Results: ``benchmarks/out/nuclei_dsb/results.json`` and a deepscope QC report of the
trained model on the test images, ``benchmarks/out/nuclei_dsb/qc_trained/report.html``.
``--skip-training --model PATH`` re-scores an existing model folder; ``--tta`` also scores
the models with test-time augmentation (8 flips and turns averaged, ``predict --tta``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DEEPSCOPE_DATA", ROOT / ".." / "shared" / "data")) / "nuclei2d"
SPLIT = ROOT / "benchmarks" / "nuclei_split.json"
OUT = ROOT / "benchmarks" / "out" / "nuclei_dsb"
THRESHOLDS = (0.5, 0.7)

# The run of 2026-11-29 (session 6) that matched and passed the stardist package (TF) on
# this split: StarDist's defaults in deepscope since then (160-pixel patches, depth 3,
# 32 base and 128 feature channels, batch 4, 400 patches per epoch, learning rate 3e-4,
# intensity scaling), with 20 validation patches (the default is 32). The earlier recipe
# (96-pixel patches, 16 base channels, batch 16, 256 patches per epoch beside 256
# validation patches, inversion) scored 0.665 F1@0.5; see benchmarks/RESULTS.md.
CONFIG = {
    "task": "stardist",
    "data": {
        "patch_size": [160, 160],
        "val_fraction": 0.15,
        "intensity_jitter": 0.5,
    },
    "model": {"depth": 3, "base_channels": 32},
    "stardist": {"n_rays": 32, "grid": [2, 2], "feature_channels": 128},
    "training": {
        "epochs": 1000,
        "patches_per_epoch": 400,
        "batch_size": 4,
        "val_patches": 20,
        "learning_rate": 3e-4,
        "lr_patience": 40,
        "checkpoint_every": 20,
        "seed": 3,
    },
}


def _load() -> tuple[dict, list[str]]:
    split = json.loads(SPLIT.read_text())
    return split, split["test"]


def prepare(work: Path, split: dict) -> tuple[Path, Path]:
    """Write the TRAIN images as grey TIFFs and link their masks into ``work/train``."""
    images, masks = work / "train" / "images", work / "train" / "masks"
    for folder in (images, masks):
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
    for name in split["train"]:
        tifffile.imwrite(images / f"{name}.tif", grey(read_rgb(name)))
        (masks / f"{name}.tif").symlink_to((DATA / "masks" / f"{name}.tif").resolve())
    return images, masks


def grey(image_cf: np.ndarray) -> np.ndarray:
    """One grey plane: the mean of the channels (what deepscope feeds a 1-channel model).

    With ``--polarity auto`` (probe, ``POLARITY``), pictures with a bright background
    (brightfield, H&E: dark nuclei) are inverted, so that every kind shows bright nuclei
    on a dark background, as fluorescence does.
    """
    plane = np.asarray(image_cf, np.float32).mean(axis=0)
    if POLARITY == "auto":
        lo, hi = np.percentile(plane, [1.0, 99.8])
        if np.median(plane) > (lo + hi) / 2:  # bright background: absorption picture
            plane = lo + hi - plane
    return plane


POLARITY = "as-is"


def train_model(
    work: Path, minutes: float, split: dict, overrides: dict | None = None
) -> tuple[Path, dict]:
    """Train deepscope StarDist on the TRAIN images within ``minutes``.

    ``overrides`` maps ``section.key`` to a value replacing the one of ``CONFIG``.
    """
    from deepscope.config import config_from_dict
    from deepscope.workflow.training import train

    images, masks = prepare(work, split)
    cfg = json.loads(json.dumps(CONFIG))
    for dotted, value in (overrides or {}).items():
        section, key = dotted.split(".")
        cfg.setdefault(section, {})[key] = value
    cfg["training"]["max_minutes"] = minutes
    run = work / "run"
    if run.exists():
        shutil.rmtree(run)
    t0 = time.time()
    result = train(config_from_dict(cfg), images, run, masks, show_bar=False)
    info = {
        "minutes_total_incl_threshold_tuning": round((time.time() - t0) / 60, 2),
        "training_minutes": round(result.minutes, 2),
        "epochs": result.epochs_trained,
        "stopped_because": result.stopped_because,
        "best_val_loss": result.best_val_loss,
        "config": cfg,
        "load_after_training": os.getloadavg(),
    }
    return run / "model", info


def time_epochs(label: str, run: Path, epochs: int = 8) -> None:
    """Train ``epochs`` epochs of ``CONFIG`` into ``run`` and print their speed and losses.

    For engine A/Bs: the training images are those this script writes to
    ``OUT/work/train``; prints ``label``, the median seconds per epoch (the first epoch
    left out) and every validation loss (which an A/B of equal arithmetic must repeat).
    """
    import csv
    import statistics

    from deepscope.config import config_from_dict
    from deepscope.workflow.training import train

    cfg = json.loads(json.dumps(CONFIG))
    cfg["training"].update({"epochs": epochs, "max_minutes": 60.0, "checkpoint_every": 1000})
    shutil.rmtree(run, ignore_errors=True)
    d = OUT / "work" / "train"
    train(config_from_dict(cfg), d / "images", run, d / "masks", show_bar=False, log=lambda m: None)
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    print(
        label,
        "median s/epoch",
        round(statistics.median(float(r["seconds"]) for r in rows[1:]), 3),
        "val losses",
        [round(float(r["val_loss"]), 4) for r in rows],
    )


def read_rgb(name: str) -> np.ndarray:
    """A test picture as deepscope reads it, channel first (C, Y, X) float32."""
    from deepscope.data.axes import to_channel_first
    from deepscope.data.io import read_image

    img = read_image(DATA / "images" / f"{name}.png")
    return to_channel_first(img.data, img.axes, 2).astype(np.float32)


def otsu_watershed(image_cf: np.ndarray, min_size: int = 15, min_distance: int = 4) -> np.ndarray:
    """Classical baseline: Otsu + distance-transform watershed on the grey image.

    Parameters
    ----------
    image_cf : numpy.ndarray
        (C, Y, X) image; the mean over channels is used.
    min_size : int
        Objects (and holes) smaller than this many pixels are removed (filled).
    min_distance : int
        Smallest distance between two seeds (maxima of the distance transform).

    Returns
    -------
    numpy.ndarray
        Label image (Y, X).
    """
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.filters import gaussian, threshold_otsu
    from skimage.morphology import remove_small_holes, remove_small_objects
    from skimage.segmentation import watershed

    grey = gaussian(image_cf.mean(axis=0), sigma=1, preserve_range=True)
    fg = grey > threshold_otsu(grey)
    if fg.mean() > 0.5:  # nuclei are the smaller side: dark nuclei on a bright background
        fg = ~fg
    fg = remove_small_holes(remove_small_objects(fg, max_size=min_size - 1), max_size=min_size - 1)
    dist = ndi.distance_transform_edt(fg)
    regions, _ = ndi.label(fg)
    peaks = peak_local_max(
        gaussian(dist, 1), min_distance=min_distance, labels=regions, exclude_border=False
    )
    markers = np.zeros(fg.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    # every region gets at least one seed
    missing = np.setdiff1d(np.unique(regions[fg]), np.unique(regions[markers > 0]))
    for r in missing:
        markers[regions == r] = markers.max() + 1
    return watershed(-dist, markers, mask=fg).astype(np.int32)


def score(truths: dict, preds: dict, kinds: dict) -> dict:
    """F1 and accuracy at IoU 0.5 / 0.7, per kind and for all test images."""
    from deepscope.workflow.qc_instance import match_dataset

    groups: dict[str, list[str]] = {}
    for name in truths:
        groups.setdefault(kinds[name], []).append(name)
    groups["all"] = list(truths)
    out = {}
    for group, names in groups.items():
        m = match_dataset([truths[n] for n in names], [preds[n] for n in names], THRESHOLDS)
        out[group] = {"images": len(names), "objects": int(m["0.5"]["n_true"])}
        for t, v in m.items():
            out[group][t] = {
                k: round(float(v[k]), 4) for k in ("f1", "accuracy", "precision", "recall")
            }
            out[group][t].update({k: int(v[k]) for k in ("tp", "fp", "fn")})
    return out


def predict_model(model_dir: Path, names: list[str], tta: bool = False) -> tuple[dict, float]:
    """Labels of every test image with a deepscope model folder; seconds per image.

    ``tta``: average the network's output over the 8 flips and turns (``--tta``).
    """
    from deepscope.workflow.model_folder import load_model_folder
    from deepscope.workflow.predict import TileSettings, predict_array

    model = load_model_folder(model_dir)
    preds, t0 = {}, time.time()
    for name in names:
        picture = grey(read_rgb(name))[None] if polarity_fed(model_dir) else read_rgb(name)
        preds[name] = predict_array(model, picture, TileSettings(tta=tta))[0]
    return preds, (time.time() - t0) / max(1, len(names))


def polarity_fed(model_dir: Path) -> bool:
    """Whether ``model_dir`` was trained here with ``--polarity auto`` (and is fed so)."""
    return POLARITY == "auto" and "pretrained" not in Path(model_dir).resolve().parts


def tta_scores(model_dir: Path, names: list[str], truths: dict, kinds: dict, label: str) -> dict:
    """Scores of a model with test-time augmentation (``--tta``), printed under ``label``."""
    preds, per_image = predict_model(model_dir, names, tta=True)
    out = {"scores": score(truths, preds, kinds), "seconds_per_image": round(per_image, 3)}
    print(f"{label} --tta", json.dumps(out["scores"]["all"]))
    return out


def main() -> None:
    """Run the benchmark (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--minutes", type=float, default=20.0, help="training time budget")
    p.add_argument("--work", type=Path, help="training folder (default: OUT/work)")
    p.add_argument("--skip-training", action="store_true")
    p.add_argument("--model", type=Path, help="model folder to score (default: the one trained)")
    p.add_argument("--patch", type=int, help="square training patch size (default: CONFIG's)")
    p.add_argument("--batch", type=int, help="patches per training step (default: CONFIG's)")
    p.add_argument("--patches-per-epoch", type=int, help="patches per epoch (default: CONFIG's)")
    p.add_argument("--base-channels", type=int, help="U-Net base channels (default: CONFIG's)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="any other setting of CONFIG, VALUE in JSON (e.g. data.invert=false)",
    )
    p.add_argument("--out", type=Path, default=OUT, help="results folder")
    p.add_argument(
        "--polarity",
        choices=["as-is", "auto"],
        default="as-is",
        help="probe: 'auto' inverts bright-background pictures (H&E, brightfield) for the "
        "model trained here, in training and in scoring (the shipped model is fed as-is)",
    )
    p.add_argument(
        "--tta",
        action="store_true",
        help="also score the trained and shipped models with test-time augmentation",
    )
    a = p.parse_args()
    global POLARITY
    POLARITY = a.polarity
    out = a.out
    work = a.work or out / "work"
    overrides: dict = {}
    if a.patch:
        overrides["data.patch_size"] = [a.patch, a.patch]
    if a.batch:
        overrides["training.batch_size"] = a.batch
    if a.patches_per_epoch:
        overrides["training.patches_per_epoch"] = a.patches_per_epoch
    if a.base_channels:
        overrides["model.base_channels"] = a.base_channels
    for item in a.set:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    split, test = _load()
    kinds = split["kinds"]
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "split": {k: v for k, v in split["counts"].items()},
        "uptime_start": os.getloadavg(),
    }

    truths = {n: tifffile.imread(DATA / "masks" / f"{n}.tif").astype(np.int32) for n in test}
    t0 = time.time()
    base = {n: otsu_watershed(read_rgb(n)) for n in test}
    results["baseline"] = {
        "scores": score(truths, base, kinds),
        "seconds_per_image": round((time.time() - t0) / len(test), 3),
    }
    print("baseline", json.dumps(results["baseline"]["scores"]["all"]))

    model_dir = a.model
    if not a.skip_training:
        model_dir, info = train_model(work, a.minutes, split, overrides)
        results["training"] = info
    if model_dir is not None:
        preds, per_image = predict_model(model_dir, test)
        results["trained"] = {
            "model": str(model_dir),
            "thresholds": json.loads((model_dir / "thresholds.json").read_text())
            if (model_dir / "thresholds.json").exists()
            else None,
            "scores": score(truths, preds, kinds),
            "seconds_per_image": round(per_image, 3),
            "load": os.getloadavg(),
        }
        print("trained", json.dumps(results["trained"]["scores"]["all"]))
        if a.tta:
            results["trained_tta"] = tta_scores(model_dir, test, truths, kinds, "trained")
        from deepscope.workflow.qc_instance import InstanceCase, evaluate_instances

        cases = [
            InstanceCase(f"{n[:12]} ({kinds[n]})", read_rgb(n), truths[n], preds[n]) for n in test
        ]
        evaluate_instances(
            cases,
            out / "qc_trained",
            history_csv=model_dir / "history.csv",
            title="nuclei2d test images — deepscope StarDist trained on the train split",
            model_info={"model folder": str(model_dir)},
        )
    shipped: Path | None = None
    try:
        from deepscope.workflow.pretrained import resolve_model

        shipped = Path(resolve_model("nuclei"))
    except Exception as err:  # noqa: BLE001  (not shipped yet, or the API differs)
        results["shipped"] = f"not evaluated: {type(err).__name__}: {err}"
    else:
        if not (shipped / "weights.pt").is_file():
            results["shipped"] = "not evaluated: no shipped 'nuclei' model in this checkout"
            shipped = None
    if shipped is not None and not isinstance(results.get("shipped"), str):
        preds, per_image = predict_model(shipped, test)
        results["shipped"] = {
            "model": str(shipped),
            "scores": score(truths, preds, kinds),
            "seconds_per_image": round(per_image, 3),
        }
        print("shipped", json.dumps(results["shipped"]["scores"]["all"]))
        if a.tta:
            results["shipped_tta"] = tta_scores(shipped, test, truths, kinds, "shipped")
    results["uptime_end"] = os.getloadavg()
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"written {out / 'results.json'}")


if __name__ == "__main__":
    main()
