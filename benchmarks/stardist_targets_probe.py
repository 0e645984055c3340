"""How much of a StarDist training step is the target computation (star_dist + edt_prob)?

The nuclei_dsb recipe's step: batch 4 of 160x160 patches cut from real nuclei2d masks,
U-Net depth 3 with 32 channels, 32 rays, grid 2, bf16 autocast, AdamW. Prints the mean
milliseconds per step spent on the targets and on the rest (forward, loss, backward,
step) over 30 steps after 5 warm-up steps.

Usage:
    PYTHONPATH=src .venv/bin/python benchmarks/stardist_targets_probe.py
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from deepscope.config import config_from_dict
from deepscope.tasks import get_task
from deepscope.tasks.stardist import stardist_loss

DATA = Path(__file__).parent.parent.parent / "shared" / "data" / "nuclei2d" / "masks"
PATCH, BATCH, WARMUP, STEPS = 160, 4, 5, 30


def label_batch(masks: list[np.ndarray], rng: np.random.Generator) -> torch.Tensor:
    """``BATCH`` random label patches (N, 1, PATCH, PATCH) as float32, as training has them."""
    out: list[np.ndarray] = []
    while len(out) < BATCH:
        m = masks[rng.integers(len(masks))]
        if min(m.shape[:2]) < PATCH:
            continue
        y = rng.integers(0, m.shape[0] - PATCH + 1)
        x = rng.integers(0, m.shape[1] - PATCH + 1)
        out.append(m[y : y + PATCH, x : x + PATCH])
    return torch.from_numpy(np.stack(out)[:, None].astype(np.float32))


def main() -> None:
    torch.set_num_threads(2)
    config = config_from_dict(
        {
            "task": "stardist",
            "data": {"patch_size": [PATCH, PATCH]},
            "model": {"depth": 3, "base_channels": 32},
            "training": {"batch_size": BATCH},
        }
    )
    task = get_task("stardist")(config)
    net = task.build_model(1).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), 3e-4)
    masks = [tifffile.imread(f) for f in sorted(DATA.glob("*.tif"))[:40]]
    rng = np.random.default_rng(0)
    t_targets = t_rest = 0.0
    for i in range(WARMUP + STEPS):
        labels = label_batch(masks, rng)
        x = torch.randn(BATCH, 1, PATCH, PATCH).contiguous(memory_format=torch.channels_last)
        t0 = time.perf_counter()
        prob, dist, weight = task.batch_targets(labels)
        t1 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(x).float()
        stardist_loss(out, prob, dist, weight).backward()
        opt.step()
        opt.zero_grad()
        t2 = time.perf_counter()
        if i >= WARMUP:
            t_targets += t1 - t0
            t_rest += t2 - t1
    print(
        f"targets {1000 * t_targets / STEPS:.1f} ms/step, network+loss+step "
        f"{1000 * t_rest / STEPS:.1f} ms/step, share {t_targets / (t_targets + t_rest):.1%}"
    )


if __name__ == "__main__":
    main()
