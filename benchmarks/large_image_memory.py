"""Peak memory of predicting a large image: whole image in memory vs block by block.

Builds a mosaic of real W2S noisy fields (``../shared/data/denoise_w2s``) as one large
uint16 TIFF, then runs ``deepscope predict`` on it twice in fresh processes: with the
default memory limit (the image fits, so it is predicted in memory) and with
``--memory-limit`` below its need (block by block). Reports peak resident memory
(ru_maxrss of the child), wall time and the largest difference between the two results.

Usage::

    .venv/bin/python benchmarks/large_image_memory.py --model deepscope-demo/run/model \
        --size 8192 --limit-gib 0.5
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "denoise_w2s"
OUT = ROOT / "benchmarks" / "out" / "large_image"


def build_mosaic(size: int, path: Path) -> None:
    """Write a ``size``×``size`` uint16 mosaic of W2S noisy fields to ``path``."""
    tiles = [tifffile.imread(f).astype(np.uint16) for f in sorted((DATA / "noisy").glob("*.tif"))]
    tiles = [t if t.ndim == 2 else t[..., 0] for t in tiles]
    th, tw = tiles[0].shape
    mosaic = tifffile.memmap(path, shape=(size, size), dtype=np.uint16, photometric="minisblack")
    k = 0
    for y in range(0, size, th):
        for x in range(0, size, tw):
            t = tiles[k % len(tiles)]
            k += 1
            mosaic[y : y + th, x : x + tw] = t[: size - y, : size - x]
    mosaic.flush()
    del mosaic


def run_predict(model: Path, src: Path, out: Path, limit: float | None) -> dict:
    """Run ``deepscope predict`` in a child process; return its peak memory and time."""
    cmd = [sys.executable, "-m", "deepscope", "predict", str(model), "--input", str(src)]
    cmd += ["--out", str(out), "--overwrite"]
    if limit is not None:
        cmd += ["--memory-limit", str(limit)]
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"deepscope predict failed: {' '.join(cmd)}")
    return {"seconds": round(seconds, 1), "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2)}


def main() -> None:
    """Run the comparison and print a JSON record."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=ROOT / "deepscope-demo" / "run" / "model")
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--limit-gib", type=float, default=0.5)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    src_dir = OUT / "input"
    src_dir.mkdir(exist_ok=True)
    src = src_dir / f"mosaic_{args.size}.tif"
    if not src.exists():
        build_mosaic(args.size, src)
    blocks = run_predict(args.model, src, OUT / "blocks", args.limit_gib)
    whole = run_predict(args.model, src, OUT / "whole", None)
    a = tifffile.memmap(OUT / "whole" / src.name)
    b = tifffile.memmap(OUT / "blocks" / src.name)
    scale = float(np.percentile(a[:1024], 99.5) - np.percentile(a[:1024], 0.5))
    diff, total, over = 0.0, 0.0, 0
    for y in range(0, args.size, 1024):
        d = np.abs(a[y : y + 1024].astype(np.float64) - b[y : y + 1024])
        diff = max(diff, float(d.max()))
        total += float(d.sum())
        over += int(np.count_nonzero(d > 0.01 * scale))
    record = {
        "image": f"{args.size}x{args.size} uint16 ({src.stat().st_size / 2**30:.2f} GiB)",
        "block_by_block": blocks,
        "in_memory": whole,
        "max_abs_difference_relative_to_range": round(diff / scale, 5),
        "mean_abs_difference_relative_to_range": round(total / a.size / scale, 7),
        "share_of_pixels_differing_over_1_percent": round(over / a.size, 7),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
    }
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
