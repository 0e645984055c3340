"""Tiled prediction for 2D and 3D images: one implementation every task uses.

The image is covered by overlapping tiles (sizes that the network accepts); each tile's
output is weighted by a smooth window that falls off towards the tile's inner edges and
the weighted outputs are averaged, so no seams appear. Memory besides the image and the
result is bounded by the tile size times the batch size.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from deepscope.engine.inference import inference_network


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start positions of tiles of length ``tile`` covering ``size`` with ``overlap``."""
    if size <= tile:
        return [0]
    step = max(1, tile - overlap)
    n = math.ceil((size - tile) / step) + 1
    starts = [min(i * step, size - tile) for i in range(n)]
    return sorted(set(starts))


def fit_tile_shape(
    image_shape: Sequence[int],
    tile_shape: Sequence[int],
    divisibility: int,
    overlap: int | Sequence[int] = 0,
) -> tuple[int, ...]:
    """Clip the tile to the image (rounded up to the network's divisibility).

    With ``overlap``, a tile that needs several per axis is shrunk to the smallest size
    that covers the axis with the same number of tiles, so that the tiles share the
    axis evenly instead of the last one overlapping its neighbour by most of its length
    (1024 px with 512-px tiles and 32 px overlap: three tiles of 368 px, not of 512 px:
    1.16x instead of 2.25x the pixels to compute in 2D).
    """
    out = []
    overlaps = _per_axis(overlap, len(image_shape))
    for size, tile, ov in zip(image_shape, tile_shape, overlaps, strict=True):
        t = int(math.ceil(min(tile, size) / divisibility) * divisibility)
        if ov and size > t:
            n = len(tile_starts(size, t, ov))
            even = math.ceil((size + (n - 1) * ov) / n)
            even = int(math.ceil(even / divisibility) * divisibility)
            if even > 2 * ov and len(tile_starts(size, even, ov)) <= n:
                t = min(t, even)
        out.append(t)
    return tuple(out)


def _per_axis(overlap: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    return (overlap,) * ndim if isinstance(overlap, int) else tuple(overlap)


def blend_window(tile_shape: Sequence[int], overlap: int | Sequence[int]) -> np.ndarray:
    """Separable window: 1 in the middle, cosine ramp over ``overlap`` pixels at each edge.

    The ramp starts at (almost) zero on the outermost pixel, where a network with 'same'
    padding lacks context, so a neighbouring tile's value wins there and no seam appears.
    A tiny floor per axis keeps the weight sum non-zero at the image borders (where every
    tile is at its edge) while still blending along the other axes there.
    """
    w = np.ones(tuple(tile_shape), dtype=np.float32)
    overlaps = _per_axis(overlap, len(tile_shape))
    for axis, n in enumerate(tile_shape):
        ramp_len = min(overlaps[axis], n // 2)
        line = np.ones(n, dtype=np.float32)
        if ramp_len > 0:
            r = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp_len) / ramp_len)
            line[:ramp_len] = r
            line[n - ramp_len :] = r[::-1]
        line = np.maximum(line, 1e-6)
        shape = [1] * len(tile_shape)
        shape[axis] = n
        w = w * line.reshape(shape)
    return w


def _tiles(
    shape: Sequence[int], tile: Sequence[int], overlap: int | Sequence[int]
) -> Iterator[tuple[slice, ...]]:
    overlaps = _per_axis(overlap, len(tile))
    starts = [tile_starts(s, t, o) for s, t, o in zip(shape, tile, overlaps, strict=True)]
    for corner in itertools.product(*starts):
        yield tuple(slice(c, c + t) for c, t in zip(corner, tile, strict=True))


