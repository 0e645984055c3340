"""One convolution in bf16 and in 8-bit integers (oneDNN ``qconv_pointwise``), 2D and 3D.

The per-layer speed behind ``predict --int8`` (``deepscope.engine.int8``): channels-last
bf16 ``nn.Conv2d`` / ``nn.Conv3d`` against the integer kernel with a uint8 output, for
layer sizes of StarDist's and the U-Net's networks. Median of 20 calls after 3 warm-up
calls, 2 threads, random weights and inputs.

Usage (from the project root)::

    PYTHONPATH=src .venv/bin/python benchmarks/int8_conv_probe.py
"""

from __future__ import annotations

import statistics
import time

import torch

from deepscope.engine import performance

LAYERS = [  # (in channels, out channels, spatial size)
    (32, 32, (1024, 1024)),
    (64, 64, (256, 256)),
    (128, 128, (128, 128)),
    (32, 128, (512, 512)),
    (16, 16, (32, 128, 128)),
    (32, 32, (16, 64, 64)),
]


def median_ms(f, n: int = 20) -> float:
    """Median time of ``f()`` in ms."""
    for _ in range(3):
        f()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def time_layer(c_in: int, c_out: int, size: tuple[int, ...]) -> tuple[float, float]:
    """Median ms of one 3x3 convolution: bf16 channels-last, then 8-bit integers."""
    dims = len(size)
    layout = torch.channels_last if dims == 2 else torch.channels_last_3d
    conv = (torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d)(c_in, c_out, 3, padding=1)
    x = torch.rand(1, c_in, *size)
    xb = x.bfloat16().contiguous(memory_format=layout)
    cb = conv.eval().bfloat16().to(memory_format=layout)
    w = conv.weight.detach().float()
    w_scale = w.abs().amax(dim=tuple(range(1, w.dim()))) / 127
    w_int = torch.round(w / w_scale.view(-1, *[1] * (w.dim() - 1))).to(torch.int8)
    xq = torch.round(x * 255).to(torch.uint8).contiguous(memory_format=layout)
    ones = [1] * dims
    packed = torch.ops.onednn.qconv_prepack(w_int, w_scale, 1 / 255, 0, ones, ones, ones, 1, None)
    zeros = torch.zeros(c_out, dtype=torch.long)
    bias = conv.bias.detach().float()

    def integer() -> torch.Tensor:
        return torch.ops.onednn.qconv_pointwise(
            xq, 1 / 255, 0, packed, w_scale, zeros, bias, ones, ones, ones, 1,
            0.05, 0, None, "none", [], "",
        )  # fmt: skip

    with torch.inference_mode():
        return median_ms(lambda: cb(xb)), median_ms(integer)


def main() -> None:
    """Time each layer both ways."""
    torch.set_num_threads(2)
    performance.tune_allocator()
    for c_in, c_out, size in LAYERS:
        bf16, int8 = time_layer(c_in, c_out, size)
        gflop = 2 * c_in * c_out * 3 ** len(size) * torch.Size(size).numel() / 1e9
        print(
            f"{c_in}->{c_out} on {'x'.join(map(str, size))}: bf16 {bf16:.1f} ms "
            f"({gflop / bf16 * 1e3:.0f} GFLOP/s), int8 {int8:.1f} ms "
            f"({gflop / int8 * 1e3:.0f}), {bf16 / int8:.2f}x"
        )


if __name__ == "__main__":
    main()
