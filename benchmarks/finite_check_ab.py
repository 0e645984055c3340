"""A/B: 8 epochs of the ``nuclei_dsb.py`` StarDist recipe, gradient check per tensor or fused.

Before each optimiser step deepscope checks that every gradient is finite (a NaN step is
skipped, see ``engine.module``). ``loop`` is deepscope's ``gradients_finite`` (one
``isfinite`` per tensor); ``fused`` replaces it by PyTorch's fused multi-tensor check (the
private function its mixed-precision gradient scaler uses). Prints the median seconds
per epoch (first epoch left out) and the validation losses (which must be the same).
Run from the project root, one arm after the other, nothing else running (training
images as written by ``nuclei_dsb.py``)::

    PYTHONPATH=src .venv/bin/python benchmarks/finite_check_ab.py loop
    PYTHONPATH=src .venv/bin/python benchmarks/finite_check_ab.py fused
"""

import sys
from pathlib import Path

sys.path.insert(0, "benchmarks")
import torch
from nuclei_dsb import time_epochs

from deepscope.engine import module


def fused_check(grads: list[torch.Tensor]) -> bool:
    """All gradients finite, by one fused call per device and dtype."""
    groups: dict[tuple, list[torch.Tensor]] = {}
    for g in grads:
        groups.setdefault((g.device, g.dtype), []).append(g)
    for (device, _), tensors in groups.items():
        found = torch.zeros(1, device=device)
        torch._amp_foreach_non_finite_check_and_unscale_(
            tensors, found, torch.ones(1, device=device)
        )
        if found.item():
            return False
    return True


arm = sys.argv[1]
if arm == "fused":
    module.gradients_finite = fused_check
time_epochs(arm, Path(f"/tmp/deepscope_finite_check_ab/{arm}"))
