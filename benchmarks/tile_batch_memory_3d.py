"""Peak memory and time of tiled 3D prediction for a given tile shape and tiles per pass.

A random 3D N2V-sized U-Net (depth 2, 32 base channels, bf16) predicts a random
64×1024×1024 volume tile by tile (``workflow.tiling.predict_tiled``). Run each setting
in its own process (peak RSS only grows)::

    PYTHONPATH=src .venv/bin/python benchmarks/tile_batch_memory_3d.py --tile 32,512,512 --batch 4
    PYTHONPATH=src .venv/bin/python benchmarks/tile_batch_memory_3d.py --tile 32,512,512 --batch 1

Used to choose the 3D default of ``TileSettings.tiles_per_pass``; results in RESULTS.md.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from deepscope.engine import performance
from deepscope.engine.models.unet import UNet
from deepscope.workflow.tiling import predict_tiled


def main() -> None:
    """Time one tiled prediction and print the peak resident memory."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tile", default="32,512,512", help="tile shape Z,Y,X")
    p.add_argument("--batch", type=int, default=1, help="tiles per network pass")
    p.add_argument("--shape", default="64,1024,1024", help="volume shape Z,Y,X")
    a = p.parse_args()
    performance.tune_allocator()
    performance.setup_threads()
    tile = tuple(int(v) for v in a.tile.split(","))
    shape = tuple(int(v) for v in a.shape.split(","))
    torch.manual_seed(0)
    net = UNet(dims=3, in_channels=1, out_channels=1, depth=2, base_channels=32).eval()
    volume = np.random.default_rng(0).random((1, *shape), dtype=np.float32)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    t0 = time.perf_counter()
    predict_tiled(
        net,
        volume,
        out_channels=1,
        tile_shape=tile,
        overlap=32,
        divisibility=4,
        batch_size=a.batch,
        autocast_bf16=performance.cpu_supports_bf16(),
    )
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(
        f"volume {shape}, tile {tile}, {a.batch} tile(s) per pass: {seconds:.1f} s, "
        f"peak RSS {peak:.2f} GB (before prediction {before:.2f} GB)"
    )


if __name__ == "__main__":
    main()
