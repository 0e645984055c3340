"""Check that an exported network gives the PyTorch network's output."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from deepscope.errors import DeepscopeError

#: Largest difference allowed between an exported network's output and PyTorch's, as a
#: fraction of the output's range (both fp32: the differences are rounding only, ~1e-7).
TOLERANCE = 1e-4


def relative_difference(
    network: nn.Module, exported: Callable[[np.ndarray], np.ndarray], sample: np.ndarray
) -> float:
    """Largest |exported(x) - network(x)| on ``sample`` (N, C, *spatial), over the range."""
    x = np.ascontiguousarray(sample, dtype=np.float32)
    with torch.no_grad():
        ref = network.float().eval()(torch.from_numpy(x)).float().numpy()
    got = np.asarray(exported(x), dtype=np.float32)
    if got.shape != ref.shape:
        return float("inf")
    return float(np.max(np.abs(got - ref))) / max(float(np.ptp(ref)), 1e-6)


def check_same_output(
    network: nn.Module,
    exported: Callable[[np.ndarray], np.ndarray],
    example: np.ndarray,
    what: str,
) -> float:
    """Compare on ``example`` and on a twice-as-wide batch of two; return the worst difference.

    Raises
    ------
    DeepscopeError
        When a difference exceeds :data:`TOLERANCE`.
    """
    bigger = np.concatenate([example, example[:, :, ::-1]], axis=0)
    bigger = np.concatenate([bigger, bigger[..., ::-1]], axis=-1)
    worst = 0.0
    for sample in (example, bigger):
        diff = relative_difference(network, exported, sample)
        worst = max(worst, diff)
        if diff > TOLERANCE:
            raise DeepscopeError(
                f"the {what} network's output differs from PyTorch's by {diff:.2e} of the "
                f"output range on an input of shape {sample.shape} (allowed {TOLERANCE:g})",
                fix="report this as a deepscope bug, with the model folder",
            )
    return worst
