"""A/B: 8 epochs of the ``nuclei_dsb.py`` StarDist recipe with AdamW as a loop or fused.

``loop`` replaces ``torch.optim.AdamW`` by one that ignores ``fused`` (deepscope before
2026-11-29, session 8); ``fused`` is deepscope's default. Prints the median seconds per
epoch (first epoch left out) and the validation losses. Run from the project root, one
arm after the other, nothing else running (the training images are those
``nuclei_dsb.py`` writes to ``benchmarks/out/nuclei_dsb/work/train``)::

    PYTHONPATH=src .venv/bin/python benchmarks/fused_adamw_ab.py loop
    PYTHONPATH=src .venv/bin/python benchmarks/fused_adamw_ab.py fused
"""

import sys
from pathlib import Path

sys.path.insert(0, "benchmarks")
import torch
from nuclei_dsb import time_epochs

orig = torch.optim.AdamW
arm = sys.argv[1]
if arm == "loop":
    torch.optim.AdamW = lambda *a, fused=None, **k: orig(*a, **k)
time_epochs(arm, Path(f"/tmp/deepscope_fused_adamw_ab/{arm}"))
