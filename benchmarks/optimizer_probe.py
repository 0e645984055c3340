"""Probe: one AdamW step (random gradients) as a Python loop, foreach, or fused.

StarDist's network (depth 3, 32 channels, 1.98 M weights) and the N2V U-Net (depth 2, 32
channels), 2 threads, median of 30 steps, each variant twice. Run from the project root::

    PYTHONPATH=src .venv/bin/python benchmarks/optimizer_probe.py
"""

import statistics
import time

import torch

from deepscope.config import config_from_dict
from deepscope.engine import performance
from deepscope.tasks import get_task

performance.tune_allocator()
performance.setup_threads()
for task_name, base, depth in (("stardist", 32, 3), ("n2v", 32, 2)):
    cfg = config_from_dict({"task": task_name, "model": {"depth": depth, "base_channels": base}})
    model = get_task(task_name)(cfg).build_model(1)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    res = {}
    for kind in ("single", "foreach", "fused") * 2:
        kw = (
            {"foreach": False}
            if kind == "single"
            else ({"foreach": True} if kind == "foreach" else {"fused": True})
        )
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **kw)
        for _ in range(3):
            opt.step()
        ts = []
        for _ in range(30):
            t0 = time.perf_counter()
            opt.step()
            ts.append(time.perf_counter() - t0)
        res.setdefault(kind, []).append(round(statistics.median(ts) * 1000, 2))
    print(task_name, sum(p.numel() for p in model.parameters()), res)