def _reduced(tile: tuple[slice, ...], stride: Sequence[int]) -> tuple[slice, ...]:
    """The slices of a tile on the output grid that is ``stride`` times coarser."""
    return tuple(slice(a.start // g, a.stop // g) for a, g in zip(tile, stride, strict=True))


def predict_tiled(
    network: nn.Module,
    image: np.ndarray,
    *,
    out_channels: int,
    tile_shape: Sequence[int],
    overlap: int,
    divisibility: int,
    batch_size: int = 4,
    autocast_bf16: bool = False,
    progress: Callable[[int, int], None] | None = None,
    output_stride: Sequence[int] | None = None,
) -> np.ndarray:
    """Apply ``network`` to a channel-first image (C, *spatial) tile by tile.

    Parameters
    ----------
    network
        A module mapping (N, C, *tile) to (N, out_channels, *tile), in eval mode.
    image
        Normalised float32 image (C, Y, X) or (C, Z, Y, X).
    out_channels
        Number of output channels.
    tile_shape
        Wanted tile size per spatial axis (clipped to the image and rounded up to
        ``divisibility``).
    overlap
        Overlap between neighbouring tiles in pixels (blended smoothly).
    divisibility
        Tile sizes are multiples of this number (the network's constraint).
    batch_size
        Tiles per forward pass.
    autocast_bf16
        Run the network in bfloat16 (faster on CPUs with bf16 support).
    progress
        Called as ``progress(done_tiles, total_tiles)``.
    output_stride
        Per-axis factor by which the network's output is smaller than its input (e.g.
        StarDist's grid ``(2, 2)``); None for outputs of the input's size. The image is
        then padded to a multiple of the stride, tiles start on multiples of it, and the
        outputs are blended at the reduced size.

    Returns
    -------
    numpy.ndarray
        Float32 array (out_channels, *spatial), or (out_channels, *ceil(spatial / stride))
        with ``output_stride``.
    """
    spatial = image.shape[1:]
    stride = tuple(output_stride) if output_stride is not None else (1,) * len(spatial)
    if any(divisibility % s for s in stride):
        raise ValueError(f"divisibility {divisibility} must be a multiple of the stride {stride}")
    tile = fit_tile_shape(
        spatial, tile_shape, divisibility, tuple(-(-overlap // g) * g for g in stride)
    )
    # Pad so that every spatial size is at least one tile (reflect keeps statistics) and
    # a multiple of the stride (so that every tile starts on a multiple of it).
    pad = [(0, 0)] + [
        (0, max(t - s, -s % g)) for s, t, g in zip(spatial, tile, stride, strict=True)
    ]
    padded = (
        np.pad(image, pad, mode="reflect" if min(spatial) > 1 else "edge")
        if any(p[1] for p in pad)
        else image
    )
    work_shape = padded.shape[1:]
    # Per axis: a thin Z tile must not shrink the overlap in Y and X (that left seams).
    # With a stride the overlap is a multiple of it, so tiles start on multiples of it.
    overlaps = tuple(
        min(-(-overlap // g) * g, (t // 2) // g * g) for t, g in zip(tile, stride, strict=True)
    )
    small = lambda shape: tuple(n // g for n, g in zip(shape, stride, strict=True))  # noqa: E731
    slices = list(_tiles(work_shape, tile, overlaps))
    # One tile covers the image: its output is the result, no blending (saves ~4 passes
    # over the output, ~8 ms for StarDist on 1024x1024).
    single = len(slices) == 1
    window = None if single else blend_window(small(tile), small(overlaps))
    out = (
        np.empty((0,), dtype=np.float32)
        if single
        else np.zeros((out_channels,) + small(work_shape), dtype=np.float32)
    )
    weight = None if single else np.zeros(small(work_shape), dtype=np.float32)
    device = next(iter(network.parameters()), torch.zeros(0)).device  # CPU if none (ONNX)
    fmt = torch.channels_last if len(tile) == 2 else torch.channels_last_3d
    # A prepared copy: batch norm folded, weights channels-last like the input (2.3x
    # faster bf16 convolutions) and in bf16 when predicting in bf16 (benchmarks/RESULTS.md).
    network = inference_network(network, fmt, autocast_bf16)
    for first in range(0, len(slices), batch_size):
        group = slices[first : first + batch_size]
        batch = np.stack([padded[(slice(None),) + sl] for sl in group])
        x = torch.from_numpy(batch).to(device).contiguous(memory_format=fmt)
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast_bf16),
        ):
            y = network(x).float().cpu().numpy()
        if single:
            out = y[0]
        else:
            for sl, pred in zip(group, y, strict=True):
                osl = _reduced(sl, stride)
                out[(slice(None),) + osl] += pred * window
                weight[osl] += window
        if progress:
            progress(min(first + batch_size, len(slices)), len(slices))
    if not single:
        out /= weight
    sizes = (-(-s // g) for s, g in zip(spatial, stride, strict=True))  # ceil(size / stride)
    crop = (slice(None),) + tuple(slice(0, n) for n in sizes)
    return out[crop]
