"""``deepscope export --format onnx|torchscript``: the network alone, with a description.

The network file expects normalised input; a JSON file beside it (``NAME.onnx.json`` or
``NAME.pt.json``, so an ONNX and a TorchScript export of one model can share a name) says
how: per channel ``(x - low) / (high - low)`` before, and the task's mapping after (e.g.
``y * (high - low) + low`` for restoration, softmax for segmentation), with the axes and
the size rule (multiples of ``divisibility``).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from deepscope import __version__
from deepscope.errors import OutputError
from deepscope.export.bioimageio import require_state_dict, test_input
from deepscope.export.descriptions import get_export
from deepscope.export.onnx_export import INPUT_NAME, OPSET, OUTPUT_NAME, export_onnx
from deepscope.export.torchscript import export_torchscript
from deepscope.workflow.model_folder import load_model_folder

SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}


def export_network(
    model_folder: str | Path,
    fmt: str,
    out: str | Path,
    *,
    log: Callable[[str], None] = print,
) -> Path:
    """Write the model's network as ONNX or TorchScript (fp32) plus ``<out>.json``.

    The description is ``<out>.json`` with the network file's full name (``net.onnx.json``),
    so ``net.onnx`` and ``net.pt`` written side by side each keep their own.

    The export is checked against PyTorch (see :mod:`deepscope.export.compare`) and
    written atomically; an existing ``out`` is refused.
    """
    out = Path(out)
    if fmt not in SUFFIXES:
        raise ValueError(f"unknown format {fmt!r}")
    if out.suffix.lower() != SUFFIXES[fmt]:
        raise OutputError(
            f"a {fmt} file should end with {SUFFIXES[fmt]}", out, f"give --out NAME{SUFFIXES[fmt]}"
        )
    sidecar = sidecar_path(out)
    for path in (out, sidecar):
        if path.exists():
            raise OutputError("the output file already exists", path, "choose another name")
    model = load_model_folder(model_folder)
    require_state_dict(model)
    x = test_input(model, None)
    example = model.normalizer.normalize(x[0])[None]
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".deepscope-export-", dir=out.parent) as tmp:
        part = Path(tmp) / out.name
        log(f"converting the network to {fmt} ...")
        exporter = export_onnx if fmt == "onnx" else export_torchscript
        diff = exporter(model.network, example, part)
        description = describe(model, fmt, diff)
        (Path(tmp) / "sidecar.json").write_text(json.dumps(description, indent=2))
        os.replace(part, out)
        os.replace(Path(tmp) / "sidecar.json", sidecar)
    log(f"{fmt} network written: {out} (how to feed it: {sidecar.name})")
    return out


def sidecar_path(network_file: str | Path) -> Path:
    """The description written beside an exported network file: ``NAME.onnx.json``."""
    network_file = Path(network_file)
    return network_file.with_name(network_file.name + ".json")


def describe(model, fmt: str, diff: float) -> dict:  # noqa: ANN001
    """JSON-ready description of the exported network's input, output and processing."""
    entry = get_export(model.config.task)
    dims = model.config.data.spatial_dims
    axes = "bcyx" if dims == 2 else "bczyx"
    target = model.target_normalizer or model.normalizer
    return {
        "format": fmt,
        "opset": OPSET if fmt == "onnx" else None,
        "deepscope_version": __version__,
        "task": model.config.task,
        "input": {
            "name": INPUT_NAME,
            "axes": axes,
            "channels": model.in_channels,
            "divisibility": int(model.info["divisibility"]),
            "normalisation": "per channel c: (x - low[c]) / (high[c] - low[c])",
            "low": list(model.normalizer.low),
            "high": list(model.normalizer.high),
        },
        "output": {
            "name": OUTPUT_NAME,
            "axes": axes,
            "channels": int(model.info["out_channels"]),
            "channel_names": entry.channel_names(model) if entry else None,
            "postprocessing": entry.notes(model) if entry else "see the deepscope task",
            "target_low": list(target.low),
            "target_high": list(target.high),
        },
        "max_difference_to_pytorch": diff,
        "tolerance_note": "fp32; difference as a fraction of the output range",
    }
