"""8-bit integer prediction of StarDist networks and U-Nets (2D, 3D) on CPUs (``--int8``).

The convolutions of a trained network can run on 8-bit integers instead of bf16: weights
rounded to 255 levels per output channel (127 on CPUs with AVX2 only, see
:func:`int8_weight_max`), activations (all after a ReLU, so never negative) to 256
levels each with one scale per layer. On CPUs with AVX-512 VNNI the integer convolutions
(oneDNN's ``qconv_pointwise``, the kernels PyTorch's own int8 compilation uses) do twice
the multiply-adds per instruction of bf16; measured on this project's CPU, StarDist's
network runs 1.6x faster with the same objects found. On an AVX2 CPU (no bf16) they are
2-2.4x faster than float32 per convolution (benchmarks/RESULTS.md). It is an option, not
the default: every number is rounded to 8 bits, so the output differs slightly from the
trained network's.

The scale of each layer comes from a **calibration**: the largest value each layer gave
on example images, run through the network in full precision (:func:`calibrate`).
Training stores one, made on the validation images, in the model folder
(:data:`CALIBRATION_FILE`); for older models prediction makes one from the first image
it predicts. Values above the calibrated largest are clipped to it.

Only what these networks use is translated (convolutions with ReLU, max pooling,
bilinear up-sampling, concatenation; not N2V2's blur pooling); :func:`network_problem`
says why when a network cannot be. Which tasks may use it is the task's choice
(``Task.int8_ok``: segmentation, where 8-bit features suffice to tell classes and
objects apart; restoration's intensities are left to bf16).
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from deepscope.engine.inference import fold_batch_norm

CALIBRATION_FILE = "int8_calibration.json"
"""File in a model folder holding the activation ranges for ``--int8`` prediction."""
CALIBRATION_VERSION = 1

_CL = torch.channels_last
_LAYOUT = {2: torch.channels_last, 3: torch.channels_last_3d}


def _conv_exact(weight_max: int) -> bool:
    """Whether one small 8-bit convolution with weights up to ``weight_max`` is exact here.

    Compared with the same arithmetic in float32 (exact up to float rounding when both
    use the same rounded numbers), with activations over the full 0-255 range.
    """
    try:
        gen = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (1, 16, 12, 12), generator=gen).to(torch.uint8)
        x = x.contiguous(memory_format=_CL)
        w = torch.randint(-weight_max, weight_max + 1, (4, 16, 3, 3), generator=gen)
        w = w.to(torch.int8)
        scales = torch.full((4,), 0.01)
        packed = torch.ops.onednn.qconv_prepack(w, scales, 0.02, 3, [1, 1], [1, 1], [1, 1], 1, None)
        out = torch.ops.onednn.qconv_pointwise(
            x, 0.02, 3, packed, scales, torch.zeros(4, dtype=torch.long), None,
            [1, 1], [1, 1], [1, 1], 1, 1.0, 0, torch.float32, "none", [], "",
        )  # fmt: skip
        expected = F.conv2d((x.float() - 3) * 0.02, w.float() * 0.01, padding=1)
    except (RuntimeError, AttributeError, NotImplementedError):
        return False
    return out.shape == expected.shape and bool(torch.allclose(out, expected, atol=1e-3))


@functools.cache
def int8_weight_max() -> int | None:
    """The largest integer weight oneDNN's 8-bit convolution computes exactly with here.

    127 (full 8-bit weights) on CPUs with VNNI (AVX-512 VNNI, AVX-VNNI, AMX). On CPUs with
    AVX2 only, oneDNN multiplies 8-bit activations and weights in pairs whose sum it
    keeps in 16 bits, which saturates with full-range weights (255 x 127 x 2 > 32767:
    wrong outputs, measured on an AMD Zen 3); weights of 7 bits (up to 63) cannot
    overflow, so there 63. None when this PyTorch build has no such convolution or it is
    wrong either way.
    """
    ops = getattr(torch.ops, "onednn", None)
    if not torch.backends.mkldnn.is_available() or ops is None:
        return None
    for weight_max in (127, 63):
        if _conv_exact(weight_max):
            return weight_max
    return None


def int8_supported() -> bool:
    """Whether this PyTorch build and CPU can run 8-bit convolutions correctly."""
    return int8_weight_max() is not None


def network_problem(network: nn.Module) -> str | None:
    """Why ``network`` cannot run in 8-bit integers here, or None if it can."""
    from deepscope.engine.models.stardist_net import StarDistNet
    from deepscope.engine.models.unet import UNet

    if not isinstance(network, StarDistNet | UNet):
        return "8-bit prediction is available for StarDist and U-Net networks only"
    if any(p.device.type != "cpu" for p in network.parameters()):
        return "8-bit prediction runs on the CPU only (this network is on a GPU)"
    unet = network.unet if isinstance(network, StarDistNet) else network
    if unet.n2v2 or not all(isinstance(p, nn.MaxPool2d | nn.MaxPool3d) for p in unet.pools):
        return "this network's pooling (N2V2) cannot run in 8-bit integers"
    if not int8_supported():
        return "this PyTorch build or CPU has no 8-bit convolution (oneDNN)"
    return None


class _Runner:
    """Walks a (batch-norm-folded, float32) StarDist network or U-Net layer by layer.

    In calibration mode it computes in float32 and records each layer's largest output;
    in integer mode it computes with 8-bit activations. The same walk serves both, so the
    calibrated layers are exactly the ones run later.
    """

    def __init__(self, network: nn.Module):
        net = copy.deepcopy(network).float().eval()
        fold_batch_norm(net)
        self.net = net
        self.maxima: dict[str, float] = {}
        self.input_range = [0.0, 1.0]
        self.scales: dict[str, float] | None = None  # set for integer mode
        self.packed: dict[str, tuple] = {}
        self.stardist = hasattr(net, "stem")
        self.dims = net.dims
        self.unet = net.unet if self.stardist else net
        self.last = "heads" if self.stardist else "head"  # the layer giving float32
        if self.stardist:  # its two 1x1 heads as one convolution
            self.heads = net.merged_heads()

    # -------------------------------------------------------------------- layers
    def conv(self, site: str, conv: nn.Module, x: torch.Tensor, src: str, relu: bool = True):
        """One convolution (+ ReLU); ``src`` names the layer whose output ``x`` is.

        An 8-bit output with zero point 0 cannot hold negative values, so its rounding
        *is* the ReLU; the ReLU is asked of oneDNN only in 2D (its 3D kernels take none).
        """
        if self.scales is None:
            y = conv(x)
            y = torch.relu(y) if relu else y
            self.maxima[site] = max(self.maxima.get(site, 0.0), float(y.amax()))
            return y
        x_scale, x_zero = self._input_quant(src)
        if site not in self.packed:
            w = conv.weight.detach().float()
            w_max = int8_weight_max() or 127  # 63 on AVX2-only CPUs (see there)
            w_scale = (w.abs().amax(dim=tuple(range(1, w.dim()))) / w_max).clamp_min(1e-12)
            per_channel = w_scale.view(-1, *[1] * (w.dim() - 1))
            w_int = torch.round(w / per_channel).clamp(-w_max, w_max).to(torch.int8)
            args = (list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups)
            packed = torch.ops.onednn.qconv_prepack(w_int, w_scale, x_scale, x_zero, *args, None)
            zeros = torch.zeros(len(w_scale), dtype=torch.long)
            bias = None if conv.bias is None else conv.bias.detach().float()
            self.packed[site] = (packed, w_scale, zeros, bias, args)
        packed, w_scale, zeros, bias, args = self.packed[site]
        last = site == self.last
        if last and relu:
            raise ValueError("a float32 output with a ReLU is not translated")
        return torch.ops.onednn.qconv_pointwise(
            x, x_scale, x_zero, packed, w_scale, zeros, bias, *args,
            1.0 if last else self.scales[site], 0, torch.float32 if last else None,
            "relu" if relu and self.dims == 2 else "none", [], "",
        )  # fmt: skip

    def _input_quant(self, src: str) -> tuple[float, int]:
        if src == "input":
            lo, hi = self.input_range
            scale = max(hi - lo, 1e-6) / 255
            return scale, int(min(255, max(0, round(-lo / scale))))
        assert self.scales is not None
        return self.scales[src], 0

    def block(self, name: str, block: nn.Module, x: torch.Tensor, src: str):
        """A U-Net block: its two convolutions, each with its ReLU."""
        convs = [m for m in block if isinstance(m, nn.Conv2d | nn.Conv3d)]
        x = self.conv(f"{name}.0", convs[0], x, src)
        return self.conv(f"{name}.1", convs[1], x, f"{name}.0"), f"{name}.1"

    def pool(self, x: torch.Tensor, size: Any = 2) -> torch.Tensor:
        """Max pooling by ``size`` (8-bit tensors: the maximum of strided views).

        PyTorch's max pooling has no uint8 kernel for this layout.
        """
        sizes = (size,) * self.dims if isinstance(size, int) else tuple(size)
        if self.scales is None:
            return (F.max_pool2d if self.dims == 2 else F.max_pool3d)(x, sizes)
        out = None
        for offsets in itertools.product(*(range(k) for k in sizes)):
            view = x[(..., *(slice(o, None, k) for o, k in zip(offsets, sizes, strict=True)))]
            out = view if out is None else torch.maximum(out, view)
        return out.contiguous(memory_format=_LAYOUT[self.dims])

    def up(self, x: torch.Tensor) -> torch.Tensor:
        """Bi/trilinear up-sampling by 2 (8-bit tensors: in float32, rounded back).

        PyTorch's bilinear kernel for uint8 is 3-4x slower than float32 plus the
        conversions (53 vs 14 ms per 1024x1024 StarDist pass).
        """
        mode = "bilinear" if self.dims == 2 else "trilinear"
        if self.scales is None:
            return F.interpolate(x, scale_factor=2, mode=mode, align_corners=False)
        y = F.interpolate(x.float(), scale_factor=2, mode=mode, align_corners=False)
        return y.add_(0.5).to(torch.uint8)

    # ------------------------------------------------------------------- network
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network's forward pass, layer by layer (see the class documentation)."""
        from deepscope.engine.models.unet import ConvBlock

        net, src, given = self.net, "input", x
        if self.scales is None:
            x = x.float()
            self.input_range[0] = min(self.input_range[0], float(x.amin()))
            self.input_range[1] = max(self.input_range[1], float(x.amax()))
        else:
            scale, zero = self._input_quant("input")
            q = torch.round(x.float() / scale).add_(zero).clamp_(0, 255)
            x = q.to(torch.uint8).contiguous(memory_format=_LAYOUT[self.dims])
        for i, layer in enumerate(net.stem if self.stardist else []):
            if isinstance(layer, ConvBlock):
                x, src = self.block(f"stem{i}", layer, x, src)
            else:
                x = self.pool(x, layer.kernel_size)
        unet, skips = self.unet, []
        for level, encoder in enumerate(unet.encoders):
            x, src = self.block(f"enc{level}", encoder, x, src)
            skips.append(x)
            x = self.pool(x)
        x, src = self.block("bottleneck", unet.bottleneck, x, src)
        for i, (level, decoder) in enumerate(
            zip(reversed(range(unet.depth)), unet.decoders, strict=True)
        ):
            x = torch.cat([self.up(x), skips[level]], dim=1)
            x, src = self.block(f"dec{i}", decoder, x, src)
        if not self.stardist:
            out = self.conv("head", unet.head, x, src, relu=False)
            return out + given.float() if unet.residual else out
        x = self.conv("head", unet.head, x, src, relu=net.relu_features)
        return self.conv("heads", self.heads, x, "head", relu=False)

    def concat_groups(self) -> list[tuple[str, str]]:
        """Pairs of layers concatenated in the decoder: they must share one scale."""
        depth = self.unet.depth
        return [
            ("bottleneck.1" if i == 0 else f"dec{i - 1}.1", f"enc{level}.1")
            for i, level in enumerate(reversed(range(depth)))
        ]


