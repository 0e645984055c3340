"""TorchScript export of a deepscope network (traced, fp32), checked against PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from deepscope.export.compare import check_same_output


def export_torchscript(network: nn.Module, example: np.ndarray, path: Path) -> float:
    """Trace ``network`` (eval mode, fp32) with ``example`` (N, C, *spatial) into ``path``.

    The traced graph accepts other batch and spatial sizes (multiples of the network's
    divisibility): the U-Net upsamples by a scale factor, not to a fixed size. The saved
    file is loaded again and compared with PyTorch on ``example`` and on a larger input.

    Returns
    -------
    float
        The largest difference from PyTorch, as a fraction of the output range.
    """
    network = network.float().eval()
    x = torch.from_numpy(np.ascontiguousarray(example, dtype=np.float32))
    with torch.no_grad():
        traced = torch.jit.trace(network, x, check_trace=False)
    path = Path(path)
    traced.save(str(path))
    loaded = torch.jit.load(str(path), map_location="cpu").eval()

    def run(a: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return loaded(torch.from_numpy(a)).numpy()

    return check_same_output(network, run, example, "TorchScript")
