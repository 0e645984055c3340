"""A/B: 8 epochs of the ``nuclei_dsb.py`` StarDist recipe with AdamW as a loop or fused.

``loop`` replaces ``torch.optim.AdamW`` by one that ignores ``fused`` (deepscope before
2026-11-29, session 8); ``fused`` is deepscope's default. Prints the median seconds per
epoch (first epoch left out) and the validation losses. Run from the project root, one
arm after the other, nothing else running (the training images are those
``nuclei_dsb.py`` writes to ``benchmarks/out/nuclei_dsb/work/train``)::

    PYTHONPATH=src .venv/bin/python benchmarks/fused_adamw_ab.py loop
    PYTHONPATH=src .venv/bin/python benchmarks/fused_adamw_ab.py fused
"""

import csv
import json
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, "benchmarks")
import torch
from nuclei_dsb import CONFIG

from deepscope.config import config_from_dict
from deepscope.workflow.training import train

orig = torch.optim.AdamW
arm = sys.argv[1]
if arm == "loop":
    torch.optim.AdamW = lambda *a, fused=None, **k: orig(*a, **k)
cfg = json.loads(json.dumps(CONFIG))
cfg["training"].update({"epochs": 8, "max_minutes": 60.0, "checkpoint_every": 1000})
run = Path(f"/tmp/deepscope_fused_adamw_ab/{arm}")
shutil.rmtree(run, ignore_errors=True)
d = Path("benchmarks/out/nuclei_dsb/work/train")
train(config_from_dict(cfg), d / "images", run, d / "masks", show_bar=False, log=lambda m: None)
rows = list(csv.DictReader((run / "metrics.csv").open()))
print(
    arm,
    "median s/epoch",
    statistics.median(float(r["seconds"]) for r in rows[1:]),
    "val losses",
    [round(float(r["val_loss"]), 4) for r in rows],
)
