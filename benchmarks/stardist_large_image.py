"""StarDist on a large image: whole image in memory vs block by block (objects kept once).

Builds a mosaic of one real nuclei image (``../shared/data/nuclei2d``, the image of
``benchmarks/stardist_speed.py``) tiled without rescaling to ``--size``², with its true
labels tiled alike, then runs ``deepscope predict nuclei`` on it in fresh processes:
in memory (``--memory-limit`` far above its need) and block by block (``--memory-limit``
below it; 2048² blocks, 128-pixel context). Reports peak resident memory (ru_maxrss of
the child), wall time, the objects found, F1 at IoU 0.5 against the true labels for
each, and how well the two label images agree (objects matched at IoU > 0.5 and > 0.9).

Matching here is sparse (pairs of overlapping labels counted with ``np.unique``), because
``stardist.matching``'s dense overlap table would not fit for tens of thousands of objects;
at IoU > 0.5 a match is unique, so no assignment step is needed.

Usage::

    PYTHONPATH=src .venv/bin/python benchmarks/stardist_large_image.py --size 4096 [--blocks-only]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import tifffile
from large_image_memory import run_predict

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "nuclei2d"
OUT = ROOT / "benchmarks" / "out" / "stardist_large_image"
SOURCE = "4f949bd8"
"""The nuclei2d image tiled (as in stardist_speed.py)."""


def build_mosaic(size: int, image_path: Path, labels_path: Path) -> int:
    """Write the ``size``² mosaic and its true labels; return the number of true objects."""
    import imageio.v3 as iio

    name = sorted((DATA / "images").glob(f"{SOURCE}*.png"))[0].stem
    grey = np.asarray(iio.imread(DATA / "images" / f"{name}.png"))[..., 0]
    labels = tifffile.imread(DATA / "masks" / f"{name}.tif").astype(np.int64)
    h, w = grey.shape
    n = int(labels.max())
    image = tifffile.memmap(image_path, shape=(size, size), dtype=grey.dtype)
    truth = tifffile.memmap(labels_path, shape=(size, size), dtype=np.uint32)
    k = 0
    for y in range(0, size, h):
        for x in range(0, size, w):
            hh, ww = min(h, size - y), min(w, size - x)
            image[y : y + hh, x : x + ww] = grey[:hh, :ww]
            part = labels[:hh, :ww]
            truth[y : y + hh, x : x + ww] = np.where(part > 0, part + k * n, 0)
            k += 1
    image.flush()
    truth.flush()
    present = np.unique(np.asarray(truth))
    del image, truth
    return int((present > 0).sum())


def iou_matches(a: np.ndarray, b: np.ndarray, threshold: float) -> tuple[int, int, int]:
    """(objects of a, objects of b, pairs with IoU above ``threshold``), sparse."""
    a = np.asarray(a, np.int64).ravel()
    b = np.asarray(b, np.int64).ravel()
    area_a = np.bincount(a)
    area_b = np.bincount(b)
    both = (a > 0) & (b > 0)
    pairs, inter = np.unique(a[both] * (int(b.max()) + 1) + b[both], return_counts=True)
    ia, ib = np.divmod(pairs, int(b.max()) + 1)
    iou = inter / (area_a[ia] + area_b[ib] - inter)
    return int((area_a[1:] > 0).sum()), int((area_b[1:] > 0).sum()), int((iou > threshold).sum())


def f1(n_a: int, n_b: int, tp: int) -> float:
    """F1 of a matching with ``tp`` pairs among ``n_a`` and ``n_b`` objects."""
    return round(2 * tp / max(1, n_a + n_b), 4)


def main() -> None:
    """Run the comparison and print a JSON record."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="nuclei")
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--limit-gib", type=float, default=1.0, help="for the block run")
    parser.add_argument("--blocks-only", action="store_true", help="skip the in-memory run")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    src_dir = OUT / "input"
    src_dir.mkdir(exist_ok=True)
    src = src_dir / f"nuclei_{args.size}.tif"
    truth_path = OUT / f"truth_{args.size}.tif"
    n_true = build_mosaic(args.size, src, truth_path)
    truth = tifffile.imread(truth_path)
    record: dict = {
        "image": f"{args.size}x{args.size} (nuclei2d {SOURCE}… tiled), {n_true} true nuclei",
        "model": args.model,
        "load_average_start": os.getloadavg(),
    }
    runs = {"block_by_block": args.limit_gib}
    if not args.blocks_only:
        runs["in_memory"] = 64.0  # far above the need: predicted whole
    results = {}
    for name, limit in runs.items():
        out = OUT / name
        record[name] = run_predict(Path(args.model), src, out, limit)
        results[name] = tifffile.imread(out / src.name)
        provenance = json.loads((out / "provenance.json").read_text())["files"][0]
        record[name]["predicted_in_blocks"] = provenance.get("predicted_in_blocks")
        n_t, n_p, tp = iou_matches(truth, results[name], 0.5)
        record[name].update({"objects": n_p, "f1_at_0.5_vs_truth": f1(n_t, n_p, tp)})
    if len(results) == 2:
        for t in (0.5, 0.9):
            n_a, n_b, tp = iou_matches(results["in_memory"], results["block_by_block"], t)
            record[f"agreement_in_memory_vs_blocks_f1_at_{t}"] = f1(n_a, n_b, tp)
    record["load_average_end"] = os.getloadavg()
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
