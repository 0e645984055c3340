"""Run a network through ONNX Runtime inside deepscope's tiled prediction.

:class:`OnnxNetwork` looks like a PyTorch module to :func:`deepscope.workflow.tiling.
predict_tiled` (tensor in, tensor out), so tiling, blending, normalisation and the task's
post-processing stay exactly the same; only the network call changes. Used by
``deepscope predict --engine onnx`` and for models imported with ONNX weights only.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deepscope.errors import ModelFolderError
from deepscope.export.onnx_export import export_onnx, onnx_session

#: Network file formats a model folder may hold instead of a state dict.
NETWORK_FORMATS = ("torchscript", "onnx")


class OnnxNetwork(nn.Module):
    """An ONNX Runtime session with a PyTorch-module interface (CPU, fp32).

    Parameters
    ----------
    path
        The ``.onnx`` file (batch and spatial axes dynamic).
    threads
        ONNX Runtime intra-op threads (None: its default, all cores).
    """

    def __init__(self, path: str | Path, threads: int | None = None):
        super().__init__()
        self.path = Path(path)
        self.session = onnx_session(self.path, threads=threads)
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the session on a float32 batch (N, C, *spatial)."""
        a = np.ascontiguousarray(x.detach().float().cpu().numpy())
        return torch.from_numpy(self.session.run(None, {self.input_name: a})[0])


def onnx_network_for(network: nn.Module, example_shape: tuple[int, ...], threads=None):  # noqa: ANN001,ANN201
    """Export ``network`` to a temporary ONNX file (checked) and return its session module.

    ``example_shape`` is (N, C, *spatial) with sizes the network accepts.
    """
    tmp = Path(tempfile.mkdtemp(prefix="deepscope-onnx-"))
    example = np.random.default_rng(0).random(example_shape, dtype=np.float32)
    path = tmp / "network.onnx"
    export_onnx(network, example, path)
    return OnnxNetwork(path, threads=threads)


def load_network_file(path: Path, fmt: str) -> nn.Module:
    """Load a TorchScript or ONNX network file of a model folder.

    Raises
    ------
    ModelFolderError
        When the file is missing or unreadable, or the format unknown.
    """
    if fmt not in NETWORK_FORMATS:
        raise ModelFolderError(
            f"unknown network format {fmt!r} (known: {', '.join(NETWORK_FORMATS)})",
            path.parent,
            "update deepscope, or import the model again",
        )
    if not path.is_file():
        raise ModelFolderError("the network file is missing", path, "copy the model folder again")
    try:
        if fmt == "torchscript":
            return torch.jit.load(str(path), map_location="cpu").eval()
        return OnnxNetwork(path)
    except Exception as err:  # noqa: BLE001  (the runtimes raise many types on bad files)
        raise ModelFolderError(
            f"the {fmt} network cannot be read ({type(err).__name__}: {str(err)[:200]})",
            path,
            "the file is damaged; import the model again",
        ) from None


def use_onnx_engine(model, threads: int | None = None) -> None:  # noqa: ANN001
    """Replace ``model.network`` (a loaded model folder) by its ONNX Runtime equivalent.

    The network is exported to a temporary ONNX file and checked against PyTorch first;
    everything else in prediction (normalisation, tiling, blending, post-processing)
    stays the same.
    """
    if isinstance(model.network, OnnxNetwork):
        return
    dims = model.config.data.spatial_dims
    div = int(model.info["divisibility"])
    side = max(div, 64 // div * div)
    depth = max(div, 16 // div * div)
    shape = (1, model.in_channels) + ((side, side) if dims == 2 else (depth, side, side))
    model.network = onnx_network_for(model.network, shape, threads=threads)
