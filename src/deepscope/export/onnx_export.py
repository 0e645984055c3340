"""ONNX export of a deepscope network (fp32, dynamic batch and spatial sizes), checked."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deepscope.export.compare import check_same_output

#: ONNX operator set written (supported by onnxruntime >= 1.14 and by deepImageJ's runtime).
OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "output"


def export_onnx(network: nn.Module, example: np.ndarray, path: Path) -> float:
    """Export ``network`` to ONNX at ``path`` and check it with ONNX Runtime.

    Batch and spatial axes are dynamic, so any tile size the network accepts (multiples
    of its divisibility) can be given. The TorchScript-based exporter is used where the
    installed PyTorch still has it (seconds), else the ``torch.export`` one.

    Returns
    -------
    float
        The largest difference from PyTorch, as a fraction of the output range.
    """
    network = network.float().eval()
    x = torch.from_numpy(np.ascontiguousarray(example, dtype=np.float32))
    spatial = {i: f"s{i}" for i in range(2, x.ndim)}
    dynamic = {INPUT_NAME: {0: "batch", **spatial}, OUTPUT_NAME: {0: "batch", **spatial}}
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                network,
                (x,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes=dynamic,
                opset_version=OPSET,
                dynamo=False,
            )
        except TypeError:  # a PyTorch without the TorchScript-based exporter
            from torch.export import Dim

            shapes = {"x": {0: Dim("batch"), **{i: Dim.AUTO for i in spatial}}}
            torch.onnx.export(
                network,
                (x,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=shapes,
                opset_version=OPSET,
                dynamo=True,
            )
    session = onnx_session(path, threads=1)
    name = session.get_inputs()[0].name
    return check_same_output(network, lambda a: session.run(None, {name: a})[0], example, "ONNX")


def onnx_session(path: Path, threads: int | None = None):  # noqa: ANN201
    """An ONNX Runtime CPU session for ``path`` (``threads`` = intra-op threads)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