def calibrate(network: nn.Module, images: Iterable[torch.Tensor]) -> dict[str, Any]:
    """The activation ranges of ``network`` on normalised images (N, C, *spatial).

    What :class:`Int8Network` needs to choose each layer's 8-bit scale.

    Each image's size must suit the network (multiples of its ``divisibility()``).
    Returns a JSON-serialisable dict (what :func:`save_calibration` writes).
    """
    problem = network_problem(network)
    if problem:
        raise ValueError(problem)
    runner = _Runner(network)
    count = 0
    with torch.inference_mode():
        for image in images:
            runner.forward(image)
            count += int(image.shape[0])
    if not count:
        raise ValueError("calibration needs at least one image")
    return {
        "version": CALIBRATION_VERSION,
        "images": count,
        "input_range": [round(v, 6) for v in runner.input_range],
        "maxima": {k: round(v, 6) for k, v in runner.maxima.items()},
    }


def save_calibration(folder: Path, calibration: dict[str, Any]) -> Path:
    """Write ``calibration`` into a model folder (atomically)."""
    from deepscope.data.io import atomic_write_text

    path = Path(folder) / CALIBRATION_FILE
    atomic_write_text(path, json.dumps(calibration, indent=2))
    return path


def load_calibration(folder: Path) -> dict[str, Any] | None:
    """The model folder's calibration, or None when it has none (or one of another version)."""
    path = Path(folder) / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("version") != CALIBRATION_VERSION:
        return None
    return data


