"""Tracking benchmark (issue 9): CTC TRA/DET/SEG and divisions on real time-lapses.

1. E. coli colony (``../shared/data/tracking_bacteria``, 30 frames, full lineage GT):
   a. link the ground-truth masks (``deepscope track --labels TRA``) and score them
      against the GT: the target is TRA >= 0.95;
   b. segment frames 18-29 with a deepscope model trained on the *other* frames 0-17
      (a semantic U-Net in boundary mode, whose instances grow each cell's interior; or
      any model folder given with ``--model``), track, and score against the GT of
      frames 18-29. Frames are cropped to the colony's region (rows 540-920, columns
      260-780, which holds every cell of all 30 frames) so that training patches are not
      mostly background and prediction is quick; the scores are unaffected.
2. CTC subsets (``../shared/data/tracking_ctc_subsets``): HeLa 2D+t and CHO 3D+t linked
   from their given (computed, "ERR_SEG") segmentations. There is no lineage ground
   truth there, so only counts and timings are reported (it shows that 3D works).

Run from the repository root (about 15-25 minutes on 2 busy CPU cores, most of it training)::

    PYTHONPATH=src python benchmarks/tracking.py --out bench_tracking
    PYTHONPATH=src python benchmarks/tracking.py --out bench_tracking --model runs/sd1/model

Writes ``OUT/results.json`` and prints a summary.
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

from deepscope.interfaces.cli import main as cli
from deepscope.tracking.qc_track import score_tracks

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BACTERIA = DATA / "tracking_bacteria"
SUBSETS = DATA / "tracking_ctc_subsets"
CROP = (slice(540, 920), slice(260, 780))
TRAIN_FRAMES = range(0, 18)
TEST_FRAMES = range(18, 30)


def load() -> str:
    """The machine's load, to print beside every time."""
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def run(*argv: str) -> None:
    """Run a deepscope command; stop the benchmark if it fails."""
    code = cli([str(a) for a in argv])
    if code != 0:
        raise SystemExit(f"deepscope {' '.join(map(str, argv))} failed with code {code}")


def timed_track(out: Path, *argv: str) -> float:
    start = time.monotonic()
    run("track", *argv, "--out", out, "--overwrite")
    return time.monotonic() - start


def clipped_gt(dest: Path, frames: range) -> Path:
    """A CTC GT folder of a range of frames (cropped), lineage clipped, frames renumbered."""
    dest.mkdir(parents=True, exist_ok=True)
    first, last = frames[0], frames[-1]
    present: dict[int, list[int]] = {}
    for i, t in enumerate(frames):
        mask = tifffile.imread(BACTERIA / "TRA" / f"man_track{t:06d}.tif")[CROP]
        tifffile.imwrite(dest / f"man_track{i:03d}.tif", mask, compression="zlib")
        for label in np.unique(mask[mask > 0]):
            present.setdefault(int(label), []).append(i)
    lines = []
    table = np.loadtxt(BACTERIA / "TRA" / "man_track.txt", dtype=int, ndmin=2)
    for label, start, end, parent in table:
        if end < first or start > last or int(label) not in present:
            continue
        frames_in = present[int(label)]
        keep_parent = int(parent) if int(parent) in present else 0  # parent seen in range
        lines.append(f"{label} {min(frames_in)} {max(frames_in)} {keep_parent}")
    (dest / "man_track.txt").write_text("\n".join(lines) + "\n")
    return dest


def write_frames(dest: Path, frames: range, kind: str) -> Path:
    """Cropped raw frames (``img``) or GT masks (``TRA``) as ``t000.tif`` …"""
    dest.mkdir(parents=True, exist_ok=True)
    for i, t in enumerate(frames):
        name = f"img/t{t:06d}.tif" if kind == "img" else f"TRA/man_track{t:06d}.tif"
        tifffile.imwrite(dest / f"t{i:03d}.tif", tifffile.imread(BACTERIA / name)[CROP])
    return dest


