"""Train, score and package the shipped StarDist ``nuclei`` model (issue 4, item 7).

Data: ``../shared/data/nuclei2d`` (DSB 2018 stage-1 test, BBBC038) split by the fixed
``benchmarks/nuclei_split.json``; the model is trained on the 32 TRAIN images of every
kind (fluorescence, brightfield, H&E), read as grey (the mean of R, G, B: what deepscope
feeds a one-channel model given a colour picture), with random intensity scaling, and
scored on the TEST images of every kind. Recipe and seed are those of
``benchmarks/nuclei_dsb.py`` (the same data written the same way), so its training run
and this one give the same model; the model shipped since 2026-11-29 (session 7) is the
model of a 60-minute ``nuclei_dsb.py`` run, packaged with the last two steps below.
(Models shipped before then also trained on the example image of the ``stardist``
package, ``nuclei_extras``.)

Steps (each one command, run from the project root)::

    .venv/bin/python benchmarks/nuclei_model.py prepare --work /tmp/nuclei-work
    .venv/bin/python benchmarks/nuclei_model.py train --work /tmp/nuclei-work --minutes 60
    .venv/bin/python benchmarks/nuclei_model.py score --model /tmp/nuclei-work/run/model
    .venv/bin/python benchmarks/nuclei_model.py package --model /tmp/nuclei-work/run/model

``score`` writes ``benchmarks/nuclei_model_scores.json``; ``package`` copies the model
(without its extra checkpoints) to ``src/deepscope/pretrained/nuclei`` with a model card.
Training stores the 8-bit calibration of ``predict --int8`` (made on its validation
images); for a model trained before that (the one shipped now), ``package`` makes it on
the TRAIN images, as ``.venv/bin/python benchmarks/nuclei_model.py calibrate --model
FOLDER`` does.
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
from nuclei_dsb import CONFIG as NUCLEI_DSB_CONFIG

from deepscope.engine.int8 import CALIBRATION_FILE

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DEEPSCOPE_DATA", ROOT / ".." / "shared" / "data"))
SPLIT = ROOT / "benchmarks" / "nuclei_split.json"
SCORES = ROOT / "benchmarks" / "nuclei_model_scores.json"
TARGET = ROOT / "src" / "deepscope" / "pretrained" / "nuclei"

# One recipe for the benchmark and the shipped model (nuclei_dsb.py documents it).
CONFIG = NUCLEI_DSB_CONFIG


def grey(path: Path) -> np.ndarray:
    """Read a DSB picture as one grey channel (mean of R, G, B; alpha dropped)."""
    import imageio.v3 as iio

    a = np.asarray(iio.imread(path))
    return a[..., :3].astype(np.float32).mean(axis=-1) if a.ndim == 3 else a


def prepare(work: Path) -> None:
    """Write grey training images and masks into ``work/train`` (every kind)."""
    split = json.loads(SPLIT.read_text())
    img_dir, mask_dir = work / "train" / "images", work / "train" / "masks"
    img_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    for name in split["train"]:
        picture = grey(DATA / "nuclei2d" / "images" / f"{name}.png")
        tifffile.imwrite(img_dir / f"{name}.tif", picture)
        shutil.copyfile(DATA / "nuclei2d" / "masks" / f"{name}.tif", mask_dir / f"{name}.tif")
    print(f"{len(split['train'])} training images in {img_dir}")


def train(work: Path, minutes: float) -> None:
    """Train the model into ``work/run`` within ``minutes``."""
    from deepscope.config import config_from_dict
    from deepscope.workflow.training import train as run_training

    cfg = json.loads(json.dumps(CONFIG))
    cfg["training"]["max_minutes"] = minutes
    t0 = time.time()
    result = run_training(
        config_from_dict(cfg),
        work / "train" / "images",
        work / "run",
        work / "train" / "masks",
        resume=(work / "run" / "config.yaml").exists(),
        show_bar=False,
    )
    print(
        f"trained {result.epochs_trained} epochs in {(time.time() - t0) / 60:.1f} min "
        f"({result.stopped_because}); load: {os.getloadavg()}"
    )


def score(model_dir: Path) -> dict:
    """F1 / accuracy at IoU 0.5 and 0.7 on the TEST images, per kind and overall."""
    from stardist.matching import matching_dataset

    from deepscope.workflow.model_folder import load_model_folder
    from deepscope.workflow.predict import predict_array

    split = json.loads(SPLIT.read_text())
    model = load_model_folder(model_dir)
    by_kind: dict[str, tuple[list, list]] = {}
    t0 = time.time()
    for name in split["test"]:
        kind = split["kinds"][name]
        image = grey(DATA / "nuclei2d" / "images" / f"{name}.png")
        truth = tifffile.imread(DATA / "nuclei2d" / "masks" / f"{name}.tif")
        pred = predict_array(model, image[None].astype(np.float32))[0]
        by_kind.setdefault(kind, ([], []))
        by_kind[kind][0].append(truth)
        by_kind[kind][1].append(pred)
    seconds = time.time() - t0
    groups = dict(by_kind)
    groups["all"] = (
        [t for ts, _ in by_kind.values() for t in ts],
        [p for _, ps in by_kind.values() for p in ps],
    )
    result: dict = {"model": str(model_dir), "images": {}, "scores": {}}
    for kind, (truths, preds) in groups.items():
        stats = matching_dataset(truths, preds, thresh=[0.5, 0.7], show_progress=False)
        result["images"][kind] = len(truths)
        result["scores"][kind] = {
            str(s.thresh): {"f1": round(float(s.f1), 4), "accuracy": round(float(s.accuracy), 4)}
            for s in stats
        }
    result["thresholds"] = json.loads((model_dir / "thresholds.json").read_text())
    result["prediction_seconds"] = round(seconds, 1)
    result["load_during_prediction"] = os.getloadavg()
    SCORES.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["scores"], indent=1))
    return result


def package(model_dir: Path) -> None:
    """Copy the model (weights, config, normalisation, thresholds, history) into the package."""
    if TARGET.exists():
        shutil.rmtree(TARGET)
    TARGET.mkdir(parents=True)
    for name in (
        "deepscope_model.json",
        "config.yaml",
        "normalization.json",
        "weights.pt",
        "thresholds.json",
        "history.csv",
    ):
        shutil.copyfile(model_dir / name, TARGET / name)
    if (model_dir / CALIBRATION_FILE).is_file():
        shutil.copyfile(model_dir / CALIBRATION_FILE, TARGET / CALIBRATION_FILE)
    else:  # runs trained before 2026-11-30 have none: made here on the TRAIN images
        calibrate(TARGET)
    (TARGET / "checkpoints").mkdir()
    (TARGET / "checkpoints" / ".keep").write_text("")
    card = (ROOT / "benchmarks" / "nuclei_model_card.md").read_text()
    scores = json.loads(SCORES.read_text()) if SCORES.exists() else None
    if scores:
        rows = [
            f"| {kind} | {scores['images'][kind]} | {s['0.5']['f1']:.3f} | "
            f"{s['0.5']['accuracy']:.3f} | {s['0.7']['f1']:.3f} | {s['0.7']['accuracy']:.3f} |"
            for kind, s in scores["scores"].items()
        ]
        card = card.replace("{{SCORES}}", "\n".join(rows))
    info = json.loads((model_dir / "deepscope_model.json").read_text())
    card = card.replace("{{TRAINING}}", json.dumps(info.get("training", {})))
    (TARGET / "MODEL_CARD.md").write_text(card)
    size = sum(p.stat().st_size for p in TARGET.rglob("*") if p.is_file())
    print(f"packaged into {TARGET} ({size / 1e6:.2f} MB)")


def calibrate(model_dir: Path) -> None:
    """Store the 8-bit calibration (``predict --int8``) of a model made on the TRAIN images.

    For model folders trained before training made one (on its validation images); the
    TRAIN images are the model's own training data, so no test image is used.
    """
    from deepscope.engine.int8 import save_calibration
    from deepscope.workflow.int8_models import make_int8_calibration
    from deepscope.workflow.model_folder import load_model_folder

    split = json.loads(SPLIT.read_text())
    images = [grey(DATA / "nuclei2d" / "images" / f"{n}.png")[None] for n in split["train"]]
    calibration = make_int8_calibration(load_model_folder(model_dir), images)
    calibration["made_from"] = "the 32 TRAIN images of benchmarks/nuclei_split.json"
    print(f"calibration written to {save_calibration(model_dir, calibration)}")


def main() -> None:
    """Command line of this script."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("step", choices=["prepare", "train", "score", "package", "calibrate"])
    p.add_argument("--work", type=Path, default=Path("/tmp/nuclei-work"))
    p.add_argument("--model", type=Path)
    p.add_argument("--minutes", type=float, default=60.0)
    a = p.parse_args()
    model = a.model or a.work / "run" / "model"
    steps = {
        "prepare": lambda: prepare(a.work),
        "train": lambda: train(a.work, a.minutes),
        "score": lambda: score(model),
        "package": lambda: package(model),
        "calibrate": lambda: calibrate(model),
    }
    steps[a.step]()


if __name__ == "__main__":
    main()