class Int8Network(nn.Module):
    """A StarDist network or U-Net (2D or 3D) computing in 8-bit integers, from a trained one.

    Takes what the network takes (normalised images, N x C x Y x X, float) and gives
    what it gives in float32 (StarDist: probability logits and distances on the grid;
    U-Net: its output channels, e.g. class scores). It holds no trainable parameters;
    the trained network is not modified. ``calibration`` is what :func:`calibrate` gives.
    """

    def __init__(self, network: nn.Module, calibration: dict[str, Any]):
        super().__init__()
        problem = network_problem(network)
        if problem:
            raise ValueError(problem)
        runner = _Runner(network)
        maxima = dict(calibration["maxima"])
        missing = [k for k in _layer_names(runner) if k not in maxima]
        if missing:
            raise ValueError(
                f"the calibration does not fit this network (no range for {missing[0]})"
            )
        for a, b in runner.concat_groups():
            maxima[a] = maxima[b] = max(maxima[a], maxima[b])
        runner.input_range = [float(v) for v in calibration["input_range"]]
        runner.scales = {k: max(v, 1e-6) / 255 for k, v in maxima.items()}
        self._runner = runner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network's output in float32 (see the class documentation)."""
        with torch.inference_mode():
            return self._runner.forward(x)


def _layer_names(runner: _Runner) -> list[str]:
    """The layer names a calibration of ``runner``'s network must hold."""
    probe = _Runner.__new__(_Runner)
    probe.__dict__.update(runner.__dict__)
    probe.maxima, probe.scales, probe.input_range = {}, None, [0.0, 1.0]
    size = runner.net.divisibility()
    with torch.inference_mode():
        first = next(m for m in runner.net.modules() if isinstance(m, nn.Conv2d | nn.Conv3d))
        probe.forward(torch.zeros(1, first.in_channels, *(size,) * runner.dims))
    return list(probe.maxima)
