"""Import BioImage.IO models made by other tools (not by deepscope).

A package from another tool carries no deepscope settings, so they are derived from its
description. deepscope can run such a model faithfully when everything around the
network is something it does itself:

- one input and one output tensor, axes ``batch, channel, [z,] y, x`` (in this order),
  output of the input's size (``SizeReference`` without offset), the input size given as
  ``min + n * step`` (the tiler then uses multiples of a power of two ≥ ``step``);
- pre-processing: ``scale_range`` (per-image percentiles: deepscope's per-image
  normalisation), ``scale_linear`` or ``fixed_zero_mean_unit_variance`` (fixed
  statistics), ``ensure_dtype`` to float;
- post-processing: nothing, ``scale_linear`` back to intensities or ``ensure_dtype``
  (a restoration model: deepscope task ``care``), or ``softmax`` over the channels (a
  semantic segmentation model: task ``semantic``, one class per channel).

Weights: TorchScript or ONNX (a state dict would need the tool's own architecture code).
Anything else is refused with the name of what is not supported, so a model is never run
with a processing it was not made for. The per-sample ``zero_mean_unit_variance`` that
many models use is among the refused: deepscope's normalisation is percentile-based.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from deepscope.data.normalize import PercentileNormalizer
from deepscope.errors import DeepscopeError
from deepscope.workflow.model_folder import MODEL_FORMAT_VERSION

#: Largest ``min`` input size deepscope's tiler always honours (default tiles of 512
#: pixels, shared evenly, are never smaller than about 270).
_MAX_MIN_SIZE = 256


def foreign_record(descr: Any, source: Path, fmt: str) -> dict[str, Any]:
    """A deepscope record (config, normalisation, info) for another tool's package.

    Parameters
    ----------
    descr
        The package's ``bioimageio.spec`` model description (spec 0.5).
    source
        The package (for error messages).
    fmt
        The weight format that will be imported (``torchscript`` or ``onnx``).

    Returns
    -------
    dict
        ``{"config": ..., "normalization": ..., "info": ..., "training": ...}`` as
        written by deepscope's own export.

    Raises
    ------
    DeepscopeError
        Naming what deepscope cannot reproduce, and what to do instead.
    """

    def refuse(problem: str) -> DeepscopeError:
        return DeepscopeError(
            f"'{descr.name}' (made by another tool) {problem}; deepscope would not run it "
            "faithfully",
            source,
            "run it with a BioImage.IO tool (bioimageio predict, deepImageJ in Fiji, "
            "ilastik, napari), or train a deepscope model on your data",
        )

    if fmt not in ("torchscript", "onnx"):
        raise DeepscopeError(
            f"'{descr.name}' was made by another tool: its PyTorch state dict needs that "
            "tool's architecture code",
            source,
            "import its TorchScript or ONNX weights (--weights torchscript or --weights onnx)",
        )
    if len(descr.inputs) != 1 or len(descr.outputs) != 1:
        raise refuse(
            f"has {len(descr.inputs)} inputs and {len(descr.outputs)} outputs (one each "
            "is supported)"
        )
    inp, out = descr.inputs[0], descr.outputs[0]
    in_axes = [str(a.id) for a in inp.axes]
    out_axes = [str(a.id) for a in out.axes]
    dims = len(in_axes) - 2
    space = ["y", "x"] if dims == 2 else ["z", "y", "x"]
    if in_axes != ["batch", "channel", *space] or dims not in (2, 3):
        raise refuse(f"has input axes {in_axes} (batch, channel, [z,] y, x supported)")
    if out_axes != in_axes:
        raise refuse(f"has output axes {out_axes}, not the input's {in_axes}")
    in_channels = _channels(inp.axes[1])
    out_channels = _channels(out.axes[1])
    divisibility = _divisibility(inp.axes[2:], refuse)
    for a in out.axes[2:]:
        size = a.size
        if type(size).__name__ != "SizeReference" or getattr(size, "offset", 0):
            raise refuse(f"gives an output axis '{a.id}' that is not the input's size")
    normalizer = _input_normalizer(inp.preprocessing, in_channels, refuse)
    kind, target = _output_kind(out.postprocessing, out_channels, refuse)
    if kind == "care" and out_channels != in_channels:
        raise refuse(
            f"maps {in_channels} channel(s) to {out_channels} without an activation "
            "(deepscope's restoration keeps the number of channels)"
        )
    depth = max(1, int(math.log2(divisibility)))
    config: dict[str, Any] = {
        "task": kind,
        "data": {
            "spatial_dims": dims,
            "patch_size": [max(divisibility, 16)] * dims,
            "axes": None,
        },
        "model": {"depth": depth},
        # fp32 as the tool made it: bf16 would change results by up to a few % of the range
        "training": {"precision": "32"},
    }
    if kind == "semantic":
        names = _channel_names(out.axes[1])
        config["semantic"] = {"classes": len(names), "class_names": names}
    norm = {"input": normalizer.to_dict()}
    if target is not None:
        norm["target"] = target.to_dict()
    return {
        "config": config,
        "normalization": norm,
        "info": {
            "in_channels": in_channels,
            "input_axes": "CYX" if dims == 2 else "CZYX",
            "format_version": MODEL_FORMAT_VERSION,
        },
        "training": {
            "foreign_package": {
                "name": descr.name,
                "authors": [a.name for a in descr.authors],
                "cite": [c.text for c in descr.cite],
                "license": str(descr.license),
            }
        },
    }


def _channels(axis: Any) -> int:
    return len(axis.channel_names)


def _channel_names(axis: Any) -> list[str]:
    return [str(n) for n in axis.channel_names]


def _divisibility(axes: list[Any], refuse: Any) -> int:
    """A power of two of which every allowed input size is a multiple."""
    steps = []
    for a in axes:
        size = a.size
        if isinstance(size, int):
            raise refuse(f"needs a fixed input size ({a.id} = {size})")
        if type(size).__name__ != "ParameterizedSize":
            raise refuse(f"gives the input axis '{a.id}' a size deepscope cannot tile")
        step, low = int(size.step), int(size.min)
        div = 1 << max(0, (step - 1).bit_length())  # smallest power of two >= step
        if low > _MAX_MIN_SIZE or low % step or div % step:
            raise refuse(f"needs input sizes {low} + n x {step} along '{a.id}'")
        steps.append(div)
    return max([*steps, 2])


def _input_normalizer(ops: list[Any], channels: int, refuse: Any) -> PercentileNormalizer:
    """The package's input normalisation as deepscope's percentile normaliser."""
    ops = [op for op in ops if op.id != "ensure_dtype"]
    if len(ops) != 1:
        names = [op.id for op in ops] or ["none"]
        raise refuse(f"pre-processes its input with {names} (one normalisation supported)")
    op = ops[0]
    kw = op.kwargs
    if op.id == "scale_range":
        if kw.reference_tensor is not None:
            raise refuse("normalises its input by another tensor")
        # deepscope takes each image's percentiles per channel: the same as the package
        # unless it pools several channels (axes None means all axes, channel included)
        joint = kw.axes is None or "channel" in {str(a) for a in kw.axes}
        if joint and channels > 1:
            raise refuse("normalises its input channels jointly")
        low, high = float(kw.min_percentile), float(kw.max_percentile)
        if not (0 <= low < 50 < high <= 100):
            raise refuse(f"normalises to the percentiles {low} and {high}")
        return PercentileNormalizer(low, high, (0.0,) * channels, (1.0,) * channels, per_image=True)
    if op.id == "scale_linear":  # x * gain + offset = (x - lo) / (hi - lo)
        gain = _per_channel(kw.gain, channels)
        offset = _per_channel(kw.offset, channels)
        if any(g == 0 for g in gain):
            raise refuse("scales its input by 0")
        lo = tuple(-o / g for g, o in zip(gain, offset, strict=True))
        hi = tuple(lo_c + 1 / g for lo_c, g in zip(lo, gain, strict=True))
        return PercentileNormalizer(0.0, 100.0, lo, hi)
    if op.id == "fixed_zero_mean_unit_variance":
        mean = _per_channel(kw.mean, channels)
        std = _per_channel(kw.std, channels)
        return PercentileNormalizer(
            0.0, 100.0, tuple(mean), tuple(m + s for m, s in zip(mean, std, strict=True))
        )
    raise refuse(f"pre-processes its input with '{op.id}'")


def _output_kind(
    ops: list[Any], channels: int, refuse: Any
) -> tuple[str, PercentileNormalizer | None]:
    """('care', output scaling) for image outputs, ('semantic', None) for softmax."""
    ops = [op for op in ops if op.id != "ensure_dtype"]
    if not ops:
        return "care", PercentileNormalizer(0.0, 100.0, (0.0,) * channels, (1.0,) * channels)
    if len(ops) == 1 and ops[0].id == "scale_linear":  # raw * gain + offset
        gain = _per_channel(ops[0].kwargs.gain, channels)
        offset = _per_channel(ops[0].kwargs.offset, channels)
        hi = tuple(o + g for g, o in zip(gain, offset, strict=True))
        return "care", PercentileNormalizer(0.0, 100.0, tuple(offset), hi)
    if len(ops) == 1 and ops[0].id == "softmax" and str(ops[0].kwargs.axis) == "channel":
        if channels < 2:
            raise refuse("applies a softmax to one channel")
        return "semantic", None
    raise refuse(f"post-processes its output with {[op.id for op in ops]}")


def _per_channel(value: Any, channels: int) -> list[float]:
    values = [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)]
    if len(values) == 1:
        return values * channels
    if len(values) != channels:
        raise ValueError(f"{len(values)} values for {channels} channels")
    return values