def bacteria_gt(out: Path) -> dict:
    """1a: link the ground-truth masks of all 30 frames."""
    seconds = timed_track(
        out / "bacteria_gt", "--labels", BACTERIA / "TRA", "--input", BACTERIA / "img"
    )
    summary = score_tracks(out / "bacteria_gt", BACTERIA / "TRA", seg_gt=BACTERIA / "TRA")
    return {"summary": summary, "track_seconds": round(seconds, 1), "load": load()}


def train_model(out: Path, minutes: float) -> Path:
    """A semantic U-Net (boundary mode) trained on the cropped frames 0-17."""
    data = out / "train_frames"
    images = write_frames(data / "images", TRAIN_FRAMES, "img")
    masks = write_frames(data / "masks", TRAIN_FRAMES, "TRA")
    run_dir = out / "model_run"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    start = time.monotonic()
    run(
        "train", "semantic", "--images", images, "--masks", masks, "--boundary",
        "--out", run_dir, "--max-minutes", minutes, "--patch-size", 128, 128,
        "--batch-size", 8, "--patches-per-epoch", 256, "--seed", 0,
    )  # fmt: skip
    print(f"trained in {(time.monotonic() - start) / 60:.1f} min ({load()})")
    return run_dir / "model"


def bacteria_model(out: Path, model: Path) -> dict:
    """1b: segment frames 18-29 with the model, track, score."""
    movie = write_frames(out / "test_frames" / "img", TEST_FRAMES, "img")
    gt = clipped_gt(out / "test_frames" / "GT" / "TRA", TEST_FRAMES)
    seconds = timed_track(out / "bacteria_model", "--input", movie, "--model", model)
    summary = score_tracks(out / "bacteria_model", gt, seg_gt=gt)
    gt_linked = out / "bacteria_gt_test_frames"
    timed_track(
        gt_linked, "--labels", write_frames(out / "test_frames" / "gt_masks", TEST_FRAMES, "TRA")
    )
    reference = score_tracks(gt_linked, gt, seg_gt=gt)
    return {
        "model": str(model.resolve()),
        "trained_on_frames": f"{TRAIN_FRAMES[0]}-{TRAIN_FRAMES[-1]}",
        "tracked_frames": f"{TEST_FRAMES[0]}-{TEST_FRAMES[-1]}",
        "summary": summary,
        "same_frames_from_gt_masks": reference,
        "track_seconds_incl_segmentation": round(seconds, 1),
        "load": load(),
    }


def subsets(out: Path) -> dict:
    """2: HeLa 2D+t and CHO 3D+t from their given segmentations."""
    results = {}
    for name, stem in [("hela_2d", "Fluo_Hela_02"), ("cho_3d", "Fluo-N3DH-CHO_02")]:
        seconds = timed_track(
            out / name, "--labels", SUBSETS / f"{stem}_ERR_SEG.tif",
            "--input", SUBSETS / f"{stem}_img.tif",
        )  # fmt: skip
        record = json.loads((out / name / "settings.json").read_text())
        results[name] = {k: record[k] for k in ("frames", "objects", "tracks", "divisions")} | {
            "linking": record["linking"],
            "seconds": round(seconds, 1),
            "load": load(),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench_tracking"))
    parser.add_argument("--model", type=Path, help="an instance model folder (skip training)")
    parser.add_argument("--train-minutes", type=float, default=10.0)
    parser.add_argument("--skip", nargs="*", default=[], choices=["gt", "model", "subsets"])
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    if "gt" not in args.skip:
        results["bacteria_gt_masks"] = bacteria_gt(args.out)
        results_path.write_text(json.dumps(results, indent=2))
    if "subsets" not in args.skip:
        results["ctc_subsets"] = subsets(args.out)
        results_path.write_text(json.dumps(results, indent=2))
    if "model" not in args.skip:
        model = args.model or train_model(args.out, args.train_minutes)
        results["bacteria_model_masks"] = bacteria_model(args.out, model)
        results_path.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
