"""Probe training throughput of the N2V U-Net on this CPU (fp32 vs bf16, channels_last).

Usage: python benchmarks/throughput_probe.py [--batch 64] [--steps 20]
Prints patches/s for each variant. Used to choose engine defaults; results in RESULTS.md.
"""

import argparse
import time

import torch

from deepscope.engine.models import build_model


def run(precision: str, channels_last: bool, batch: int, steps: int, size: int) -> float:
    torch.manual_seed(0)
    model = build_model("unet", dims=2, depth=2, base_channels=32)
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    mf = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=mf)
    x = torch.randn(batch, 1, size, size).to(memory_format=mf)
    y = torch.randn(batch, 1, size, size)
    t0 = 0.0
    for i in range(steps + 3):
        if i == 3:
            t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(x)
        loss = ((out.float() - y) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return batch * steps / (time.perf_counter() - t0)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--size", type=int, default=64)
    a = p.parse_args()
    print("threads", torch.get_num_threads())
    for prec in ("32", "bf16"):
        for cl in (False, True):
            r = run(prec, cl, a.batch, a.steps, a.size)
            print(f"precision={prec:5s} channels_last={cl!s:5s} {r:7.1f} patches/s")
